// Inner kernels of ClusteredSparseConv, as a table of function pointers. The
// same template code (clustered_sparse_conv_kernels_impl.h) is compiled once
// per instruction set in its own translation unit
// (clustered_sparse_conv_kernels_{avx512,avx2,generic}.cc) and picked at
// kernel creation (ONNXCOMPRESS_ISA forces one).
//
// No im2col. The input of one image is copied once into stride phases of
// its zero-padded form:
//   xq[c][py][px][Hq][Wq] = padded[c][i*sh + py][j*sw + px]   (i < Hq, j < Wq)
// so that for output pixel (oy, ox) and tap (ky, kx), with ky*dh = dy*sh + py
// and kx*dw = dx*sw + px, the input value is xq[c][py][px][oy + dy][ox + dx].
// Numbering output pixels q = oy*Wq + ox (a "wide" grid: columns ox >= OW
// are computed and thrown away), the values a weight (c, ky, kx) multiplies
// for the pixels q0 .. q0+P-1 are the contiguous floats
//   xq + off(c, ky, kx) + q0,  off = ((c*sh + py)*sw + px)*Hq*Wq + dy*Wq + dx.
// So an output channel's cluster sum over a block of P pixels is a sum of
// contiguous P-float rows at its weights' offsets, then one multiply.
//
//   program  per output channel o: segments seg_begin[o] .. seg_begin[o+1];
//            segment s has the shared value seg_value[s] and the entries
//            [seg_first[s], seg_first[s+1]) of `offsets` (off(...) above,
//            relative to the first plane of o's group).
// The op sizes xq with P + Wq floats of slack so that every read of a block
// stays inside the buffer (lanes of thrown-away pixels may read neighbours).
#pragma once

#include <cstdint>

namespace onnxcompress {
namespace cluspa {

struct Geometry {
  int64_t C = 0, H = 0, W = 0;      // input channels and size
  int64_t OH = 0, OW = 0;
  int64_t sh = 1, sw = 1;           // strides = number of phases per axis
  int64_t Hq = 0, Wq = 0;           // size of one phase plane
  int64_t pad_top = 0, pad_left = 0;
};

struct Program {
  const int64_t* seg_begin = nullptr;   // [M + 1]
  const int64_t* seg_first = nullptr;   // [segments + 1]
  const float* seg_value = nullptr;     // [segments]
  const uint32_t* offsets = nullptr;    // [nnz]
  // Kernels with per_entry_fma: the entries of each channel sorted by column,
  // cut into column blocks (whole input channels, a few KiB of input rows
  // each) so that the rows a block reads stay in L1 while every output
  // channel of the chunk visits them: channel o's entries of block b are
  // [entry_first[o*(nblocks+1) + b], entry_first[o*(nblocks+1) + b + 1]).
  const float* entry_value = nullptr;   // [nnz] each entry's shared value
  const int64_t* entry_first = nullptr; // [M * (nblocks + 1)]
  int64_t nblocks = 0;
  const float* bias = nullptr;          // [M]
  bool clamp = false;                   // fused activation: clamp to [lo, hi]
  float lo = 0.0f, hi = 0.0f;
  // Residual Z laid out as the whole output y (y_base: its first float); the store of
  // y_base[i] adds residual[i] before the activation. nullptr: none.
  const float* residual = nullptr;
  const float* y_base = nullptr;
};

struct Kernels {
  const char* name;
  int block;  // P: pixels (of the wide grid) per block, a multiple of the vector width
  // true: the kernel does one multiply-add per entry (FMA costs what an add
  // costs) over the channel's whole list, reading entry_value; false: per
  // cluster, sum the rows, then one multiply.
  bool per_entry_fma;

  // Fills the phase planes of channels [c0, c1) of xq from one NCHW image x.
  void (*build_phases)(const Geometry& g, const float* x, int64_t c0, int64_t c1, float* xq);
  // Output channels [o0, o1) of one group, whose planes start at xq_group,
  // for wide pixels [q0, q0 + P) (q0 < OH*Wq): writes y[o*OH*OW + oy*OW + ox]
  // for the valid ones (ox < OW, oy < OH).
  // `tile` holds (o1 - o0) * P floats of partial sums (per_entry_fma only).
  void (*channels)(const Geometry& g, const Program& prog, const float* xq_group, int64_t o0, int64_t o1,
                   int64_t q0, float* y, float* tile);
};

// nullptr when the library was built without that instruction set.
const Kernels* KernelsAvx512();
const Kernels* KernelsAvx2();
const Kernels* KernelsGeneric();

}  // namespace cluspa
}  // namespace onnxcompress
