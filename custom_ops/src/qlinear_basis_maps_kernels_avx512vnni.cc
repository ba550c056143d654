// QLinearBasisMaps' channels-last row kernels for AVX-512 VNNI (vpdpbusd); see
// RowKernels in qlinear_basis_maps_kernels.h. The requantization is the template
// code's (qlinear_basis_maps_kernels_impl.h, instantiated here once more), so both
// paths round alike. Without the flags (non-x86 builds) the table is absent.
#include "qlinear_basis_maps_kernels.h"

// GCC 12 warns inside its own intrinsics headers (their "undefined" source operands).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__) && \
    defined(__AVX512VNNI__) && defined(__FMA__)
#define QBM_NS avx512vnni
#define QBM_NAME "avx512vnni"
#define QBM_LANES 16
#include "qlinear_basis_maps_kernels_impl.h"

namespace onnxcompress {
namespace qbm {
namespace avx512vnni {
namespace {

inline __mmask16 TailMask(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
}

// Stride 1, no dilation: each input pixel is widened once and shifted into the kw lanes of
// the columns that read it (a window of the last KW widened pixels).
template <int KW>
void PackRowUnit(const uint8_t* x_row, int64_t W, int64_t C, int64_t OW, int64_t pad_left, uint8_t zp, uint32_t* t) {
  const int64_t Cp = (C + 15) / 16 * 16;
  const __m512i zero_point = _mm512_set1_epi32(zp);
  __m512i rest = _mm512_setzero_si512();  // the bytes of taps past kW: the zero point, weight 0
  for (int kx = KW; kx < 4; ++kx) rest = _mm512_or_si512(rest, _mm512_slli_epi32(zero_point, 8 * kx));
  for (int64_t c = 0; c < Cp; c += 16) {
    const __mmask16 m = TailMask(C - c);
    const auto widened = [&](int64_t ix) {
      return ix >= 0 && ix < W ? _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, x_row + ix * C + c)) : zero_point;
    };
    __m512i e[KW];
    for (int kx = 0; kx < KW; ++kx) e[kx] = widened(kx - pad_left);
    for (int64_t ox = 0; ox < OW; ++ox) {
      __m512i v = _mm512_or_si512(rest, e[0]);
      if constexpr (KW > 1) v = _mm512_or_si512(v, _mm512_slli_epi32(e[1], 8));
      if constexpr (KW > 2) v = _mm512_or_si512(v, _mm512_slli_epi32(e[2], 16));
      if constexpr (KW > 3) v = _mm512_or_si512(v, _mm512_slli_epi32(e[3], 24));
      _mm512_storeu_si512(t + ox * Cp + c, _mm512_maskz_mov_epi32(m, v));
      for (int kx = 0; kx + 1 < KW; ++kx) e[kx] = e[kx + 1];
      e[KW - 1] = widened(ox + KW - pad_left);
    }
  }
}

void PackRow(const uint8_t* x_row, int64_t W, int64_t C, int64_t OW, int64_t sw, int64_t pad_left, int64_t dw,
             int64_t kw, uint8_t zp, uint32_t* t) {
  if (sw == 1 && dw == 1) {
    switch (kw) {
      case 1: return PackRowUnit<1>(x_row, W, C, OW, pad_left, zp, t);
      case 2: return PackRowUnit<2>(x_row, W, C, OW, pad_left, zp, t);
      case 3: return PackRowUnit<3>(x_row, W, C, OW, pad_left, zp, t);
      case 4: return PackRowUnit<4>(x_row, W, C, OW, pad_left, zp, t);
      default: break;
    }
  }
  const int64_t Cp = (C + 15) / 16 * 16;
  const __m512i zero_point = _mm512_set1_epi32(zp);
  for (int64_t ox = 0; ox < OW; ++ox) {
    const uint8_t* src[4];
    for (int64_t kx = 0; kx < 4; ++kx) {
      const int64_t ix = ox * sw - pad_left + kx * dw;
      src[kx] = kx < kw && ix >= 0 && ix < W ? x_row + ix * C : nullptr;
    }
    uint32_t* out = t + ox * Cp;
    for (int64_t c = 0; c < Cp; c += 16) {
      const __mmask16 m = TailMask(C - c);
      __m512i v = _mm512_setzero_si512();
      for (int kx = 0; kx < 4; ++kx) {
        const __m512i b = src[kx] ? _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, src[kx] + c)) : zero_point;
        v = _mm512_or_si512(v, _mm512_sllv_epi32(b, _mm512_set1_epi32(8 * kx)));
      }
      // lanes past C hold zeros (their weights are never stored to an output either)
      _mm512_storeu_si512(out + c, _mm512_maskz_mov_epi32(m, v));
    }
  }
}

// MC maps (of the d) of the 16 channels at c, for every output column; KH = 0: kh at run time.
template <int KH, int MC>
inline void Block(const uint32_t* const* rows, int64_t kh_runtime, int64_t OW, int64_t Cp, int64_t C, int64_t M,
                  int64_t c, int64_t m0, const uint32_t* w, int64_t w_stride, const int32_t* bias, const float* scale,
                  int32_t yzp, uint8_t* y) {
  const int64_t kh = KH > 0 ? KH : kh_runtime;
  const __mmask16 mask = TailMask(C - c);
  __m512i b[MC];
  VF s[MC];
  for (int j = 0; j < MC; ++j) {
    const int64_t o = (m0 + j) * C + c;
    b[j] = _mm512_loadu_si512(bias + o);
    s[j] = *reinterpret_cast<const VF*>(scale + o);
  }
  for (int64_t ox = 0; ox < OW; ++ox) {
    __m512i a[MC];
    for (int j = 0; j < MC; ++j) a[j] = b[j];
    for (int64_t ky = 0; ky < kh; ++ky) {
      const __m512i xv = _mm512_loadu_si512(rows[ky] + ox * Cp + c);
      const uint32_t* wk = w + ky * w_stride + m0 * C + c;
      for (int j = 0; j < MC; ++j) a[j] = _mm512_dpbusd_epi32(a[j], xv, _mm512_loadu_si512(wk + j * C));
    }
    uint8_t* out = y + ox * M + m0 * C + c;
    for (int j = 0; j < MC; ++j) {
      VI sum;
      __builtin_memcpy(&sum, &a[j], sizeof(sum));
      const VB q = Requantize(sum, s[j], yzp);
      __m128i qv;
      __builtin_memcpy(&qv, &q, sizeof(qv));
      _mm_mask_storeu_epi8(out + j * C, mask, qv);
    }
  }
}

template <int KH>
void Channels(const uint32_t* const* rows, int64_t kh, int64_t OW, int64_t C, int64_t M, const uint32_t* w,
              int64_t w_stride, const int32_t* bias, const float* scale, int32_t yzp, uint8_t* y) {
  const int64_t Cp = (C + 15) / 16 * 16, d = M / C;
  for (int64_t c = 0; c < Cp; c += 16) {
    int64_t m = 0;
    for (; m + 4 <= d; m += 4) Block<KH, 4>(rows, kh, OW, Cp, C, M, c, m, w, w_stride, bias, scale, yzp, y);
    switch (d - m) {
      case 3: Block<KH, 3>(rows, kh, OW, Cp, C, M, c, m, w, w_stride, bias, scale, yzp, y); break;
      case 2: Block<KH, 2>(rows, kh, OW, Cp, C, M, c, m, w, w_stride, bias, scale, yzp, y); break;
      case 1: Block<KH, 1>(rows, kh, OW, Cp, C, M, c, m, w, w_stride, bias, scale, yzp, y); break;
      default: break;
    }
  }
}

void OutputRow(const uint32_t* const* rows, int64_t kh, int64_t OW, int64_t C, int64_t M, const uint32_t* w,
               int64_t w_stride, const int32_t* bias, const float* scale, int32_t yzp, uint8_t* y) {
  switch (kh) {
    case 1: Channels<1>(rows, kh, OW, C, M, w, w_stride, bias, scale, yzp, y); break;
    case 3: Channels<3>(rows, kh, OW, C, M, w, w_stride, bias, scale, yzp, y); break;
    default: Channels<0>(rows, kh, OW, C, M, w, w_stride, bias, scale, yzp, y); break;
  }
}

}  // namespace

const RowKernels kRowTable = {"avx512vnni", PackRow, OutputRow};

}  // namespace avx512vnni

const RowKernels* RowKernelsAvx512Vnni() { return &avx512vnni::kRowTable; }

}  // namespace qbm
}  // namespace onnxcompress
#else
namespace onnxcompress {
namespace qbm {
const RowKernels* RowKernelsAvx512Vnni() { return nullptr; }
}  // namespace qbm
}  // namespace onnxcompress
#endif
