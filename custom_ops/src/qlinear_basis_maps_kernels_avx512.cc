// QLinearBasisMaps kernels built for AVX-512 (F/BW/VL/DQ); see
// qlinear_basis_maps_kernels_impl.h. Without the flags (non-x86 builds) the table is absent.
#include "qlinear_basis_maps_kernels.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__) && \
    defined(__FMA__)
#define QBM_NS avx512
#define QBM_NAME "avx512"
#define QBM_LANES 16
#include "qlinear_basis_maps_kernels_impl.h"
namespace onnxcompress {
namespace qbm {
const Kernels* KernelsAvx512() { return &avx512::kTable; }
}  // namespace qbm
}  // namespace onnxcompress
#else
namespace onnxcompress {
namespace qbm {
const Kernels* KernelsAvx512() { return nullptr; }
}  // namespace qbm
}  // namespace onnxcompress
#endif
