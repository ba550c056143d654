// QLinearBasisMaps kernels with the compiler's default flags; see
// qlinear_basis_maps_kernels_impl.h.
#define QBM_NS generic
#define QBM_NAME "generic"
#define QBM_LANES 4
#include "qlinear_basis_maps_kernels_impl.h"

namespace onnxcompress {
namespace qbm {
const Kernels* KernelsGeneric() { return &generic::kTable; }
}  // namespace qbm
}  // namespace onnxcompress
