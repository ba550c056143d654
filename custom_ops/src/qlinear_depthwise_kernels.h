// Inner kernels of QLinearDepthwiseConv (u8 activations, s8 weights, int32
// sums), as a table of function pointers. The template code
// (qlinear_depthwise_kernels_impl.h) is compiled once per instruction set in
// its own translation unit (qlinear_depthwise_kernels_{avx512,avx2,generic}.cc)
// and picked at kernel creation.
//
// Data layout (one input channel): `src` is the channel minus its zero point
// as int16, zero-padded and split by column stride phase, so that output
// column ox of one output row reads, for tap t, src[tap_off[t] + ox]
// (contiguous in ox for every stride).
#pragma once

#include <cstdint>

namespace onnxcompress {
namespace qdw {

struct Kernels {
  const char* name;
  // acc[ox] = bias + sum_t w[t] * src[tap_off[t] + ox] for ox in [0, ow): exact int32 sums.
  void (*row)(const int16_t* src, const int64_t* tap_off, const int32_t* w, int64_t taps, int32_t bias, int64_t ow,
              int32_t* acc);
  // y[i] = clamp(round_half_even(acc[i] * scale) + zero_point, 0, 255) for i in [0, n), with
  // the float arithmetic of ONNX Runtime's QLinearConv requantization.
  void (*requantize)(const int32_t* acc, int64_t n, float scale, int32_t zero_point, uint8_t* y);
};

// nullptr when the library was built without that instruction set.
const Kernels* KernelsAvx512();
const Kernels* KernelsAvx2();
const Kernels* KernelsGeneric();

}  // namespace qdw
}  // namespace onnxcompress
