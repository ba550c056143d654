// The dense path: ONNX Runtime's own Conv kernel (MLAS), created once per node
// and invoked from inside our kernel. Used where skipping work cannot pay.
#pragma once

#include "common.h"
#include "conv_geometry.h"

namespace onnxcompress {

// Largest dense weight tensor a fallback builds (1 GiB of floats): far above
// any real CNN layer, far below what a crafted attribute could ask for.
inline constexpr int64_t kMaxFallbackWeights = int64_t{1} << 28;

class OrtConv {
 public:
  OrtConv(const Ort::ConstKernelInfo& info, const ConvAttributes& attrs, bool with_bias);
  // Y = Conv(X, W[, B]) into the already allocated output value.
  void Run(const Ort::KernelContext& context, const OrtValue* x, const OrtValue* w, const OrtValue* b,
           OrtValue* y);

 private:
  Ort::Op op_{nullptr};
  bool with_bias_;
};

}  // namespace onnxcompress
