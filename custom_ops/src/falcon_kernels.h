// Inner kernels of SparseInputConv (FalCon-style activation-sparse conv), as a
// table of function pointers. The same template code (falcon_kernels_impl.h)
// is compiled once per instruction set in its own translation unit
// (falcon_kernels_{avx512,avx2,generic}.cc) and picked at kernel creation.
//
// Data layouts (one image at a time, one group g of G):
//   padded input  xp[Hp][Wp][C]   channel-last, zero border (dense path)
//   sparse lists  for padded row r, group g, channel block b: the non-zeros
//                 of pixels x = 0..Wp-1 one after the other, as value
//                 vals[i] and idx[i] = x*Cg + c (c: channel within the group);
//                 pixel x's run is [starts[s + x], starts[s + x + 1]) with
//                 s = ((r*G + g)*ncb + b)*(Wp + 1). Row r's entries start at
//                 r*row_stride. Because the runs of neighbouring pixels are
//                 contiguous, the kw taps of one kernel row (dilation 1) are a
//                 single run, and idx maps straight to a row of packed W.
//   packed W      wpack[G][mblocks][taps*Cg][MB]   k = tap*Cg + c, MB lanes
//                 (output channels, zero-padded past Mg)
// Output pixel op (flattened oy*OW+ox) reads padded pixel in_pix[op] +
// tap_pix[t] for tap t, i.e. row in_y[op] + ky*dil_h, column in_x[op] +
// kx*dil_w. The op builds these so that every index is inside the padded
// image.
#pragma once

#include <cstdint>

namespace onnxcompress {
namespace falcon {

// Everything the kernels need for one image; built by the op per call.
struct Plan {
  int64_t C = 0, H = 0, W = 0;        // input channels and size
  int64_t Hp = 0, Wp = 0;             // padded size
  int64_t pad_top = 0, pad_left = 0;  // where the input starts in the padded image
  int64_t G = 1, Cg = 0, Mg = 0;      // groups, channels per group
  int64_t taps = 0, out_plane = 0;
  const int64_t* in_pix = nullptr;    // [out_plane]
  const int64_t* tap_pix = nullptr;   // [taps]
  const int64_t* in_y = nullptr;      // [out_plane] padded row of tap (0, 0)
  const int64_t* in_x = nullptr;      // [out_plane] padded column of tap (0, 0)
  int64_t kh = 1, kw = 1, dil_h = 1, dil_w = 1;
  int64_t row_stride = 0;             // sparse entries reserved per padded row (>= Wp*C + 16)
  bool gather_ok = false;             // (C-1)*H*W fits in int32 (vector gathers)
  int64_t cb = 0, ncb = 0;            // sparse channel block size, blocks per group
  const float* wpack = nullptr;
  int64_t mblocks = 0;                // per group, of MB lanes each
  const float* bias = nullptr;        // [G*Mg]
  float threshold = 0.0f;
  bool clamp = false;                 // fused activation: clamp to [lo, hi]
  // Residual Z laid out as the whole output y (y_base: its first float); the store of
  // y_base[i] adds residual[i] before the activation. nullptr: none.
  const float* residual = nullptr;
  const float* y_base = nullptr;
  float lo = 0.0f, hi = 0.0f;
};

struct Kernels {
  const char* name;
  int lanes;         // floats per vector
  int mb;            // lanes of a packed W block (dense vectors x lanes)
  int dense_pixels;  // output pixels of a dense tile
  int sparse_mblocks;  // packed W blocks one sparse pass covers at most
  int sparse_chunk;    // output pixels of a sparse tile (max)

  // Number of values of x[0, n) that count as zero (|v| < threshold or v == 0).
  int64_t (*count_zeros)(const float* x, int64_t n, float threshold);
  // Fills padded rows [r0, r1) of xp from one NCHW image x (thresholded).
  void (*to_padded_nhwc)(const Plan& p, const float* x, float* xp, int64_t r0, int64_t r1);
  // Builds the sparse lists of padded rows [r0, r1) from one NCHW image x.
  void (*build_lists)(const Plan& p, const float* x, float* vals, uint32_t* idx, uint32_t* starts, int64_t r0,
                      int64_t r1);
  // Output pixels [op0, op1) of group g, packed W block mb, into NCHW y (one image).
  void (*dense)(const Plan& p, const float* xp, float* y, int64_t g, int64_t mb, int64_t op0, int64_t op1);
  // Output pixels [op0, op1) (at most sparse_chunk) of group g, packed W
  // blocks [mb0, mb0 + nmb) (nmb <= sparse_mblocks).
  void (*sparse)(const Plan& p, const float* vals, const uint32_t* idx, const uint32_t* starts, float* y,
                 int64_t g, int64_t mb0, int64_t nmb, int64_t op0, int64_t op1);
};

// nullptr when the library was built without that instruction set.
const Kernels* KernelsAvx512();
const Kernels* KernelsAvx2();
const Kernels* KernelsGeneric();

}  // namespace falcon
}  // namespace onnxcompress
