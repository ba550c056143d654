// QLinearDepthwiseConv kernels with the compiler's default flags; see
// qlinear_depthwise_kernels_impl.h.
#define QDW_NS generic
#define QDW_NAME "generic"
#include "qlinear_depthwise_kernels_impl.h"

namespace onnxcompress {
namespace qdw {
const Kernels* KernelsGeneric() { return &generic::kTable; }
}  // namespace qdw
}  // namespace onnxcompress
