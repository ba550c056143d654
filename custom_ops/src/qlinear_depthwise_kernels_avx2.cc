// QLinearDepthwiseConv kernels built for AVX2; see qlinear_depthwise_kernels_impl.h.
#include "qlinear_depthwise_kernels.h"

#if defined(__AVX2__) && defined(__FMA__)
#define QDW_NS avx2
#define QDW_NAME "avx2"
#include "qlinear_depthwise_kernels_impl.h"
namespace onnxcompress {
namespace qdw {
const Kernels* KernelsAvx2() { return &avx2::kTable; }
}  // namespace qdw
}  // namespace onnxcompress
#else
namespace onnxcompress {
namespace qdw {
const Kernels* KernelsAvx2() { return nullptr; }
}  // namespace qdw
}  // namespace onnxcompress
#endif
