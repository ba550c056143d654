// QLinearDepthwiseConv kernels built for AVX-512 (F/BW/VL/DQ); see
// qlinear_depthwise_kernels_impl.h. Without the flags (non-x86 builds) the table is absent.
#include "qlinear_depthwise_kernels.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__) && \
    defined(__FMA__)
#define QDW_NS avx512
#define QDW_NAME "avx512"
#include "qlinear_depthwise_kernels_impl.h"
namespace onnxcompress {
namespace qdw {
const Kernels* KernelsAvx512() { return &avx512::kTable; }
}  // namespace qdw
}  // namespace onnxcompress
#else
namespace onnxcompress {
namespace qdw {
const Kernels* KernelsAvx512() { return nullptr; }
}  // namespace qdw
}  // namespace onnxcompress
#endif
