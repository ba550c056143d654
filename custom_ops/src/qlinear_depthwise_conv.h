// ai.onnxcompress.QLinearDepthwiseConv: ONNX QLinearConv restricted to a
// depthwise filter (group = input channels C, M = C * d outputs, output o
// reads input channel o / d), with u8 activations, s8 weights (zero points 0)
// and per-output-channel or per-tensor weight scales. See docs/ops.md.
//
// It is the basis stage of penni's portable form in an INT8 model: the d basis
// maps of every input channel in one op, written in the order the quantized
// 1x1 coefficient Conv reads (passes/fuse_quantized_basis.py). ONNX Runtime's
// own u8 QLinearConv runs a depthwise filter with d > 1 outputs per channel
// slowly, and d separate depthwise Convs plus a Concat cost more than the
// coefficient stage they feed.
//
// The result is QLinearConv's, bit for bit: int32 sums of (x - x_zero_point) * w
// (+ B), then MLAS's requantization (float scale x_scale * w_scale[o] / y_scale,
// round half to even, clamp to u8).
#pragma once

#include <vector>

#include "common.h"
#include "conv_geometry.h"
#include "op_base.h"
#include "qlinear_depthwise_kernels.h"

namespace onnxcompress {

class QLinearDepthwiseConv : public KernelBase<QLinearDepthwiseConv> {
 public:
  static constexpr const char* kName = "QLinearDepthwiseConv";
  // X, x_scale, x_zero_point, W, w_scale, w_zero_point, y_scale, y_zero_point, B (optional): QLinearConv's.
  static constexpr size_t kInputCount = 9;
  static ONNXTensorElementDataType InputType(size_t i);
  static ONNXTensorElementDataType OutputType() { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8; }
  static bool InputOptional(size_t i) { return i == 8; }
  static Ort::Status InferOutputShape(Ort::ShapeInferContext& ctx);

  explicit QLinearDepthwiseConv(const Ort::ConstKernelInfo& info);
  void Compute(Ort::KernelContext& context);

 private:
  ConvAttributes attrs_;
  int64_t channels_ = 0, multiplier_ = 0, out_channels_ = 0, kh_ = 0, kw_ = 0;
  int32_t x_zero_point_ = 0, y_zero_point_ = 0;
  std::vector<int32_t> weights_;  // [M][kh*kw]
  std::vector<int32_t> bias_;     // [M], zeros when absent
  std::vector<float> scales_;     // [M]: x_scale * w_scale[o] / y_scale
  const qdw::Kernels* kernels_ = nullptr;
};

// The kernels for this CPU, or those forced by ONNXCOMPRESS_ISA
// (avx512 | avx2 | generic | auto); throws InvalidNode when unknown or unsupported.
const qdw::Kernels* SelectQLinearDepthwiseKernels();

}  // namespace onnxcompress
