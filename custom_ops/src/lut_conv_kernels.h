// Inner kernels of LutConv (lookup-table convolution), as a table of function
// pointers. The same template code (lut_conv_kernels_impl.h) is compiled once
// per instruction set in its own translation unit
// (lut_conv_kernels_{avx512,avx2,generic}.cc) and picked at kernel creation.
//
// Data layouts (one image, one group g of G):
//   padded input  xp[Cin][Hp][Wp]   NCHW with a zero border; every index the
//                 kernels form is base[op] + off with off a column offset
//                 below, and is < Cin*Hp*Wp (the op checks this per call).
//   base[op]      padded index of tap (0, 0) of output pixel op, channel 0
//                 (int32; entries past the plane, up to the last block plus
//                 64, repeat the last pixel, so whole vectors can be read)
//   col_off[g][d] offset of im2col column d = (c, ky, kx) of group g
//   split_off[g][c][l]  col_off of the tree's split column of codebook c, level l
//   thr[g][c][16] tree thresholds (node 2^l - 1 + b at level l; entry 15 unused)
//   protos[g][c][K][S], pnorm[g][c][K]   exhaustive prototypes and squared norms
//   tf[g][c][K][Mg]   fp32 tables
//   tq[g][c][Mg][kp]  8-bit tables, kp = 16 when K <= 16 (entries >= K zero), else K
//   scale[G*Mg], bias[G*Mg]: y = scale * sum(tq) + bias (8-bit), y = sum(tf) + bias (fp32)
//   y[o * y_stride + op]  the output pixels of the band (op < plane)
#pragma once

#include <cstdint>

namespace onnxcompress {
namespace lut {

constexpr int64_t kOutTile = 64;  // outputs per accumulator tile

struct Plan {
  int64_t G = 1, D = 0, C = 0, K = 0, S = 0, Mg = 0;
  int64_t plane = 0, out_w = 0;     // output pixels of the band of rows computed, output width
  int64_t y_stride = 0;             // floats between output channels of y (the image's output plane)
  bool unit_stride_w = false;       // consecutive output pixels of a row read consecutive inputs
  const float* xp = nullptr;
  const int32_t* base = nullptr;    // [plane rounded up to the block size, + 64]
  const int32_t* col_off = nullptr; // [G][D]
  bool tree = true;
  const int32_t* split_off = nullptr;  // [G][C][4]
  const float* thr = nullptr;          // [G][C][16] (+16 floats of slack)
  const float* protos = nullptr;       // [G][C][K][S]
  const float* pnorm = nullptr;        // [G][C][K]
  const float* tf = nullptr;           // fp32 tables, or nullptr
  const uint8_t* tq = nullptr;         // 8-bit tables, or nullptr
  int64_t kp = 16;
  const float* scale = nullptr;
  const float* bias = nullptr;
  bool clamp = false;
  float lo = 0.0f, hi = 0.0f;
  // Residual Z laid out as the whole output y (y_base: its first float); the store of
  // y_base[i] adds residual[i] before the activation. nullptr: none.
  const float* residual = nullptr;
  const float* y_base = nullptr;
};

struct Kernels {
  const char* name;
  int rows;  // output pixels per block (codes per SIMD lookup)
  // Encodes and evaluates row blocks [b0, b1) of group g of one image into NCHW y;
  // `work` holds WorkFloats(p, rows, b1 - b0) floats, 64-byte aligned (taken
  // by the caller before its parallel region).
  void (*run)(const Plan& p, float* y, int64_t g, int64_t b0, int64_t b1, float* work);
};

// Floats of work buffer one call of run() over `blocks` row blocks of `rows`
// pixels needs: two accumulator tiles, the exhaustive encoder's sub-vectors,
// then the codes (bytes). Defined in lut_conv.cc, outside the ISA units.
int64_t WorkFloats(const Plan& p, int64_t rows, int64_t blocks);

// nullptr when the library was built without that instruction set.
const Kernels* KernelsAvx512();
const Kernels* KernelsAvx2();
const Kernels* KernelsGeneric();

}  // namespace lut
}  // namespace onnxcompress
