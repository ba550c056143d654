// ai.onnxcompress.BasisConv: PENNI basis-kernel convolution. See docs/ops.md.
//
//   W[o, c] = sum_b Coefs[o, c*d + b] * Bases[b]     (c: input channel within o's group)
//
// computed in two stages per tile of output positions: (1) every active
// (input channel, basis) pair's map (a depthwise convolution of the channel
// with the basis kernel), into a small tile buffer, one channel block at a
// time so the block stays in L1; (2) the sparse 1x1 combination of that
// block's maps into per-output sums. The Cin*d maps never go to memory as a
// whole (fused mode); when an image has too few tiles to keep the threads
// busy, stage 1 fills one buffer for the image first and stage 2 is split
// over output channels (two-phase mode, small images only). Geometries whose
// padded copy of the input would be unreasonably large run ORT's Conv on the
// equivalent dense weights.
#pragma once

#include <memory>
#include <mutex>
#include <vector>

#include "basis_conv_kernels.h"
#include "common.h"
#include "conv_geometry.h"
#include "dense_conv.h"
#include "op_base.h"

namespace onnxcompress {

class BasisConv : public KernelBase<BasisConv> {
 public:
  static constexpr const char* kName = "BasisConv";
  static constexpr size_t kInputCount = 5;  // X, Bases, Coefs, B (optional), Z (optional residual)
  static ONNXTensorElementDataType InputType(size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  static bool InputOptional(size_t i) { return i >= 3; }
  static Ort::Status InferOutputShape(Ort::ShapeInferContext& ctx);

  explicit BasisConv(const Ort::ConstKernelInfo& info);
  void Compute(Ort::KernelContext& context);

 private:
  // A run of input channels of one group whose active maps are computed together.
  struct Block {
    int64_t group = 0;
    int64_t row0 = 0, rows = 0;   // active rows [row0, row0 + rows) of the layer
    int64_t starts = 0;           // index of this block's Mg + 1 entry starts in starts_
  };
  struct Scratch {
    std::vector<float> planes;    // [C][plane_stride]
    std::vector<float> maps;      // two-phase mode: [tiles][rows][tile]
  };
  void RunFallback(Ort::KernelContext& context, Ort::ConstValue& x, Ort::UnownedValue& y);

  ConvAttributes attrs_;
  Epilogue epilogue_;  // fused residual Z and activation
  int64_t out_channels_ = 0, in_per_group_ = 0, kh_ = 0, kw_ = 0, d_ = 0;
  bool has_bias_ = false;
  std::vector<float> bias_;           // [M], zeros when absent
  std::vector<float> bases_;          // [d][kh*kw]
  std::vector<float> coefs_;          // [M][Cg*d], as given (for the fallback weights)
  const basis::Kernels* kernels_ = nullptr;
  // Active (channel, basis) rows, all groups one after the other.
  std::vector<int32_t> row_c_, row_b_;     // row_c_: channel index in the whole input
  std::vector<int64_t> group_row0_;        // [G + 1]
  std::vector<Block> blocks_;
  std::vector<int64_t> group_block0_;      // [G + 1]
  int64_t max_block_rows_ = 0;
  std::vector<uint32_t> starts_;           // entry runs per (block, output)
  std::vector<basis::Entry> entries_;

  std::unique_ptr<OrtConv> fallback_;
  std::once_flag dense_once_;
  std::vector<float> dense_weight_;        // built on first fallback use

  ScratchPool<Scratch> scratch_pool_;
};

// The kernels for this CPU, or those forced by ONNXCOMPRESS_ISA
// (avx512 | avx2 | generic | auto); throws InvalidNode when unknown or unsupported.
const basis::Kernels* SelectBasisKernels();

}  // namespace onnxcompress
