// Convolution geometry shared by every kernel: the Conv attributes of a node,
// their validation, and the output size for a given input.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "common.h"

namespace onnxcompress {

// Attributes with the meaning of ONNX Conv (2-D only).
struct ConvAttributes {
  std::string auto_pad = "NOTSET";            // NOTSET, SAME_UPPER, SAME_LOWER, VALID
  std::array<int64_t, 4> pads{0, 0, 0, 0};    // top, left, bottom, right
  std::array<int64_t, 2> strides{1, 1};
  std::array<int64_t, 2> dilations{1, 1};
  int64_t group = 1;
  std::vector<int64_t> kernel_shape;          // optional; checked against the weights

  static ConvAttributes FromNode(const Ort::ConstKernelInfo& info);
  // The same from ORT's shape-inference context (attributes only).
  static ConvAttributes FromShapeInference(Ort::ShapeInferContext& ctx);
  // Validates the attributes against the filter size (out_channels, kh, kw).
  void Validate(int64_t out_channels, int64_t kh, int64_t kw) const;
};

// Everything a kernel needs to index input and output for one input shape.
struct ConvGeometry {
  int64_t batch = 0, in_channels = 0, in_h = 0, in_w = 0;
  int64_t out_channels = 0, out_h = 0, out_w = 0;
  int64_t group = 1, in_per_group = 0, out_per_group = 0;
  int64_t kh = 0, kw = 0, stride_h = 1, stride_w = 1, dil_h = 1, dil_w = 1;
  int64_t pad_top = 0, pad_left = 0;  // resolved, auto_pad included

  int64_t in_plane() const { return in_h * in_w; }
  int64_t out_plane() const { return out_h * out_w; }
  int64_t taps() const { return kh * kw; }
  std::vector<int64_t> OutputShape() const { return {batch, out_channels, out_h, out_w}; }
};

// The input zero-padded and split by stride phase (BasisConv's and QLinearBasisMaps' planes):
// padded row r = qy*sh + ry, column x = qx*sw + rx is plane (ry, rx) at (qy, qx); Hq x Wq
// covers every row and column a valid output reads. Output position q = oy*Wq + ox (ox < Wq;
// the columns ox >= OW are computed and thrown away) reads, for tap t, plane offset
// q + tap_off[t]: every tap of every position is a contiguous run.
struct PhasePlanes {
  int64_t Hq = 0, Wq = 0;
  int64_t phase = 0;      // Hq * Wq, one stride phase
  int64_t used = 0;       // sh * sw * phase, the planes of one channel
  int64_t positions = 0;  // OH * Wq
  int64_t max_off = 0;    // the largest tap offset
  std::vector<int64_t> tap_off;
  static PhasePlanes Of(const ConvGeometry& g);
};

// Resolves the geometry of a Conv with the given attributes and filter
// (out_channels, in_per_group, kh, kw) on an input of shape x_dims.
// Throws InvalidNode when the input does not fit the node.
ConvGeometry ResolveConvGeometry(const ConvAttributes& attrs, const std::vector<int64_t>& x_dims,
                                 int64_t out_channels, int64_t in_per_group, int64_t kh, int64_t kw);

// Shape inference of a conv-like op: X is input 0, the filter shape
// [out_channels, in_per_group, kh, kw] is given; the batch dim is X's (its
// symbolic name included), spatial dims that cannot be computed stay unknown.
// channels_last: X is [N, H, W, C] and Y [N, OH, OW, M]; type: Y's element type.
Ort::Status InferConvOutputShape(Ort::ShapeInferContext& ctx, const std::vector<int64_t>& filter_dims,
                                 bool channels_last = false,
                                 ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
// Same, reading the filter shape from input `weight_index` (a 4-D tensor).
Ort::Status InferConvOutputShapeFromWeight(Ort::ShapeInferContext& ctx, size_t weight_index,
                                           bool channels_last = false,
                                           ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);

// Output size along one axis, auto_pad included; also used by shape inference.
// Returns the pad before the data in *pad_begin.
int64_t ConvOutputSize(const ConvAttributes& attrs, int axis, int64_t in, int64_t k, int64_t* pad_begin);

}  // namespace onnxcompress
