// ai.onnxcompress.LutConv: lookup-table convolution (TabConv / MADDNESS-style).
// See docs/ops.md.
//
// Each output pixel's im2col row (D = Cin/group * kh * kw columns, (c, ky, kx)
// order) is encoded into one code per codebook (tree encoder: four
// comparisons; exhaustive: nearest prototype), and the output is the sum of
// the codebooks' table entries plus the bias: no multiplies in the
// accumulation. Tables are fp32 or 8-bit (one scale per layer or per output;
// 16-entry tables are looked up 32/64 rows at a time with byte shuffles).
//
// Inputs: 0 X [N, Cin, H, W] float; 1 T tables [G, C, K, Mg] float or uint8;
// 2 scale [1] or [M] (8-bit tables only); 3 B [M]; 4 split_dims [G, C, 4]
// int64 and 5 thresholds [G, C, 15] (tree); 6 prototypes [G, C, K, S]
// (exhaustive). Every constant is validated and packed at session creation.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common.h"
#include "conv_geometry.h"
#include "lut_conv_kernels.h"
#include "op_base.h"

namespace onnxcompress {

class LutConv : public KernelBase<LutConv> {
 public:
  static constexpr const char* kName = "LutConv";
  static constexpr size_t kInputCount = 8;  // X, T, scale, B, split_dims, thresholds, prototypes, Z (residual)
  static ONNXTensorElementDataType InputType(size_t i) {
    if (i == 1) return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;  // float or uint8 tables
    if (i == 4) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  static bool InputOptional(size_t i) { return i >= 2; }
  static Ort::Status InferOutputShape(Ort::ShapeInferContext& ctx);

  explicit LutConv(const Ort::ConstKernelInfo& info);
  void Compute(Ort::KernelContext& context);

 private:
  struct Scratch {
    std::vector<float> padded;
    std::vector<int32_t> base, col_off, split_off;
  };

  ConvAttributes attrs_;
  Epilogue epilogue_;  // fused residual Z and activation
  int64_t in_channels_ = 0, kh_ = 0, kw_ = 0;
  int64_t G_ = 1, C_ = 0, K_ = 0, S_ = 0, Mg_ = 0, D_ = 0;
  bool tree_ = true;
  std::vector<int64_t> split_dims_;  // [G][C][4]
  std::vector<float> thr_;           // [G][C][16] + 16 slack
  std::vector<float> protos_, pnorm_;
  std::vector<float> tf_;            // fp32 tables [G][C][K][Mg]
  std::vector<uint8_t> tq_;          // 8-bit tables [G][C][Mg][kp]
  int64_t kp_ = 16;
  std::vector<float> scale_, bias_;  // [M]
  const lut::Kernels* kernels_ = nullptr;

  ScratchPool<Scratch> scratch_pool_;
};

// The LutConv kernels for this CPU, or those forced by ONNXCOMPRESS_ISA
// (avx512 | avx2 | generic | auto); throws InvalidNode when the forced set is
// unknown or not supported by the CPU or the build.
const lut::Kernels* SelectLutKernels();

}  // namespace onnxcompress
