// Template code of the QLinearBasisMaps kernels; included by exactly one
// translation unit per instruction set, which first defines
//   QBM_NS     namespace of this instantiation (keeps the builds apart)
//   QBM_NAME   name reported in the table
//   QBM_LANES  int32 lanes per vector
// GCC/Clang vector extensions only; nothing from the standard library that
// could be instantiated out of line.
#include <cstdint>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "qlinear_basis_maps_kernels.h"

namespace onnxcompress {
namespace qbm {
namespace QBM_NS {
namespace {

constexpr int L = QBM_LANES;

typedef int32_t VI __attribute__((vector_size(L * 4), aligned(4), may_alias));
typedef float VF __attribute__((vector_size(L * 4), aligned(4), may_alias));
typedef uint8_t VB __attribute__((vector_size(L), aligned(1), may_alias));

inline VI Load(const int32_t* p) { return *reinterpret_cast<const VI*>(p); }
// L bytes widened to int32 lanes: one widening load where the instruction set has it (the
// compilers' generic conversion loads byte by byte).
inline VI LoadU8(const uint8_t* p) {
#if defined(__AVX512F__)
  if constexpr (L == 16) {
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    VI r;
    __builtin_memcpy(&r, &v, sizeof(r));
    return r;
  }
#endif
#if defined(__AVX2__)
  if constexpr (L == 8) {
    const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    VI r;
    __builtin_memcpy(&r, &v, sizeof(r));
    return r;
  }
#endif
  return __builtin_convertvector(*reinterpret_cast<const VB*>(p), VI);
}
inline VI SplatI(int32_t v) { return v - VI{}; }
inline VF SplatF(float v) { return v - VF{}; }

// Lanes already in [0, 255] to bytes. AVX2 has no dword-to-byte move, and GCC turns the
// generic conversion into a byte extract per lane; two unsigned-saturating packs do it.
inline VB Narrow(VI v) {
#if defined(__AVX2__)
  if constexpr (L == 8) {
    __m256i x;
    __builtin_memcpy(&x, &v, sizeof(x));
    const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
    const __m128i b = _mm_packus_epi16(w, w);
    VB r;
    __builtin_memcpy(&r, &b, sizeof(r));
    return r;
  }
#endif
  return __builtin_convertvector(v, VB);
}

// MLAS's requantization of sums held as floats (exact integers): scale, clamp in float to
// [-zp, 255 - zp], round half to even by adding 1.5 * 2^23 and reading the low mantissa bits,
// then add the zero point. The lanes are left in [0, 255] as int32.
inline VI RequantizeLanes(VF v, VF scale, int32_t zero_point) {
  v = v * scale;
  const VF lo = SplatF(static_cast<float>(0 - zero_point)), hi = SplatF(static_cast<float>(255 - zero_point));
  v = v < lo ? lo : v;
  v = v > hi ? hi : v;
  const VF r = v + SplatF(12582912.0f);  // 1.5 * 2^23
  VI bits;
  __builtin_memcpy(&bits, &r, sizeof(bits));
  return bits + SplatI(zero_point - 0x4B400000);
}

inline VB Requantize(VI acc, VF scale, int32_t zero_point) {
  return Narrow(RequantizeLanes(__builtin_convertvector(acc, VF), scale, zero_point));
}

// Two vectors of requantized lanes to 2 * L consecutive bytes at y.
inline void StorePair(VI a, VI b, uint8_t* y) {
#if defined(__AVX2__)
  if constexpr (L == 8) {
    // One pack of both: words a0-3 b0-3 | a4-7 b4-7, put in order by a quadword permute, then
    // one byte pack of the two halves.
    __m256i x, z;
    __builtin_memcpy(&x, &a, sizeof(x));
    __builtin_memcpy(&z, &b, sizeof(z));
    const __m256i w = _mm256_permute4x64_epi64(_mm256_packus_epi32(x, z), 0xD8);
    const __m128i bytes = _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y), bytes);
    return;
  }
#endif
  *reinterpret_cast<VB*>(y) = Narrow(a);
  *reinterpret_cast<VB*>(y + L) = Narrow(b);
}

inline uint8_t RequantizeOne(int32_t acc, float scale, int32_t zero_point) {
  float v = static_cast<float>(acc) * scale;
  const float lo = static_cast<float>(0 - zero_point), hi = static_cast<float>(255 - zero_point);
  v = v < lo ? lo : v;
  v = v > hi ? hi : v;
  const float r = v + 12582912.0f;
  int32_t bits;
  __builtin_memcpy(&bits, &r, sizeof(bits));
  return static_cast<uint8_t>(bits - 0x4B400000 + zero_point);
}

void Plane(const int32_t* src, const int64_t* tap_off, const int32_t* w, int64_t taps, int32_t bias, int64_t n,
           int32_t* acc) {
  int64_t x0 = 0;
  for (; x0 + 4 * L <= n; x0 += 4 * L) {
    VI a0 = SplatI(bias), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t t = 0; t < taps; ++t) {
      const int32_t* s = src + tap_off[t] + x0;
      const VI wt = SplatI(w[t]);
      a0 += wt * Load(s);
      a1 += wt * Load(s + L);
      a2 += wt * Load(s + 2 * L);
      a3 += wt * Load(s + 3 * L);
    }
    *reinterpret_cast<VI*>(acc + x0) = a0;
    *reinterpret_cast<VI*>(acc + x0 + L) = a1;
    *reinterpret_cast<VI*>(acc + x0 + 2 * L) = a2;
    *reinterpret_cast<VI*>(acc + x0 + 3 * L) = a3;
  }
  for (; x0 < n; x0 += L) {
    VI a = SplatI(bias);
    for (int64_t t = 0; t < taps; ++t) a += SplatI(w[t]) * Load(src + tap_off[t] + x0);
    *reinterpret_cast<VI*>(acc + x0) = a;
  }
}

void Shifted(const uint8_t* x, int64_t n, int32_t zero_point, float* out) {
  const VF zp = SplatF(static_cast<float>(zero_point));
  int64_t i = 0;
  for (; i + L <= n; i += L) *reinterpret_cast<VF*>(out + i) = __builtin_convertvector(LoadU8(x + i), VF) - zp;
  for (; i < n; ++i) out[i] = static_cast<float>(static_cast<int32_t>(x[i]) - zero_point);
}

void RequantizePlane(const int32_t* acc, int64_t wq, int64_t oh, int64_t ow, float scale, int32_t zero_point,
                     uint8_t* y) {
  const VF vscale = SplatF(scale);
  const int64_t room = oh * ow;
  for (int64_t oy = 0; oy < oh; ++oy) {
    const int32_t* a = acc + oy * wq;
    uint8_t* out = y + oy * ow;
    for (int64_t x = 0; x < ow; x += L) {
      const VB v = Requantize(Load(a + x), vscale, zero_point);
      if (oy * ow + x + L <= room) {
        // a whole vector: what lands past the row's end is the next row's start, written after
        *reinterpret_cast<VB*>(out + x) = v;
      } else {
        for (int64_t j = 0; j < L && x + j < ow; ++j) out[x + j] = v[j];
      }
    }
  }
}

// MC maps (of the d) for channels [c, c + NB*L), for P consecutive pixels of a run (pixel p's
// input at x + p * x_step): the input vectors of each tap are loaded once per pixel and the
// weight vectors once for the P pixels, and the P*NB*MC sums are independent chains (with
// fewer chains than about twice the FMA units times their latency the loop waits on the FMA
// latency: at 16 channels and d = 1 one pixel at a time had 2 chains and ran at a fifth of the
// FMA peak). The sums start from the bias and are taken in float, which is exact here: every
// partial sum is an integer of magnitude at most |bias| + taps * 255 * 128 < 2^24
// (FloatSumsExact), so the float is the integer sum QLinearConv requantizes.
// Always inlined into RunBlock's pixel loop: as a call per block of 2 pixels (GCC's choice) the
// argument passing and the stack realignment cost 10-20% of a node at d = 2.
template <int MC, int NB, int P>
__attribute__((always_inline)) inline void PixelsBlock(const float* xb, int64_t x_step, const int64_t* offsets,
                                                       const int64_t* w_offsets, int64_t ntaps, int64_t M, int64_t C,
                                                       const float* wb, const float* bb, const float* sb,
                                                       int32_t zero_point, uint8_t* yb) {
  VF a[P][NB][MC];
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < NB; ++v)
      for (int j = 0; j < MC; ++j) a[p][v][j] = *reinterpret_cast<const VF*>(bb + j * C + v * L);
  for (int64_t i = 0; i < ntaps; ++i) {
    const float* xi = xb + offsets[i];
    const float* wt = wb + w_offsets[i];
    for (int v = 0; v < NB; ++v) {
      VF wv[MC];
      for (int j = 0; j < MC; ++j) wv[j] = *reinterpret_cast<const VF*>(wt + j * C + v * L);
      for (int p = 0; p < P; ++p) {
        const VF xv = *reinterpret_cast<const VF*>(xi + p * x_step + v * L);
        for (int j = 0; j < MC; ++j) a[p][v][j] += wv[j] * xv;
      }
    }
  }
  for (int p = 0; p < P; ++p) {
    uint8_t* yp = yb + p * M;
    for (int j = 0; j < MC; ++j) {
      int v = 0;
      for (; v + 2 <= NB; v += 2) {
        StorePair(RequantizeLanes(a[p][v][j], *reinterpret_cast<const VF*>(sb + j * C + v * L), zero_point),
                  RequantizeLanes(a[p][v + 1][j], *reinterpret_cast<const VF*>(sb + j * C + (v + 1) * L),
                                  zero_point),
                  yp + j * C + v * L);
      }
      for (; v < NB; ++v) {
        *reinterpret_cast<VB*>(yp + j * C + v * L) =
            Narrow(RequantizeLanes(a[p][v][j], *reinterpret_cast<const VF*>(sb + j * C + v * L), zero_point));
      }
    }
  }
}

// Independent sums the block loop keeps in flight: about two FMA units times a latency of 4,
// within the vector registers (16 with AVX2, 32 with AVX-512) beside the weights and inputs.
constexpr int kChains = L >= 16 ? 16 : 8;
constexpr int PixelsPerBlock(int chains) { return chains >= kChains ? 1 : (2 * chains >= kChains ? 2 : 4); }

// MC maps (of the d) for channels [c, c + NB*L) over the n pixels of a run, P at a time.
template <int MC, int NB>
inline void RunBlock(const float* x, int64_t x_step, int64_t n, const int64_t* offsets, const int64_t* w_offsets,
                     int64_t ntaps, int64_t M, int64_t C, int64_t c, int64_t m0, const float* w, const float* bias,
                     Requant rq, uint8_t* y) {
  constexpr int P = PixelsPerBlock(MC * NB);
  const float* wb = w + m0 * C + c;
  const float* bb = bias + m0 * C + c;
  const float* sb = rq.scale + m0 * C + c;
  uint8_t* yb = y + m0 * C + c;
  const float* xb = x + c;
  int64_t p = 0;
  for (; p + P <= n; p += P, xb += P * x_step, yb += P * M)
    PixelsBlock<MC, NB, P>(xb, x_step, offsets, w_offsets, ntaps, M, C, wb, bb, sb, rq.zero_point, yb);
  if constexpr (P > 2) {
    for (; p + 2 <= n; p += 2, xb += 2 * x_step, yb += 2 * M)
      PixelsBlock<MC, NB, 2>(xb, x_step, offsets, w_offsets, ntaps, M, C, wb, bb, sb, rq.zero_point, yb);
  }
  for (; p < n; ++p, xb += x_step, yb += M)
    PixelsBlock<MC, NB, 1>(xb, x_step, offsets, w_offsets, ntaps, M, C, wb, bb, sb, rq.zero_point, yb);
}

// All d maps of channels [c, c + NB*L) for the run, up to four at a time.
template <int NB>
inline void RunChannels(const float* x, int64_t x_step, int64_t n, const int64_t* offsets, const int64_t* w_offsets,
                        int64_t ntaps, int64_t M, int64_t C, int64_t d, int64_t c, const float* w, const float* bias,
                        Requant rq, uint8_t* y) {
  int64_t m = 0;
  for (; m + 4 <= d; m += 4) RunBlock<4, NB>(x, x_step, n, offsets, w_offsets, ntaps, M, C, c, m, w, bias, rq, y);
  switch (d - m) {
    case 3: RunBlock<3, NB>(x, x_step, n, offsets, w_offsets, ntaps, M, C, c, m, w, bias, rq, y); break;
    case 2: RunBlock<2, NB>(x, x_step, n, offsets, w_offsets, ntaps, M, C, c, m, w, bias, rq, y); break;
    case 1: RunBlock<1, NB>(x, x_step, n, offsets, w_offsets, ntaps, M, C, c, m, w, bias, rq, y); break;
    default: break;
  }
}

// Vectors of channels per block: 4 x 4 sums in flight fit AVX-512's 32 registers, 2 x 4 AVX2's 16.
constexpr int kBlocks = L >= 16 ? 4 : 2;

// A run of n pixels that read the same taps (Kernels::pixels).
void Pixels(const float* x, int64_t x_step, int64_t n, const int64_t* offsets, const int64_t* w_offsets,
            int64_t ntaps, int64_t C, int64_t d, const float* w, const float* bias, Requant rq, uint8_t* y) {
  const int64_t M = C * d;
  int64_t c = 0;
  for (; c + kBlocks * L <= C; c += kBlocks * L)
    RunChannels<kBlocks>(x, x_step, n, offsets, w_offsets, ntaps, M, C, d, c, w, bias, rq, y);
  for (; c + L <= C; c += L) RunChannels<1>(x, x_step, n, offsets, w_offsets, ntaps, M, C, d, c, w, bias, rq, y);
  for (int64_t p = 0; p < n; ++p) {
    for (int64_t cc = c; cc < C; ++cc) {  // channels past the last whole vector
      for (int64_t m = 0; m < d; ++m) {
        float a = bias[m * C + cc];
        for (int64_t i = 0; i < ntaps; ++i) a += w[w_offsets[i] + m * C + cc] * x[p * x_step + offsets[i] + cc];
        y[p * M + m * C + cc] = RequantizeOne(static_cast<int32_t>(a), rq.scale[m * C + cc], rq.zero_point);
      }
    }
  }
}

}  // namespace

const Kernels kTable = {QBM_NAME, L, Plane, RequantizePlane, Shifted, Pixels};

}  // namespace QBM_NS
}  // namespace qbm
}  // namespace onnxcompress
