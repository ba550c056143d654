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

// Float sums of u8 x s8 products that start from a bias are exact while every partial sum is
// an integer below 2^24 in magnitude: |bias| + taps * 255 * 128 < 2^24 (kernels of up to 514
// taps with a zero bias).
inline constexpr bool FloatSumsExact(int64_t taps, int64_t max_abs_bias) {
  return taps <= ((int64_t{1} << 24) - 1) / (255 * 128) && max_abs_bias < (int64_t{1} << 24) - taps * 255 * 128;
}

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
  // Channels last, `n` output pixels of one row that read the same taps: pixel p
  // reads its i-th tap at x + p * x_step + offsets[i] (x: the input minus its zero
  // point, from `shifted`), whose weights are w[w_offsets[i] + o] for output o
  // (w_offsets[i] = the tap's index in the kernel times d*C), and writes
  // y[p*d*C + m*C + c] for m < d, c < C. ntaps taps (those inside the input; n = 1
  // for a pixel at the border), w [taps][d*C] and bias [d*C], integers held as
  // floats, scales [d*C]. Sums are taken in float from the bias: only where
  // FloatSumsExact.
  void (*pixels)(const float* x, int64_t x_step, int64_t n, const int64_t* offsets, const int64_t* w_offsets,
                 int64_t ntaps, int64_t C, int64_t d, const float* w, const float* bias, Requant rq, uint8_t* y);
};

// Channels last with AVX-512 VNNI: four taps of one kernel row in each int32
// lane, so that vpdpbusd takes u8 x s8 products of a row of taps at once.
//
// A "row lane" buffer T of one input row iy holds, for output column ox < OW and
// input channel c < Cp (C rounded up to 16; lanes of c >= C are zero),
//   T[ox*Cp + c] = bytes (x[iy, ix(ox, 0), c], ..., x[iy, ix(ox, 3), c]),
//   ix(ox, kx) = ox*sw - pad_left + kx*dil_w,
// with x_zero_point where kx >= kW or ix is outside the input. Every product
// then reads a real input or the zero point, so the sum of w * x over all taps,
// minus x_zero_point * sum(w) (folded into the bias), is QLinearConv's sum.
struct RowKernels {
  const char* name;
  // T of one input row (W * C bytes, channels last); kw <= 4.
  void (*pack_row)(const uint8_t* x_row, int64_t W, int64_t C, int64_t OW, int64_t stride_w, int64_t pad_left,
                   int64_t dil_w, int64_t kw, uint8_t x_zero_point, uint32_t* t);
  // One output row: rows[ky] is T of the input row kernel row ky reads (a row of
  // x_zero_point bytes where it is outside the input). w is [kh][w_stride], lane o
  // holding the four s8 taps of kernel row ky of output o (zero past kW), with
  // w_stride >= M + 16; bias [M + 16] (B - x_zero_point * sum(W[o])), scale
  // [M + 16]. Writes y[ox*M + o] for ox < OW, o < M = d*C.
  void (*output_row)(const uint32_t* const* rows, int64_t kh, int64_t OW, int64_t C, int64_t M, const uint32_t* w,
                     int64_t w_stride, const int32_t* bias, const float* scale, int32_t y_zero_point, uint8_t* y);
};

// nullptr when the library was built without AVX-512 VNNI (call only where VnniSelected()).
const RowKernels* RowKernelsAvx512Vnni();

// nullptr when the library was built without that instruction set.
const Kernels* KernelsAvx512();
const Kernels* KernelsAvx2();
const Kernels* KernelsGeneric();

}  // namespace qbm
}  // namespace onnxcompress
