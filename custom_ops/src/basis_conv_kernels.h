// Inner kernels of BasisConv (PENNI basis-kernel convolution), as a table of
// function pointers. The template code (basis_conv_kernels_impl.h) is compiled
// once per instruction set in its own translation unit
// (basis_conv_kernels_{avx512,avx2,generic}.cc) and picked at kernel creation.
//
// Data layouts (one image):
//   planes     the input, zero-padded and split by stride phase, one plane per
//              input channel, `plane_stride` floats apart. Output position q
//              (q = oy*Wq + ox, ox < Wq, the columns ox >= OW are computed and
//              thrown away) reads, for tap t, planes[c*plane_stride + q + tap_off[t]].
//   T          basis-stage maps of one tile of `tile` consecutive positions:
//              T[row][tile], row = one active (input channel, basis) pair.
//   stage      coefficient-stage sums of one tile: stage[o][tile].
//   entries    the sparse coefficients of one channel block, by output row:
//              output o's entries are [starts[o], starts[o+1]); entry e adds
//              entries[e].val * T[entries[e].off .. + tile) (off: row * tile).
#pragma once

#include <cstdint>

namespace onnxcompress {
namespace basis {

struct Entry {
  uint32_t off;  // row of T times the tile
  float val;
};

struct Kernels {
  const char* name;
  int lanes;  // floats per vector
  int tile;   // output positions per tile (vectors of a tile x lanes)

  // T[r][0..tile) = sum_t bw[row_b[r]*taps + t] * planes[row_c[r]*plane_stride + q0 + tap_off[t] + ...]
  // for r in [0, nrows). Rows with the same channel next to each other share loads.
  void (*basis)(const float* planes, int64_t plane_stride, int64_t q0, const int32_t* row_c, const int32_t* row_b,
                int64_t nrows, const float* bw, const int64_t* tap_off, int64_t taps, float* T);
  // stage[o][0..tile) (+)= sum over o's entries of val * T[off ...], o in [0, nout);
  // first: start from zero instead of adding to stage.
  void (*coef)(const float* T, const uint32_t* starts, const Entry* entries, int64_t nout, float* stage, bool first);
  // y[o*out_plane + oy*OW + ox] = act(stage[o][q - q0] + bias[o] (+ z[same index])) for the positions
  // q = oy*Wq + ox in [q0, min(q0 + tile, Q)) with ox < OW; act clamps to [lo, hi] when clamp; z, the
  // residual laid out as y, or nullptr.
  void (*epilogue)(const float* stage, int64_t nout, const float* bias, bool clamp, float lo, float hi, float* y,
                   const float* z, int64_t out_plane, int64_t q0, int64_t Q, int64_t Wq, int64_t OW);
};

// nullptr when the library was built without that instruction set.
const Kernels* KernelsAvx512();
const Kernels* KernelsAvx2();
const Kernels* KernelsGeneric();

}  // namespace basis
}  // namespace onnxcompress
