// LutConv inner kernels, compiled once per instruction set: the including
// translation unit defines LUT_NS (namespace), LUT_NAME and LUT_ROWS (rows per
// block: 32, or 64 with AVX-512BW) and is compiled with the ISA's flags. The
// SIMD parts are chosen by the compiler's macros (__AVX512BW__, __AVX2__);
// everything else is plain C++ the compiler vectorises.
//
// Per block of LUT_ROWS output pixels of one group:
//   1. encode: codes[c][r] (uint8) for every codebook c,
//      tree: four comparisons of one input value with a node threshold;
//      exhaustive: nearest of K prototypes (squared distance);
//   2. look up and add: fp32 tables row by row (vectorised over outputs), or
//      8-bit tables 32/64 rows at a time with byte shuffles (K <= 16) into
//      16-bit accumulators, flushed to fp32 every 256 codebooks (255 * 256 <
//      65536: no overflow), scalar for other CPUs or K > 16;
//   3. scale, bias, fused activation, store into NCHW y.
//
// Nothing from the C++ standard library that could be instantiated out of
// line (a template kept as a COMDAT symbol could be shared with another ISA's
// translation unit and run AVX-512 code on an AVX2 CPU): everything below is
// in an anonymous namespace, with its own Min/Max; scratch comes from the
// caller (no allocation in a thread-pool task).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "lut_conv_kernels.h"

namespace onnxcompress {
namespace lut {
namespace LUT_NS {
namespace {

constexpr int R = LUT_ROWS;
constexpr int64_t kFlushEvery = 256;  // codebooks per 16-bit accumulation

inline int64_t Min(int64_t a, int64_t b) { return a < b ? a : b; }
inline float MinF(float a, float b) { return b < a ? b : a; }
inline float MaxF(float a, float b) { return a < b ? b : a; }

// ------------------------------------------------------------------ encoding

// Tree codes of output pixels [op_begin, op_end) into codes[c * stride + (op - op_begin)].
// Pixels past the plane read the last pixel (base repeats it); their codes are never used.
[[maybe_unused]] void EncodeTreeScalar(const Plan& p, int64_t g, int64_t op_begin, int64_t op_end, uint8_t* codes, int64_t stride) {
  for (int64_t c = 0; c < p.C; ++c) {
    const int32_t* so = p.split_off + (g * p.C + c) * 4;
    const float* t = p.thr + (g * p.C + c) * 16;
    uint8_t* out = codes + c * stride - op_begin;
    for (int64_t op = op_begin; op < op_end; ++op) {
      const float* xb = p.xp + p.base[op];
      int node = 0;
      for (int l = 0; l < 4; ++l) node = 2 * node + (xb[so[l]] > t[(1 << l) - 1 + node] ? 1 : 0);
      out[op] = static_cast<uint8_t>(node);
    }
  }
}

// The next vector of at most V pixels from op: its length, and whether its
// inputs are consecutive in memory (unit stride, one output row). With
// unit stride and rows of at least V pixels a vector stops at the row's end
// (contiguous loads beat gathers); otherwise it takes V pixels and gathers.
inline int64_t NextChunk(const Plan& p, int64_t op, int64_t op_end, int64_t V, bool* contiguous) {
  int64_t n = Min(V, op_end - op);
  *contiguous = false;
  if (p.unit_stride_w && op < p.plane) {
    const int64_t in_row = p.out_w - op % p.out_w;
    if (in_row >= n) {
      *contiguous = true;
    } else if (p.out_w >= V) {
      n = in_row;
      *contiguous = true;
    }
  }
  return n;
}

#if defined(__AVX512BW__) && LUT_ROWS == 64
void EncodeTree(const Plan& p, int64_t g, int64_t op_begin, int64_t op_end, uint8_t* codes, int64_t stride) {
  const __m512i one = _mm512_set1_epi32(1);
  for (int64_t op = op_begin; op < op_end;) {
    bool contig;
    const int64_t n = NextChunk(p, op, op_end, 16, &contig);
    const __mmask16 m = static_cast<__mmask16>((1u << n) - 1u);
    const float* xb = p.xp + p.base[op];
    const __m512i bidx = _mm512_loadu_si512(p.base + op);  // base has 64 entries of slack
    uint8_t* out = codes + (op - op_begin);
    for (int64_t c = 0; c < p.C; ++c) {
      const int32_t* so = p.split_off + (g * p.C + c) * 4;
      const float* t = p.thr + (g * p.C + c) * 16;
      __m512i node = _mm512_setzero_si512();
      for (int l = 0; l < 4; ++l) {
        const __m512 v = contig ? _mm512_maskz_loadu_ps(m, xb + so[l]) : _mm512_i32gather_ps(bidx, p.xp + so[l], 4);
        // level l has 2^l nodes, thresholds t[2^l - 1 ...] (16 floats of slack past the end)
        const __m512 tv = l == 0 ? _mm512_set1_ps(t[0]) : _mm512_permutexvar_ps(node, _mm512_loadu_ps(t + (1 << l) - 1));
        const __mmask16 gt = _mm512_cmp_ps_mask(v, tv, _CMP_GT_OQ);
        node = _mm512_mask_add_epi32(_mm512_slli_epi32(node, 1), gt, _mm512_slli_epi32(node, 1), one);
      }
      _mm_mask_storeu_epi8(out + c * stride, m, _mm512_cvtepi32_epi8(node));
    }
    op += n;
  }
}
#elif defined(__AVX2__) && LUT_ROWS == 32
void EncodeTree(const Plan& p, int64_t g, int64_t op_begin, int64_t op_end, uint8_t* codes, int64_t stride) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t op = op_begin; op < op_end;) {
    bool contig;
    const int64_t n = NextChunk(p, op, op_end, 8, &contig);
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), lane);
    const float* xb = p.xp + p.base[op];
    const __m256i bidx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.base + op));
    uint8_t* out = codes + (op - op_begin);
    for (int64_t c = 0; c < p.C; ++c) {
      const int32_t* so = p.split_off + (g * p.C + c) * 4;
      const float* t = p.thr + (g * p.C + c) * 16;
      __m256i node = _mm256_setzero_si256();
      for (int l = 0; l < 4; ++l) {
        const __m256 v = contig ? _mm256_maskload_ps(xb + so[l], m) : _mm256_i32gather_ps(p.xp + so[l], bidx, 4);
        // level l has 2^l <= 8 nodes: thresholds t[2^l - 1 ...] fit one vector
        const __m256 tv = l == 0 ? _mm256_set1_ps(t[0])
                                 : _mm256_permutevar8x32_ps(_mm256_loadu_ps(t + (1 << l) - 1), node);
        const __m256i gt = _mm256_castps_si256(_mm256_cmp_ps(v, tv, _CMP_GT_OQ));  // -1 where greater
        node = _mm256_sub_epi32(_mm256_slli_epi32(node, 1), gt);
      }
      const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(node), _mm256_extracti128_si256(node, 1));
      const __m128i b = _mm_packus_epi16(w, w);
      if (n == 8) {
        _mm_storel_epi64(reinterpret_cast<__m128i*>(out + c * stride), b);
      } else {
        alignas(16) uint8_t tmp[16];
        _mm_store_si128(reinterpret_cast<__m128i*>(tmp), b);
        std::memcpy(out + c * stride, tmp, static_cast<size_t>(n));
      }
    }
    op += n;
  }
}
#else
void EncodeTree(const Plan& p, int64_t g, int64_t op_begin, int64_t op_end, uint8_t* codes, int64_t stride) {
  EncodeTreeScalar(p, g, op_begin, op_end, codes, stride);
}
#endif

// sub: [S][R] floats, best: [R] floats.
void EncodeExhaustive(const Plan& p, int64_t g, int64_t op0, uint8_t* codes, int64_t stride, float* sub,
                      float* best) {
  const int32_t* base = p.base + op0;
  const int32_t* col = p.col_off + g * p.D;
  for (int64_t c = 0; c < p.C; ++c) {
    for (int64_t s = 0; s < p.S; ++s) {
      const int64_t d = c * p.S + s;
      float* dst = sub + s * R;
      if (d < p.D) {
        const float* src = p.xp + col[d];
        for (int r = 0; r < R; ++r) dst[r] = src[base[r]];
      } else {
        for (int r = 0; r < R; ++r) dst[r] = 0.0f;
      }
    }
    uint8_t* out = codes + c * stride;
    for (int r = 0; r < R; ++r) {
      best[r] = __builtin_inff();
      out[r] = 0;
    }
    const float* pk = p.protos + (g * p.C + c) * p.K * p.S;
    const float* nk = p.pnorm + (g * p.C + c) * p.K;
    for (int64_t k = 0; k < p.K; ++k, pk += p.S) {
      float dist[R];
      for (int r = 0; r < R; ++r) dist[r] = nk[k];
      for (int64_t s = 0; s < p.S; ++s) {
        const float w = -2.0f * pk[s];
        const float* xs = sub + s * R;
        for (int r = 0; r < R; ++r) dist[r] += w * xs[r];
      }
      for (int r = 0; r < R; ++r) {
        const bool closer = dist[r] < best[r];
        best[r] = closer ? dist[r] : best[r];
        out[r] = closer ? static_cast<uint8_t>(k) : out[r];
      }
    }
  }
}

// ------------------------------------------------------------------- output

// y[o][op0 + r] = act(scale[o] * acc[j][r] + bias[o] (+ the residual)) for outputs o0 + j, j < no.
void Store(const Plan& p, float* y, int64_t g, int64_t o0, int64_t no, int64_t op0, const float* acc, bool scaled) {
  const int64_t rows = Min(R, p.plane - op0);
  for (int64_t j = 0; j < no; ++j) {
    const int64_t o = g * p.Mg + o0 + j;
    const float sc = scaled ? p.scale[o] : 1.0f, b = p.bias[o];
    const float* a = acc + j * R;
    float* dst = y + o * p.y_stride + op0;
    if (p.residual != nullptr) {  // the residual, then the activation (none: clamp to +-inf)
      const float* z = p.residual + (dst - p.y_base);
      const float lo = p.clamp ? p.lo : -__builtin_inff(), hi = p.clamp ? p.hi : __builtin_inff();
      for (int64_t r = 0; r < rows; ++r) dst[r] = MinF(MaxF(sc * a[r] + b + z[r], lo), hi);
    } else if (p.clamp) {
      const float lo = p.lo, hi = p.hi;
      for (int64_t r = 0; r < rows; ++r) dst[r] = MinF(MaxF(sc * a[r] + b, lo), hi);
    } else {
      for (int64_t r = 0; r < rows; ++r) dst[r] = sc * a[r] + b;
    }
  }
}

// fp32 tables: acc[r][j] summed row by row (vectorised over outputs), then transposed.
void LookupFloat(const Plan& p, float* y, int64_t g, int64_t op0, const uint8_t* codes, int64_t stride,
                 float* acc_rj, float* acc_jr) {
  for (int64_t o0 = 0; o0 < p.Mg; o0 += kOutTile) {
    const int64_t no = Min(kOutTile, p.Mg - o0);
    std::memset(acc_rj, 0, sizeof(float) * R * kOutTile);
    for (int64_t c = 0; c < p.C; ++c) {
      const float* tc = p.tf + (g * p.C + c) * p.K * p.Mg + o0;
      const uint8_t* cc = codes + c * stride;
      for (int r = 0; r < R; ++r) {
        const float* row = tc + static_cast<int64_t>(cc[r]) * p.Mg;
        float* a = acc_rj + r * kOutTile;
        for (int64_t j = 0; j < no; ++j) a[j] += row[j];
      }
    }
    for (int64_t j = 0; j < no; ++j) {
      for (int r = 0; r < R; ++r) acc_jr[j * R + r] = acc_rj[r * kOutTile + j];
    }
    Store(p, y, g, o0, no, op0, acc_jr, false);
  }
}

// 8-bit tables, any kp: scalar lookups into 32-bit sums (exact: C <= 2^16 codebooks).
void LookupBytesScalar(const Plan& p, float* y, int64_t g, int64_t op0, const uint8_t* codes, int64_t stride,
                       float* acc) {
  uint32_t sums[R];
  for (int64_t o0 = 0; o0 < p.Mg; o0 += kOutTile) {
    const int64_t no = Min(kOutTile, p.Mg - o0);
    for (int64_t j = 0; j < no; ++j) {
      for (int r = 0; r < R; ++r) sums[r] = 0;
      for (int64_t c = 0; c < p.C; ++c) {
        const uint8_t* tb = p.tq + ((g * p.C + c) * p.Mg + o0 + j) * p.kp;
        const uint8_t* cc = codes + c * stride;
        for (int r = 0; r < R; ++r) sums[r] += tb[cc[r]];
      }
      for (int r = 0; r < R; ++r) acc[j * R + r] = static_cast<float>(sums[r]);
    }
    Store(p, y, g, o0, no, op0, acc, true);
  }
}

#if defined(__AVX512BW__) && LUT_ROWS == 64
constexpr int kNo = 8;  // outputs per register block: 16 accumulators of 32 zmm
template <int NO>
void LookupBytesBlock(const Plan& p, int64_t g, int64_t o0, const uint8_t* codes, int64_t stride, float* acc) {
  // Interleave lo (even rows) and hi (odd rows) back into row order.
  alignas(64) static const uint16_t kFirst[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                                   8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  alignas(64) static const uint16_t kSecond[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                                                    24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
  const __m512i first = _mm512_load_si512(kFirst), second = _mm512_load_si512(kSecond);
  for (int64_t c0 = 0; c0 < p.C; c0 += kFlushEvery) {
    const int64_t c1 = Min(p.C, c0 + kFlushEvery);
    __m512i lo[NO], hi[NO];
    for (int j = 0; j < NO; ++j) lo[j] = hi[j] = _mm512_setzero_si512();
    for (int64_t c = c0; c < c1; ++c) {
      const __m512i code = _mm512_loadu_si512(codes + c * stride);
      const uint8_t* tb = p.tq + ((g * p.C + c) * p.Mg + o0) * 16;
      for (int j = 0; j < NO; ++j) {
        const __m512i tbl = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tb + 16 * j)));
        const __m512i v = _mm512_shuffle_epi8(tbl, code);
        lo[j] = _mm512_add_epi16(lo[j], v);  // even + 256 * odd rows, mod 2^16
        hi[j] = _mm512_add_epi16(hi[j], _mm512_srli_epi16(v, 8));
      }
    }
    for (int j = 0; j < NO; ++j) {
      // even rows: (words - 256 * odd) mod 2^16, exact because their sum is < 2^16
      lo[j] = _mm512_sub_epi16(lo[j], _mm512_slli_epi16(hi[j], 8));
      const __m512i a = _mm512_permutex2var_epi16(lo[j], first, hi[j]);   // rows 0..31
      const __m512i b = _mm512_permutex2var_epi16(lo[j], second, hi[j]);  // rows 32..63
      float* dst = acc + j * R;
      const __m512i parts[4] = {_mm512_cvtepu16_epi32(_mm512_castsi512_si256(a)),
                                _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(a, 1)),
                                _mm512_cvtepu16_epi32(_mm512_castsi512_si256(b)),
                                _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(b, 1))};
      for (int q = 0; q < 4; ++q) {
        const __m512 f = _mm512_cvtepi32_ps(parts[q]);
        _mm512_storeu_ps(dst + 16 * q, c0 == 0 ? f : _mm512_add_ps(_mm512_loadu_ps(dst + 16 * q), f));
      }
    }
  }
}
#define LUT_HAVE_SIMD_BYTES 1
#elif defined(__AVX2__) && LUT_ROWS == 32
constexpr int kNo = 4;  // outputs per register block: 8 accumulators of 16 ymm
template <int NO>
void LookupBytesBlock(const Plan& p, int64_t g, int64_t o0, const uint8_t* codes, int64_t stride, float* acc) {
  for (int64_t c0 = 0; c0 < p.C; c0 += kFlushEvery) {
    const int64_t c1 = Min(p.C, c0 + kFlushEvery);
    __m256i lo[NO], hi[NO];
    for (int j = 0; j < NO; ++j) lo[j] = hi[j] = _mm256_setzero_si256();
    for (int64_t c = c0; c < c1; ++c) {
      const __m256i code = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + c * stride));
      const uint8_t* tb = p.tq + ((g * p.C + c) * p.Mg + o0) * 16;
      for (int j = 0; j < NO; ++j) {
        const __m256i tbl = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tb + 16 * j)));
        const __m256i v = _mm256_shuffle_epi8(tbl, code);
        lo[j] = _mm256_add_epi16(lo[j], v);  // even + 256 * odd rows, mod 2^16
        hi[j] = _mm256_add_epi16(hi[j], _mm256_srli_epi16(v, 8));
      }
    }
    for (int j = 0; j < NO; ++j) {
      lo[j] = _mm256_sub_epi16(lo[j], _mm256_slli_epi16(hi[j], 8));  // even rows, exact (sum < 2^16)
      // lane i of lo/hi = rows 2i / 2i+1; unpack gives rows 0-7 | 16-23 and 8-15 | 24-31.
      const __m256i a = _mm256_unpacklo_epi16(lo[j], hi[j]);
      const __m256i b = _mm256_unpackhi_epi16(lo[j], hi[j]);
      float* dst = acc + j * R;
      const __m256i parts[4] = {_mm256_cvtepu16_epi32(_mm256_castsi256_si128(a)),
                                _mm256_cvtepu16_epi32(_mm256_castsi256_si128(b)),
                                _mm256_cvtepu16_epi32(_mm256_extracti128_si256(a, 1)),
                                _mm256_cvtepu16_epi32(_mm256_extracti128_si256(b, 1))};
      for (int q = 0; q < 4; ++q) {
        const __m256 f = _mm256_cvtepi32_ps(parts[q]);
        _mm256_storeu_ps(dst + 8 * q, c0 == 0 ? f : _mm256_add_ps(_mm256_loadu_ps(dst + 8 * q), f));
      }
    }
  }
}
#define LUT_HAVE_SIMD_BYTES 1
#endif

void LookupBytes(const Plan& p, float* y, int64_t g, int64_t op0, const uint8_t* codes, int64_t stride,
                 float* acc) {
#if defined(LUT_HAVE_SIMD_BYTES)
  if (p.kp == 16) {
    int64_t o0 = 0;
    for (; o0 + kNo <= p.Mg; o0 += kNo) {
      LookupBytesBlock<kNo>(p, g, o0, codes, stride, acc);
      Store(p, y, g, o0, kNo, op0, acc, true);
    }
    for (; o0 < p.Mg; ++o0) {
      LookupBytesBlock<1>(p, g, o0, codes, stride, acc);
      Store(p, y, g, o0, 1, op0, acc, true);
    }
    return;
  }
#endif
  LookupBytesScalar(p, y, g, op0, codes, stride, acc);
}

// work: WorkFloats(p, b1 - b0) floats (lut_conv_kernels.h), 64-byte aligned.
void Run(const Plan& p, float* y, int64_t g, int64_t b0, int64_t b1, float* work) {
  const int64_t stride = (b1 - b0) * R;
  float* acc = work;
  float* acc2 = acc + R * kOutTile;
  float* sub = acc2 + R * kOutTile;
  uint8_t* codes = reinterpret_cast<uint8_t*>(sub + (p.tree ? 0 : p.S * R));
  float best[R];
  if (p.tree) EncodeTree(p, g, b0 * R, b1 * R, codes, stride);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t op0 = b * R;
    uint8_t* cb = codes + (b - b0) * R;
    if (!p.tree) EncodeExhaustive(p, g, op0, cb, stride, sub, best);
    if (p.tf != nullptr) {
      LookupFloat(p, y, g, op0, cb, stride, acc, acc2);
    } else {
      LookupBytes(p, y, g, op0, cb, stride, acc);
    }
  }
}

}  // namespace

const Kernels kTable = {LUT_NAME, R, &Run};

}  // namespace LUT_NS
}  // namespace lut
}  // namespace onnxcompress
