// Inner kernels of QLinearBasisMaps (u8 activations, s8 weights, exact int32
// sums), as a table of function pointers. The template code
// (qlinear_basis_maps_kernels_impl.h) is compiled once per instruction set in
// its own translation unit (qlinear_basis_maps_kernels_{avx512,avx2,generic}.cc)
// and picked at kernel creation.
#pragma once

#include <cstdint>

namespace onnxcompress {
namespace qbm {

// Requantization of one output map or channel vector: ONNX Runtime's QLinearConv
// arithmetic (float(sum) * scale, clamp, round half to even, + zero point).
struct Requant {
  const float* scale;  // per output channel
  int32_t zero_point;
};

// Float sums of u8 x s8 products are exact while taps * 255 * 128 < 2^24.
inline constexpr int64_t kExactFloatTaps = ((int64_t{1} << 24) - 1) / (255 * 128);

struct Kernels {
  const char* name;
  int64_t lanes;  // int32 lanes per vector

  // Channels first, one plane. `src` is an input channel minus its zero point as
  // int32, zero-padded and split by stride phase, so that position q reads, for
  // tap t, src[tap_off[t] + q]. acc[q] = bias + sum_t w[t] * src[tap_off[t] + q]
  // for q in [0, n), n a multiple of lanes.
  void (*plane)(const int32_t* src, const int64_t* tap_off, const int32_t* w, int64_t taps, int32_t bias, int64_t n,
                int32_t* acc);
  // y[oy*ow + ox] = requantized acc[oy*wq + ox] for oy < oh, ox < ow (one output
  // channel, scale[0]). Reads acc up to (oh-1)*wq + ow rounded up to lanes;
  // writes whole vectors where they end within the plane (oh*ow bytes; bytes past
  // a row's end are rewritten by the next row), single bytes beyond.
  void (*requantize_plane)(const int32_t* acc, int64_t wq, int64_t oh, int64_t ow, float scale, int32_t zero_point,
                           uint8_t* y);

  // Channels last: out[i] = x[i] - zero_point as float, i < n (exact).
  void (*shifted)(const uint8_t* x, int64_t n, int32_t zero_point, float* out);
  // Channels last, one output pixel: the `ntaps` taps inside the input, tap
  // tap_index[i] reading the C channels at x + offsets[i] (x: the input minus its
  // zero point, from `shifted`). w is [taps][d*C], integers held as floats, bias
  // [d*C], scales [d*C]. Writes y[m*C + c] for m < d, c < C. Sums are taken in
  // float: only for taps <= kExactFloatTaps.
  void (*pixel)(const float* x, const int64_t* offsets, const int64_t* tap_index, int64_t ntaps, int64_t C,
                int64_t d, const float* w, const int32_t* bias, Requant rq, uint8_t* y);
};

// nullptr when the library was built without that instruction set.
const Kernels* KernelsAvx512();
const Kernels* KernelsAvx2();
const Kernels* KernelsGeneric();

}  // namespace qbm
}  // namespace onnxcompress
