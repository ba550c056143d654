// ai.onnxcompress.ClusteredSparseConv: 2-D convolution whose weights share K
// values (plus exact zeros, never touched). For output channel o,
//   y[o] = b[o] + sum_k value[o or shared, k] * (sum of the im2col columns of
//          the weights in cluster k),
// vectorised over blocks of output pixels. See docs/ops.md for the layout.
#pragma once

#include <memory>
#include <mutex>
#include <vector>

#include "clustered_sparse_conv_kernels.h"
#include "common.h"
#include "conv_geometry.h"
#include "dense_conv.h"
#include "op_base.h"

namespace onnxcompress {

class ClusteredSparseConv : public KernelBase<ClusteredSparseConv> {
 public:
  static constexpr const char* kName = "ClusteredSparseConv";
  static constexpr size_t kInputCount = 6;  // X, values, counts, indices, B (optional), Z (optional residual)
  static ONNXTensorElementDataType InputType(size_t i) {
    return (i == 2 || i == 3) ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  static bool InputOptional(size_t i) { return i >= 4; }
  static Ort::Status InferOutputShape(Ort::ShapeInferContext& ctx);

  explicit ClusteredSparseConv(const Ort::ConstKernelInfo& info);
  void Compute(Ort::KernelContext& context);

 private:
  struct Scratch {
    std::vector<float> xq;    // stride phases of the padded input of one image
    std::vector<float> tiles; // per work item: partial sums of its channels (FMA kernels)
  };
  // Entry offsets for one input geometry (they depend on the phase plane size).
  struct Offsets {
    int64_t sh = 0, sw = 0, Hq = -1, Wq = -1;
    std::vector<uint32_t> off;  // [nnz]
  };
  void RunFallback(Ort::KernelContext& context, Ort::ConstValue& x, Ort::UnownedValue& y);
  std::shared_ptr<const Offsets> OffsetsFor(int64_t Hq, int64_t Wq, int64_t sh, int64_t sw, int64_t dh, int64_t dw);

  ConvAttributes attrs_;
  Epilogue epilogue_;  // fused residual Z and activation
  int64_t out_channels_ = 0, in_per_group_ = 0, kh_ = 0, kw_ = 0;
  const cluspa::Kernels* kernels_ = nullptr;
  // The program (see clustered_sparse_conv_kernels.h), built and checked once.
  std::vector<int64_t> seg_begin_, seg_first_;
  std::vector<float> seg_value_;
  std::vector<float> entry_value_;      // [nnz] each entry's shared value
  std::vector<int64_t> entry_first_;    // per_entry_fma kernels: [M * (nblocks_ + 1)]
  int64_t nblocks_ = 0;
  std::vector<uint32_t> rows_;          // column j = c*kH*kW + ky*kW + kx of each entry
  std::mutex offsets_mutex_;
  std::shared_ptr<const Offsets> offsets_;
  std::vector<float> bias_;
  std::unique_ptr<OrtConv> fallback_;  // ORT's Conv, for inputs the phase planes cannot take
  std::once_flag dense_once_;
  std::vector<float> dense_weight_;    // built on first fallback use

  ScratchPool<Scratch> scratch_pool_;
};

// The kernels for this CPU, or those forced by ONNXCOMPRESS_ISA
// (avx512 | avx2 | generic | auto); throws InvalidNode when the forced set is
// unknown or not supported by the CPU or the build.
const cluspa::Kernels* SelectClusteredSparseKernels();

}  // namespace onnxcompress
