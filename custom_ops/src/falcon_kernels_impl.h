// Template code of the SparseInputConv kernels; included by exactly one
// translation unit per instruction set, which first defines:
//   FALCON_NS     namespace of this instantiation (keeps every symbol apart:
//                 code built with AVX-512 must never be linked into a caller
//                 of the generic build)
//   FALCON_NAME   name reported in the table
//   FALCON_LANES  floats per vector
//   FALCON_NVD    vectors of output channels of a dense tile (= a packed W block)
//   FALCON_PIX    output pixels of a dense tile
//   FALCON_NB     packed W blocks of a sparse pass
//   FALCON_CHUNK  output pixels of a sparse tile
// Uses GCC/Clang vector extensions only, and nothing from the C++ standard
// library that could be instantiated out of line (see FALCON_NS).
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "falcon_kernels.h"

namespace onnxcompress {
namespace falcon {
namespace FALCON_NS {
namespace {

constexpr int L = FALCON_LANES;
constexpr int NVD = FALCON_NVD;
constexpr int MB = L * NVD;
constexpr int PIX = FALCON_PIX;
constexpr int NBS = FALCON_NB;
constexpr int CHUNK = FALCON_CHUNK;  // output pixels of a sparse tile
static_assert(PIX >= 1 && PIX <= 8, "dense tile of 1..8 pixels");
static_assert(NBS >= 1 && NBS <= 4, "sparse pass of 1..4 W blocks");

// Unaligned, aliasing vector of L floats.
typedef float V __attribute__((vector_size(L * 4), aligned(4), may_alias));

inline V Load(const float* p) { return *reinterpret_cast<const V*>(p); }
inline void Store(float* p, V v) { *reinterpret_cast<V*>(p) = v; }
inline V Splat(float s) {
  // s - (+0) is s for every s, so this folds to a bare broadcast; `V{} + s`
  // would keep a real add (-0 + 0 = +0) and a lane-wise fill is not matched.
  return s - V{};
}
inline int64_t Min(int64_t a, int64_t b) { return a < b ? a : b; }

// |v| < threshold counts as zero (threshold 0: exactly zero). NaN is kept.
inline bool IsZero(float v, float threshold) {
  return threshold > 0.0f ? __builtin_fabsf(v) < threshold : v == 0.0f;
}

typedef int32_t VI __attribute__((vector_size(L * 4)));

int64_t CountZeros(const float* x, int64_t n, float threshold) {
  int64_t zeros = 0, i = 0;
  const V thr = Splat(threshold), zero = V{};
  const V sign = Splat(-0.0f);
  while (i + L <= n) {
    // Blocks of at most 2^20 vectors so the lane counters cannot overflow.
    const int64_t end = Min(n - L + 1, i + (int64_t{L} << 20));
    VI z = VI{};
    if (threshold > 0.0f) {
      for (; i < end; i += L) {
        const V v = Load(x + i);
        const V a = reinterpret_cast<V>(reinterpret_cast<VI>(v) & ~reinterpret_cast<VI>(sign));
        z -= reinterpret_cast<VI>(a < thr);
      }
    } else {
      for (; i < end; i += L) z -= reinterpret_cast<VI>(Load(x + i) == zero);
    }
    for (int j = 0; j < L; ++j) zeros += z[j];
  }
  for (; i < n; ++i) zeros += IsZero(x[i], threshold);
  return zeros;
}

void ToPaddedNhwc(const Plan& p, const float* x, float* xp, int64_t r0, int64_t r1) {
  const int64_t C = p.C, W = p.W, Wp = p.Wp, plane = p.H * p.W;
  const float thr = p.threshold;
  for (int64_t r = r0; r < r1; ++r) {
    float* row = xp + r * Wp * C;
    const int64_t iy = r - p.pad_top;
    if (iy < 0 || iy >= p.H) {
      std::memset(row, 0, sizeof(float) * Wp * C);
      continue;
    }
    std::memset(row, 0, sizeof(float) * p.pad_left * C);
    std::memset(row + (p.pad_left + W) * C, 0, sizeof(float) * (Wp - p.pad_left - W) * C);
    const float* src = x + iy * W;
    float* dst = row + p.pad_left * C;
    // Blocks of 16 pixels: the 16*C destination floats stay in L1.
    for (int64_t x0 = 0; x0 < W; x0 += 16) {
      const int64_t nx = Min(16, W - x0);
      for (int64_t c = 0; c < C; ++c) {
        const float* s = src + c * plane + x0;
        float* d = dst + x0 * C + c;
        if (thr > 0.0f) {
          for (int64_t i = 0; i < nx; ++i) d[i * C] = __builtin_fabsf(s[i]) < thr ? 0.0f : s[i];
        } else {
          for (int64_t i = 0; i < nx; ++i) d[i * C] = s[i];
        }
      }
    }
  }
}

#if !defined(__AVX512F__) && defined(__AVX2__)
// AVX2 has no compress: permutation moving the set lanes of an 8-bit mask first.
struct CompressLut {
  int32_t perm[256][8];
  constexpr CompressLut() : perm{} {
    for (int m = 0; m < 256; ++m) {
      int k = 0;
      for (int b = 0; b < 8; ++b) {
        if (m >> b & 1) perm[m][k++] = b;
      }
      while (k < 8) perm[m][k++] = 0;
    }
  }
};
constexpr CompressLut kCompressLut{};
#endif

// Appends the non-zeros of src[j*plane], j < n, to vals/idx (idx = ebase + j)
// and returns how many. May write up to one vector past the returned count
// (the caller leaves room; later writes of the same thread overwrite it).
inline uint32_t CompressPixel(const float* src, int64_t plane, int64_t n, uint32_t ebase, float thr, bool gather_ok,
                              float* vals, uint32_t* idx) {
  uint32_t cnt = 0;
#if defined(__AVX512F__)
  if (gather_ok) {
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i offsets = _mm512_mullo_epi32(lane, _mm512_set1_epi32(static_cast<int>(plane)));
    const __m512 vthr = _mm512_set1_ps(thr), zero = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) {
      const int64_t rem = n - j;
      const __mmask16 live = rem >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << rem) - 1);
      const __m512 v = _mm512_mask_i32gather_ps(zero, live, offsets, src + j * plane, 4);
      const __mmask16 nz = thr > 0.0f ? _mm512_mask_cmp_ps_mask(live, _mm512_abs_ps(v), vthr, _CMP_NLT_UQ)
                                      : _mm512_mask_cmp_ps_mask(live, v, zero, _CMP_NEQ_UQ);
      const __m512i e = _mm512_add_epi32(lane, _mm512_set1_epi32(static_cast<int>(ebase + j)));
      _mm512_storeu_ps(vals + cnt, _mm512_maskz_compress_ps(nz, v));
      _mm512_storeu_si512(idx + cnt, _mm512_maskz_compress_epi32(nz, e));
      cnt += static_cast<uint32_t>(__builtin_popcount(nz));
    }
    return cnt;
  }
#elif defined(__AVX2__)
  if (gather_ok) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i offsets = _mm256_mullo_epi32(lane, _mm256_set1_epi32(static_cast<int>(plane)));
    const __m256 vthr = _mm256_set1_ps(thr), zero = _mm256_setzero_ps();
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t j = 0; j < n; j += 8) {
      const int64_t rem = n - j;
      const __m256 live = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rem)), lane));
      const __m256 v = _mm256_mask_i32gather_ps(zero, src + j * plane, offsets, live, 4);
      const __m256 keep = thr > 0.0f ? _mm256_cmp_ps(_mm256_andnot_ps(sign, v), vthr, _CMP_NLT_UQ)
                                     : _mm256_cmp_ps(v, zero, _CMP_NEQ_UQ);
      const int m = _mm256_movemask_ps(_mm256_and_ps(keep, live));
      const __m256i perm = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kCompressLut.perm[m]));
      const __m256i e = _mm256_add_epi32(lane, _mm256_set1_epi32(static_cast<int>(ebase + j)));
      _mm256_storeu_ps(vals + cnt, _mm256_permutevar8x32_ps(v, perm));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(idx + cnt), _mm256_permutevar8x32_epi32(e, perm));
      cnt += static_cast<uint32_t>(__builtin_popcount(m));
    }
    return cnt;
  }
#endif
  (void)gather_ok;
  for (int64_t j = 0; j < n; ++j) {
    const float v = src[j * plane];
    vals[cnt] = v;
    idx[cnt] = ebase + static_cast<uint32_t>(j);
    cnt += !IsZero(v, thr);
  }
  return cnt;
}

void BuildLists(const Plan& p, const float* x, float* vals, uint32_t* idx, uint32_t* starts, int64_t r0,
                int64_t r1) {
  const int64_t W = p.W, Wp = p.Wp, plane = p.H * p.W;
  const int64_t G = p.G, Cg = p.Cg, cb = p.cb, ncb = p.ncb;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t iy = r - p.pad_top;
    const bool row_in = iy >= 0 && iy < p.H;
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t b = 0; b < ncb; ++b) {
        const int64_t c0 = b * cb, nc = Min(Cg, c0 + cb) - c0;
        uint32_t* st = starts + ((r * G + g) * ncb + b) * (Wp + 1);
        uint32_t n = static_cast<uint32_t>(r * p.row_stride + (g * Cg + c0) * Wp);
        const float* src = row_in ? x + (g * Cg + c0) * plane + iy * W : x;
        for (int64_t xq = 0; xq < Wp; ++xq) {
          st[xq] = n;
          const int64_t ix = xq - p.pad_left;
          if (row_in && ix >= 0 && ix < W) {
            n += CompressPixel(src + ix, plane, nc, static_cast<uint32_t>(xq * Cg + c0), p.threshold, p.gather_ok,
                               vals + n, idx + n);
          }
        }
        st[Wp] = n;
      }
    }
  }
}

// Bias, residual, activation and the [pixel][channel] -> NCHW transpose of a tile
// whose rows are `tw` floats apart.
void WriteTile(const Plan& p, const float* tile, int64_t tw, int64_t npix, float* y, int64_t g, int64_t m0,
               int64_t nvalid, int64_t op0) {
  const float lo = p.clamp ? p.lo : -__builtin_inff(), hi = p.clamp ? p.hi : __builtin_inff();
  for (int64_t m = 0; m < nvalid; ++m) {
    const int64_t mo = g * p.Mg + m0 + m;
    const float b = p.bias[mo];
    float* out = y + mo * p.out_plane + op0;
    const float* z = p.residual != nullptr ? p.residual + (out - p.y_base) : nullptr;
    const float* t = tile + m;
    int64_t q = 0;
#if defined(__AVX512F__)
    // The tile is in L1: gather a channel's column, 16 pixels at a time.
    if (tw * 16 < (int64_t{1} << 31)) {
      const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                              _mm512_set1_epi32(static_cast<int>(tw)));
      const V vlo = Splat(lo), vhi = Splat(hi);
      for (; q < npix; q += 16) {
        const int64_t rem = npix - q;
        const __mmask16 live = rem >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << rem) - 1);
        V v = (V)_mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, rows, t + q * tw, 4) + b;
        if (z != nullptr) v += (V)_mm512_maskz_loadu_ps(live, z + q);
        if (p.clamp) {
          v = v < vlo ? vlo : v;
          v = v > vhi ? vhi : v;
        }
        _mm512_mask_storeu_ps(out + q, live, (__m512)v);
      }
      continue;
    }
#elif defined(__AVX2__)
    if (tw * 8 < (int64_t{1} << 31)) {
      const __m256i rows = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                              _mm256_set1_epi32(static_cast<int>(tw)));
      const V vlo = Splat(lo), vhi = Splat(hi);
      for (; q + 8 <= npix; q += 8) {
        V v = (V)_mm256_i32gather_ps(t + q * tw, rows, 4) + b;
        if (z != nullptr) v += Load(z + q);
        if (p.clamp) {
          v = v < vlo ? vlo : v;
          v = v > vhi ? vhi : v;
        }
        Store(out + q, v);
      }
    }
#endif
    // NaN passes through the clamp, as through ORT's Relu/Clip.
    for (; q < npix; ++q) {
      float v = t[q * tw] + b;
      if (z != nullptr) v += z[q];
      if (p.clamp) {
        v = v < lo ? lo : v;
        v = v > hi ? hi : v;
      }
      out[q] = v;
    }
  }
}

// P output pixels x MB output channels, the whole reduction in registers.
template <int P>
void DenseTile(const Plan& p, const float* xp, float* y, int64_t g, int64_t mb, int64_t op0) {
  V acc[P][NVD];
#pragma GCC unroll 8
  for (int i = 0; i < P; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NVD; ++j) acc[i][j] = V{};
  const int64_t Cg = p.Cg, C = p.C;
  const float* w = p.wpack + (g * p.mblocks + mb) * p.taps * Cg * MB;
  const float* xg = xp + g * Cg;
  for (int64_t t = 0; t < p.taps; ++t) {
    const float* xs[P];
#pragma GCC unroll 8
    for (int i = 0; i < P; ++i) xs[i] = xg + (p.in_pix[op0 + i] + p.tap_pix[t]) * C;
    for (int64_t c = 0; c < Cg; ++c, w += MB) {
      V wv[NVD];
#pragma GCC unroll 8
      for (int j = 0; j < NVD; ++j) wv[j] = Load(w + j * L);
#pragma GCC unroll 8
      for (int i = 0; i < P; ++i) {
        const V s = Splat(xs[i][c]);
#pragma GCC unroll 8
        for (int j = 0; j < NVD; ++j) acc[i][j] += s * wv[j];
      }
    }
  }
  alignas(64) float tile[P * MB];
#pragma GCC unroll 8
  for (int i = 0; i < P; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NVD; ++j) Store(tile + i * MB + j * L, acc[i][j]);
  WriteTile(p, tile, MB, P, y, g, mb * MB, Min(MB, p.Mg - mb * MB), op0);
}

void Dense(const Plan& p, const float* xp, float* y, int64_t g, int64_t mb, int64_t op0, int64_t op1) {
  int64_t op = op0;
  for (; op + PIX <= op1; op += PIX) DenseTile<PIX>(p, xp, y, g, mb, op);
  switch (op1 - op) {
    case 0: break;
    case 1: DenseTile<1>(p, xp, y, g, mb, op); break;
    case 2: if constexpr (PIX > 2) DenseTile<2>(p, xp, y, g, mb, op); break;
    case 3: if constexpr (PIX > 3) DenseTile<3>(p, xp, y, g, mb, op); break;
    case 4: if constexpr (PIX > 4) DenseTile<4>(p, xp, y, g, mb, op); break;
    case 5: if constexpr (PIX > 5) DenseTile<5>(p, xp, y, g, mb, op); break;
    case 6: if constexpr (PIX > 6) DenseTile<6>(p, xp, y, g, mb, op); break;
    case 7: if constexpr (PIX > 7) DenseTile<7>(p, xp, y, g, mb, op); break;
    default: break;
  }
}

// One run of non-zeros into the partial sums of one output pixel: per entry
// one broadcast and NB*NVD FMAs with the W row (idx + shift).
template <int NB>
inline void Visit(float* tq, const float* vals, const uint32_t* idx, uint32_t begin, uint32_t end, int64_t shift,
                  const float* const* w) {
  if (begin == end) return;
  constexpr int NV = NB * NVD;
  V acc[NV];
#pragma GCC unroll 16
  for (int j = 0; j < NV; ++j) acc[j] = Load(tq + j * L);
  uint32_t e = begin;
  if constexpr (NV < 8) {
    // Fewer than 8 accumulators would make the FMA latency the limit: give
    // odd entries their own set.
    V odd[NV];
#pragma GCC unroll 16
    for (int j = 0; j < NV; ++j) odd[j] = V{};
    for (; e + 2 <= end; e += 2) {
      const V s0 = Splat(vals[e]), s1 = Splat(vals[e + 1]);
      const int64_t off0 = (static_cast<int64_t>(idx[e]) + shift) * MB;
      const int64_t off1 = (static_cast<int64_t>(idx[e + 1]) + shift) * MB;
#pragma GCC unroll 4
      for (int i = 0; i < NB; ++i)
#pragma GCC unroll 8
        for (int j = 0; j < NVD; ++j) {
          acc[i * NVD + j] += s0 * Load(w[i] + off0 + j * L);
          odd[i * NVD + j] += s1 * Load(w[i] + off1 + j * L);
        }
    }
#pragma GCC unroll 16
    for (int j = 0; j < NV; ++j) acc[j] += odd[j];
  }
  for (; e < end; ++e) {
    const V s = Splat(vals[e]);
    const int64_t off = (static_cast<int64_t>(idx[e]) + shift) * MB;
#pragma GCC unroll 4
    for (int i = 0; i < NB; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < NVD; ++j) acc[i * NVD + j] += s * Load(w[i] + off + j * L);
  }
#pragma GCC unroll 16
  for (int j = 0; j < NV; ++j) Store(tq + j * L, acc[j]);
}

// Up to CHUNK output pixels x NB*MB output channels. Loops over (channel
// block, kernel row) outermost so that the W rows they need (kw*cb rows of
// NB*MB floats) stay in L1 for all pixels; partial sums live in the tile.
// With dilation 1 the kw taps of a kernel row are one run of the lists.
template <int NB>
void SparseTile(const Plan& p, const float* vals, const uint32_t* idx, const uint32_t* starts, float* y, int64_t g,
                int64_t mb0, int64_t op0, int64_t op1) {
  constexpr int TW = NB * MB;
  alignas(64) float tile[CHUNK * TW];
  const int64_t np = op1 - op0;
  std::memset(tile, 0, sizeof(float) * np * TW);
  const int64_t Cg = p.Cg, K = p.taps * Cg, G = p.G, ncb = p.ncb, Wp1 = p.Wp + 1, kw = p.kw, dw = p.dil_w;
  const float* wb[NB];
#pragma GCC unroll 4
  for (int i = 0; i < NB; ++i) wb[i] = p.wpack + (g * p.mblocks + mb0 + i) * K * MB;
  const int64_t* in_y = p.in_y + op0;
  const int64_t* in_x = p.in_x + op0;
  for (int64_t b = 0; b < ncb; ++b) {
    for (int64_t ky = 0; ky < p.kh; ++ky) {
      const int64_t dy = ky * p.dil_h;
      const float* w[NB];
#pragma GCC unroll 4
      for (int i = 0; i < NB; ++i) w[i] = wb[i] + ky * kw * Cg * MB;
      for (int64_t q = 0; q < np; ++q) {
        const uint32_t* st = starts + (((in_y[q] + dy) * G + g) * ncb + b) * Wp1;
        const int64_t x0 = in_x[q];
        float* tq = tile + q * TW;
        if (dw == 1) {
          Visit<NB>(tq, vals, idx, st[x0], st[x0 + kw], -x0 * Cg, w);
        } else {
          for (int64_t kx = 0; kx < kw; ++kx) {
            const int64_t xx = x0 + kx * dw;
            Visit<NB>(tq, vals, idx, st[xx], st[xx + 1], -(xx - kx) * Cg, w);
          }
        }
      }
    }
  }
  for (int i = 0; i < NB; ++i) {
    const int64_t m0 = (mb0 + i) * MB;
    WriteTile(p, tile + i * MB, TW, np, y, g, m0, Min(MB, p.Mg - m0), op0);
  }
}

void Sparse(const Plan& p, const float* vals, const uint32_t* idx, const uint32_t* starts, float* y, int64_t g,
            int64_t mb0, int64_t nmb, int64_t op0, int64_t op1) {
  for (int64_t op = op0; op < op1; op += CHUNK) {
    const int64_t end = Min(op1, op + CHUNK);
    switch (nmb) {
      case 1: SparseTile<1>(p, vals, idx, starts, y, g, mb0, op, end); break;
      case 2: if constexpr (NBS >= 2) SparseTile<2>(p, vals, idx, starts, y, g, mb0, op, end); break;
      case 3: if constexpr (NBS >= 3) SparseTile<3>(p, vals, idx, starts, y, g, mb0, op, end); break;
      case 4: if constexpr (NBS >= 4) SparseTile<4>(p, vals, idx, starts, y, g, mb0, op, end); break;
      default: break;
    }
  }
}

}  // namespace

const Kernels kTable = {
    FALCON_NAME, L, MB, PIX, NBS, CHUNK, CountZeros, ToPaddedNhwc, BuildLists, Dense, Sparse,
};

}  // namespace FALCON_NS
}  // namespace falcon
}  // namespace onnxcompress
