// QLinearBasisMaps kernels built for AVX2; see qlinear_basis_maps_kernels_impl.h.
#include "qlinear_basis_maps_kernels.h"

#if defined(__AVX2__) && defined(__FMA__)
#define QBM_NS avx2
#define QBM_NAME "avx2"
#define QBM_LANES 8
#include "qlinear_basis_maps_kernels_impl.h"
namespace onnxcompress {
namespace qbm {
const Kernels* KernelsAvx2() { return &avx2::kTable; }
}  // namespace qbm
}  // namespace onnxcompress
#else
namespace onnxcompress {
namespace qbm {
const Kernels* KernelsAvx2() { return nullptr; }
}  // namespace qbm
}  // namespace onnxcompress
#endif
