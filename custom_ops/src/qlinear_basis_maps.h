// ai.onnxcompress.QLinearBasisMaps: the basis stage of BasisConv (PENNI) on u8
// activations. See docs/ops.md.
//
//   Y[:, m*C + c] = X[:, c] (*) W[m*C + c]      m < d = M / C, c < C
//
// with QLinearConv's inputs and arithmetic: int32 sums of (x - x_zero_point) * w
// (+ B), then MLAS's requantization (float scale x_scale * w_scale[o] / y_scale,
// round half to even, clamp to u8). The result equals ONNX Runtime's
// QLinearConv on Concat([X] * d) with group = M, bit for bit; it is d depthwise
// Convs and their Concat in one op, without the d-fold copy of the input.
// channels_last = 1 reads X as [N, H, W, C] and writes Y as [N, OH, OW, M], the
// layout ONNX Runtime runs its u8 QLinearConvs in (passes/fuse_quantized_basis.py
// puts Transposes around the op, which ONNX Runtime's transpose optimizer cancels
// against its own).
#pragma once

#include <vector>

#include "common.h"
#include "conv_geometry.h"
#include "op_base.h"
#include "qlinear_basis_maps_kernels.h"

namespace onnxcompress {

class QLinearBasisMaps : public KernelBase<QLinearBasisMaps> {
 public:
  static constexpr const char* kName = "QLinearBasisMaps";
  // X, x_scale, x_zero_point, W, w_scale, w_zero_point, y_scale, y_zero_point, B (optional): QLinearConv's.
  static constexpr size_t kInputCount = 9;
  static ONNXTensorElementDataType InputType(size_t i);
  static ONNXTensorElementDataType OutputType() { return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8; }
  static bool InputOptional(size_t i) { return i == 8; }
  static Ort::Status InferOutputShape(Ort::ShapeInferContext& ctx);

  explicit QLinearBasisMaps(const Ort::ConstKernelInfo& info);
  void Compute(Ort::KernelContext& context);

 private:
  void ComputePlanes(Ort::KernelContext& context, const ConvGeometry& g, int64_t d, const uint8_t* x, uint8_t* y);
  void ComputePixels(Ort::KernelContext& context, const ConvGeometry& g, int64_t d, const uint8_t* x, uint8_t* y);
  bool ComputeRows(Ort::KernelContext& context, const ConvGeometry& g, const uint8_t* x, uint8_t* y);
  void ComputeLastViaPlanes(Ort::KernelContext& context, const ConvGeometry& g, int64_t d, const uint8_t* x,
                            uint8_t* y);

  ConvAttributes attrs_;
  bool channels_last_ = false;
  int64_t out_channels_ = 0, kh_ = 0, kw_ = 0;
  int32_t x_zero_point_ = 0, y_zero_point_ = 0;
  std::vector<int32_t> weights_;     // [M][kh*kw]  (channels first)
  std::vector<float> weights_t_storage_;
  float* weights_t_ = nullptr;       // [kh*kw][M]  (channels last, integers as floats), 64-byte aligned
  std::vector<int32_t> bias_;     // [M], zeros when absent
  std::vector<float> float_bias_;  // [M + 16]: bias_ as floats where float sums are exact (qbm::FloatSumsExact), else empty
  std::vector<float> scales_;     // [M + 16]: x_scale * w_scale[o] / y_scale (1 past M)
  const qbm::Kernels* kernels_ = nullptr;
  // Channels last with VNNI (kW <= 4): qbm::RowKernels' packed weights [kh][M + 16] and bias
  // less x_zero_point * sum(W[o]) [M + 16] (with scales_); null rows_ when not in use.
  const qbm::RowKernels* rows_ = nullptr;
  std::vector<uint32_t> row_weights_;
  std::vector<int32_t> row_bias_;
};

// The kernels for this CPU, or those forced by ONNXCOMPRESS_ISA
// (avx512 | avx2 | generic | auto); throws InvalidNode when unknown or unsupported.
const qbm::Kernels* SelectQLinearBasisMapsKernels();

}  // namespace onnxcompress
