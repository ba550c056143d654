// Template code of the BasisConv kernels; included by exactly one translation
// unit per instruction set, which first defines:
//   BASIS_NS     namespace of this instantiation (keeps the builds apart)
//   BASIS_NAME   name reported in the table
//   BASIS_LANES  floats per vector
//   BASIS_NV     vectors per tile (tile = BASIS_LANES * BASIS_NV positions)
//   BASIS_NB     basis rows of one channel computed together (1..6)
// GCC/Clang vector extensions only; nothing from the standard library that
// could be instantiated out of line.
#include <cstdint>

#include "basis_conv_kernels.h"

namespace onnxcompress {
namespace basis {
namespace BASIS_NS {
namespace {

constexpr int L = BASIS_LANES;
constexpr int NV = BASIS_NV;
constexpr int TILE = L * NV;
static_assert(BASIS_NB >= 1 && BASIS_NB <= 6, "1..6 basis rows at a time");

typedef float V __attribute__((vector_size(L * 4), aligned(4), may_alias));

inline V Load(const float* p) { return *reinterpret_cast<const V*>(p); }
inline void Store(float* p, V v) { *reinterpret_cast<V*>(p) = v; }
inline V Splat(float s) { return s - V{}; }

// NB basis rows of the same input channel: the tap loads are shared.
template <int NB>
inline void BasisRows(const float* src, const float* const* w, const int64_t* tap_off, int64_t taps,
                      float* const* out) {
  V a[NB][NV];
  for (int b = 0; b < NB; ++b)
    for (int v = 0; v < NV; ++v) a[b][v] = V{};
  for (int64_t t = 0; t < taps; ++t) {
    const float* s = src + tap_off[t];
    V in[NV];
    for (int v = 0; v < NV; ++v) in[v] = Load(s + v * L);
    for (int b = 0; b < NB; ++b) {
      const V x = Splat(w[b][t]);
      for (int v = 0; v < NV; ++v) a[b][v] += x * in[v];
    }
  }
  for (int b = 0; b < NB; ++b)
    for (int v = 0; v < NV; ++v) Store(out[b] + v * L, a[b][v]);
}

void Basis(const float* planes, int64_t plane_stride, int64_t q0, const int32_t* row_c, const int32_t* row_b,
           int64_t nrows, const float* bw, const int64_t* tap_off, int64_t taps, float* T) {
  int64_t r = 0;
  while (r < nrows) {
    // the run of rows of this channel, in chunks of at most BASIS_NB (balanced)
    int64_t n = 1;
    while (r + n < nrows && row_c[r + n] == row_c[r]) ++n;
    const float* src = planes + row_c[r] * plane_stride + q0;
    const int64_t chunks = (n + BASIS_NB - 1) / BASIS_NB;
    for (int64_t ch = 0; ch < chunks; ++ch) {
      const int64_t r0 = r + n * ch / chunks, r1 = r + n * (ch + 1) / chunks;
      const float* w[BASIS_NB];
      float* out[BASIS_NB];
      for (int64_t i = r0; i < r1; ++i) {
        w[i - r0] = bw + row_b[i] * taps;
        out[i - r0] = T + i * TILE;
      }
      switch (r1 - r0) {
#define BASIS_CASE(k) \
  case k:             \
    if (k <= BASIS_NB) BasisRows<(k <= BASIS_NB ? k : 1)>(src, w, tap_off, taps, out); \
    break;
        BASIS_CASE(1)
        BASIS_CASE(2)
        BASIS_CASE(3)
        BASIS_CASE(4)
        BASIS_CASE(5)
        BASIS_CASE(6)
#undef BASIS_CASE
        default:
          break;
      }
    }
    r += n;
  }
}

void Coef(const float* T, const uint32_t* starts, const Entry* entries, int64_t nout, float* stage, bool first) {
  int64_t o = 0;
  // Two output rows at a time: 2*NV independent accumulation chains.
  for (; o + 1 < nout; o += 2) {
    float* s0 = stage + o * TILE;
    float* s1 = s0 + TILE;
    V a[NV], c[NV];
    for (int v = 0; v < NV; ++v) {
      a[v] = first ? V{} : Load(s0 + v * L);
      c[v] = first ? V{} : Load(s1 + v * L);
    }
    const Entry* e0 = entries + starts[o];
    const Entry* e1 = entries + starts[o + 1];
    const Entry* end0 = e1;
    const Entry* end1 = entries + starts[o + 2];
    while (e0 < end0 && e1 < end1) {
      const Entry x0 = *e0++, x1 = *e1++;
      const V w0 = Splat(x0.val), w1 = Splat(x1.val);
      const float* p0 = T + x0.off;
      const float* p1 = T + x1.off;
      for (int v = 0; v < NV; ++v) {
        a[v] += w0 * Load(p0 + v * L);
        c[v] += w1 * Load(p1 + v * L);
      }
    }
    for (; e0 < end0; ++e0) {
      const V w0 = Splat(e0->val);
      const float* p0 = T + e0->off;
      for (int v = 0; v < NV; ++v) a[v] += w0 * Load(p0 + v * L);
    }
    for (; e1 < end1; ++e1) {
      const V w1 = Splat(e1->val);
      const float* p1 = T + e1->off;
      for (int v = 0; v < NV; ++v) c[v] += w1 * Load(p1 + v * L);
    }
    for (int v = 0; v < NV; ++v) {
      Store(s0 + v * L, a[v]);
      Store(s1 + v * L, c[v]);
    }
  }
  for (; o < nout; ++o) {
    float* s0 = stage + o * TILE;
    V a[NV];
    for (int v = 0; v < NV; ++v) a[v] = first ? V{} : Load(s0 + v * L);
    for (const Entry* e = entries + starts[o]; e < entries + starts[o + 1]; ++e) {
      const V w0 = Splat(e->val);
      const float* p0 = T + e->off;
      for (int v = 0; v < NV; ++v) a[v] += w0 * Load(p0 + v * L);
    }
    for (int v = 0; v < NV; ++v) Store(s0 + v * L, a[v]);
  }
}

inline V Clamp(V v, V lo, V hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

void Epilogue(const float* stage, int64_t nout, const float* bias, bool clamp, float lo, float hi, float* y,
              const float* z, int64_t out_plane, int64_t q0, int64_t Q, int64_t Wq, int64_t OW) {
  const int64_t q1 = q0 + TILE < Q ? q0 + TILE : Q;
  const V vlo = Splat(lo), vhi = Splat(hi);
  for (int64_t o = 0; o < nout; ++o) {
    const float* s = stage + o * TILE;
    float* yo = y + o * out_plane;
    const float bo = bias[o];
    const V vb = Splat(bo);
    for (int64_t oy = q0 / Wq; oy * Wq < q1; ++oy) {
      const int64_t a = q0 > oy * Wq ? q0 : oy * Wq;
      const int64_t e = q1 < oy * Wq + OW ? q1 : oy * Wq + OW;
      const float* src = s + (a - q0);
      float* dst = yo + oy * OW + (a - oy * Wq);
      const int64_t n = e - a;
      int64_t i = 0;
      if (z != nullptr) {  // the residual, then the activation (none: clamp to +-inf)
        const float* zd = z + (dst - y);
        const float l = clamp ? lo : -__builtin_inff(), h = clamp ? hi : __builtin_inff();
        const V vl = Splat(l), vh = Splat(h);
        for (; i + L <= n; i += L) Store(dst + i, Clamp(Load(src + i) + vb + Load(zd + i), vl, vh));
        for (; i < n; ++i) {
          const float v = src[i] + bo + zd[i];
          dst[i] = v < l ? l : (v > h ? h : v);
        }
      } else if (clamp) {
        for (; i + L <= n; i += L) Store(dst + i, Clamp(Load(src + i) + vb, vlo, vhi));
        for (; i < n; ++i) {
          const float v = src[i] + bo;
          dst[i] = v < lo ? lo : (v > hi ? hi : v);
        }
      } else {
        for (; i + L <= n; i += L) Store(dst + i, Load(src + i) + vb);
        for (; i < n; ++i) dst[i] = src[i] + bo;
      }
    }
  }
}

}  // namespace

extern const Kernels kTable;
const Kernels kTable = {BASIS_NAME, L, TILE, Basis, Coef, Epilogue};

}  // namespace BASIS_NS
}  // namespace basis
}  // namespace onnxcompress
