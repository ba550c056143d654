// ai.onnxcompress.SparseInputConv: exact 2-D convolution that skips zero input
// activations (FalCon-style). See docs/ops.md.
//
// Per image: when the input has at least `dense_below_zero_fraction` zeros,
// the sparse path lists the non-zeros of every input pixel and accumulates,
// per output pixel, only their products with the matching rows of W;
// otherwise the dense path runs a register-tiled direct convolution on a
// padded channel-last copy of the input. Both are ours (falcon_kernels.h,
// one build per instruction set); ORT's own Conv is only the fallback for
// geometries whose padded copy would be unreasonably large.
#pragma once

#include <memory>
#include <mutex>
#include <vector>

#include "common.h"
#include "conv_geometry.h"
#include "dense_conv.h"
#include "falcon_kernels.h"
#include "op_base.h"

namespace onnxcompress {

class SparseInputConv : public KernelBase<SparseInputConv> {
 public:
  static constexpr const char* kName = "SparseInputConv";
  static constexpr size_t kInputCount = 4;  // X, W, B (optional), Z (optional residual)
  static ONNXTensorElementDataType InputType(size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  static bool InputOptional(size_t i) { return i >= 2; }
  static Ort::Status InferOutputShape(Ort::ShapeInferContext& ctx) { return InferConvOutputShapeFromWeight(ctx, 1); }

  explicit SparseInputConv(const Ort::ConstKernelInfo& info);
  void Compute(Ort::KernelContext& context);

 private:
  // Per-call buffers, recycled between calls (Compute may run concurrently).
  struct Scratch {
    std::vector<float> padded;                     // dense path: [Hp][Wp][C]
    std::vector<float> vals;                       // sparse path: lists
    std::vector<uint32_t> idx, starts;
    std::vector<int64_t> in_pix, tap_pix, in_y, in_x;
    std::vector<float> thresholded;                // fallback path with threshold > 0
  };
  void RunFallback(Ort::KernelContext& context, const ConvGeometry& g, Ort::ConstValue& x, Ort::UnownedValue& y,
                   Scratch& scratch);

  ConvAttributes attrs_;
  Epilogue epilogue_;                  // fused residual Z and activation
  float threshold_ = 0.0f;             // |x| < threshold counts as zero (approximate when > 0)
  float dense_below_zero_fraction_;    // dense path when fewer zeros than this
  int64_t out_channels_ = 0, in_per_group_ = 0, kh_ = 0, kw_ = 0;
  std::vector<float> bias_;            // [M], zeros when absent
  bool has_bias_ = false;
  const falcon::Kernels* kernels_ = nullptr;
  int64_t mblocks_ = 0;                // packed W blocks per group
  int64_t forced_cb_ = 0;              // ONNXCOMPRESS_FALCON_CB (read at creation), 0: automatic
  std::vector<float> wpack_storage_;
  const float* wpack_ = nullptr;       // 64-byte aligned view into wpack_storage_
  std::unique_ptr<OrtConv> fallback_;  // ORT's Conv, for oversized padded copies only

  ScratchPool<Scratch> scratch_pool_;
};

// The kernels for this CPU, or those forced by the environment variable
// ONNXCOMPRESS_ISA (avx512 | avx2 | generic | auto); throws InvalidNode when
// the forced set is unknown or not supported by the CPU or the build.
const falcon::Kernels* SelectFalconKernels();

}  // namespace onnxcompress
