// Template code of the ClusteredSparseConv kernels; included by exactly one
// translation unit per instruction set, which first defines:
//   CLUSPA_NS     namespace of this instantiation (keeps the builds apart)
//   CLUSPA_NAME   name reported in the table
//   CLUSPA_LANES  floats per vector
//   CLUSPA_NV     vectors per block (P = LANES * NV wide pixels)
//   CLUSPA_FMA    1: the ISA has FMA (per-entry multiply-adds), 0: cluster sums
// GCC/Clang vector extensions only, nothing from the C++ standard library
// that could be instantiated out of line.
#include <cstdint>
#include <cstring>

#include "clustered_sparse_conv_kernels.h"

namespace onnxcompress {
namespace cluspa {
namespace CLUSPA_NS {
namespace {

constexpr int L = CLUSPA_LANES;
constexpr int NV = CLUSPA_NV;
constexpr int P = L * NV;
static_assert(NV >= 1 && NV <= 8, "1..8 vectors per block");

typedef float V __attribute__((vector_size(L * 4), aligned(4), may_alias));

inline V Load(const float* p) { return *reinterpret_cast<const V*>(p); }
inline void Store(float* p, V v) { *reinterpret_cast<V*>(p) = v; }
inline V Splat(float s) { return s - V{}; }
inline int64_t Min(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t Max(int64_t a, int64_t b) { return a > b ? a : b; }

void BuildPhases(const Geometry& g, const float* x, int64_t c0, int64_t c1, float* xq) {
  const int64_t plane = g.Hq * g.Wq, in_plane = g.H * g.W;
  for (int64_t c = c0; c < c1; ++c) {
    const float* src = x + c * in_plane;
    for (int64_t py = 0; py < g.sh; ++py) {
      for (int64_t px = 0; px < g.sw; ++px) {
        float* dst = xq + ((c * g.sh + py) * g.sw + px) * plane;
        // plane column j holds input column j*sw + px - pad_left: valid for j in [lo, hi)
        const int64_t base = px - g.pad_left;
        const int64_t lo = base >= 0 ? 0 : (-base + g.sw - 1) / g.sw;
        const int64_t hi = Max(lo, Min(g.Wq, (g.W - base + g.sw - 1) / g.sw));
        for (int64_t i = 0; i < g.Hq; ++i) {
          float* d = dst + i * g.Wq;
          const int64_t iy = i * g.sh + py - g.pad_top;
          if (iy < 0 || iy >= g.H || lo >= hi) {
            for (int64_t j = 0; j < g.Wq; ++j) d[j] = 0.0f;
            continue;
          }
          const float* row = src + iy * g.W + base;
          for (int64_t j = 0; j < lo; ++j) d[j] = 0.0f;
          if (g.sw == 1) {
            for (int64_t j = lo; j < hi; ++j) d[j] = row[j];
          } else {
            for (int64_t j = lo; j < hi; ++j) d[j] = row[j * g.sw];
          }
          for (int64_t j = hi; j < g.Wq; ++j) d[j] = 0.0f;
        }
      }
    }
  }
}

// Sum of the rows at offs[e0..e1): two independent sets of NV accumulators
// so that the adds are not latency bound.
inline void SumRows(const float* xq, const uint32_t* offs, int64_t e0, int64_t e1, V* out) {
  V a[NV], b[NV];
#pragma GCC unroll 8
  for (int j = 0; j < NV; ++j) a[j] = b[j] = V{};
  int64_t e = e0;
  for (; e + 2 <= e1; e += 2) {
    const float* r0 = xq + offs[e];
    const float* r1 = xq + offs[e + 1];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) {
      a[j] += Load(r0 + j * L);
      b[j] += Load(r1 + j * L);
    }
  }
  if (e < e1) {
    const float* r0 = xq + offs[e];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) a[j] += Load(r0 + j * L);
  }
#pragma GCC unroll 8
  for (int j = 0; j < NV; ++j) out[j] = a[j] + b[j];
}

// Per-entry multiply-adds of entries [e, e1) into acc (the ISA has FMA, so
// a multiply-add costs what an add costs, and there is no branch per
// cluster); two sets of accumulators hide the FMA latency.
inline void EntriesFma(const Program& prog, const float* base, int64_t e, int64_t e1, V* acc) {
  V a[NV], b[NV];
#pragma GCC unroll 8
  for (int j = 0; j < NV; ++j) {
    a[j] = acc[j];
    b[j] = V{};
  }
  const uint32_t* offs = prog.offsets;
  const float* vals = prog.entry_value;
  for (; e + 2 <= e1; e += 2) {
    const float* r0 = base + offs[e];
    const float* r1 = base + offs[e + 1];
    const V v0 = Splat(vals[e]), v1 = Splat(vals[e + 1]);
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) {
      a[j] += v0 * Load(r0 + j * L);
      b[j] += v1 * Load(r1 + j * L);
    }
  }
  if (e < e1) {
    const float* r0 = base + offs[e];
    const V v0 = Splat(vals[e]);
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) a[j] += v0 * Load(r0 + j * L);
  }
#pragma GCC unroll 8
  for (int j = 0; j < NV; ++j) acc[j] = a[j] + b[j];
}

// Cluster sums: per cluster, add the rows, then one multiply (no FMA: this
// halves the arithmetic).
inline void ChannelClusterSums(const Program& prog, const float* base, int64_t o, V* acc) {
#pragma GCC unroll 8
  for (int j = 0; j < NV; ++j) acc[j] = V{};
  for (int64_t s = prog.seg_begin[o]; s < prog.seg_begin[o + 1]; ++s) {
    V sum[NV];
    SumRows(base, prog.offsets, prog.seg_first[s], prog.seg_first[s + 1], sum);
    const V v = Splat(prog.seg_value[s]);
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) acc[j] += v * sum[j];
  }
}

void Channels(const Geometry& g, const Program& prog, const float* xq, int64_t o0, int64_t o1, int64_t q0,
              float* y, float* tile) {
  const float lo = prog.clamp ? prog.lo : -__builtin_inff(), hi = prog.clamp ? prog.hi : __builtin_inff();
  const int64_t out_plane = g.OH * g.OW, q_end = Min(q0 + P, g.OH * g.Wq);
  const float* base = xq + q0;
  // Full rows of valid pixels straight into y when the wide grid is the output grid.
  const bool direct = g.Wq == g.OW && q_end - q0 == P;
  const bool fma = CLUSPA_FMA && prog.entry_value != nullptr;
  if (fma) {
    // Column blocks outermost: partial sums of every channel in `tile`.
    const int64_t nb1 = prog.nblocks + 1;
    for (int64_t o = o0; o < o1; ++o) {
      V acc[NV];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[j] = V{};
      EntriesFma(prog, base, prog.entry_first[o * nb1], prog.entry_first[o * nb1 + 1], acc);
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) Store(tile + (o - o0) * P + j * L, acc[j]);
    }
    for (int64_t blk = 1; blk < prog.nblocks; ++blk) {
      for (int64_t o = o0; o < o1; ++o) {
        const int64_t e0 = prog.entry_first[o * nb1 + blk], e1 = prog.entry_first[o * nb1 + blk + 1];
        if (e0 == e1) continue;
        float* t = tile + (o - o0) * P;
        V acc[NV];
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) acc[j] = Load(t + j * L);
        EntriesFma(prog, base, e0, e1, acc);
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) Store(t + j * L, acc[j]);
      }
    }
  }
  alignas(64) float tmp[P];
  for (int64_t o = o0; o < o1; ++o) {
    V acc[NV];
    if (fma) {
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[j] = Load(tile + (o - o0) * P + j * L);
    } else {
      ChannelClusterSums(prog, base, o, acc);
    }
    const V b = Splat(prog.bias[o]);
    float* out = y + o * out_plane;
    float* dst = direct ? out + q0 : tmp;
    // The residual: added here when the block goes straight to y, else in the row copy
    // below, which then applies the activation.
    const float* zo = prog.residual != nullptr ? prog.residual + (out - prog.y_base) : nullptr;
    const bool late = zo != nullptr && !direct;
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) {
      V v = acc[j] + b;
      if (direct && zo != nullptr) v += Load(zo + q0 + j * L);
      if (prog.clamp && !late) {  // NaN passes through, as through ORT's Relu/Clip
        v = v < Splat(lo) ? Splat(lo) : v;
        v = v > Splat(hi) ? Splat(hi) : v;
      }
      Store(dst + j * L, v);
    }
    if (direct) continue;
    // Valid pixels of the block, one output row segment at a time.
    for (int64_t q = q0; q < q_end;) {
      const int64_t oy = q / g.Wq, ox = q - oy * g.Wq;
      const int64_t row_end = Min(q_end, oy * g.Wq + g.Wq);
      if (ox < g.OW) {
        const int64_t n = Min(row_end, oy * g.Wq + g.OW) - q;
        const float* t = tmp + (q - q0);
        float* d = out + oy * g.OW + ox;
        if (late) {
          const float* z = zo + oy * g.OW + ox;
          for (int64_t i = 0; i < n; ++i) {
            const float v = t[i] + z[i];
            d[i] = v < lo ? lo : (v > hi ? hi : v);
          }
        } else {
          for (int64_t i = 0; i < n; ++i) d[i] = t[i];
        }
      }
      q = row_end;
    }
  }
}

}  // namespace

const Kernels kTable = {CLUSPA_NAME, P, CLUSPA_FMA != 0, &BuildPhases, &Channels};

}  // namespace CLUSPA_NS
}  // namespace cluspa
}  // namespace onnxcompress
