#include "basis_conv.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

namespace onnxcompress {

namespace {

constexpr int64_t kMaxBases = 4096;
// Bytes of the stage-1 tile buffer of one channel block: with the stage sums
// of the current outputs it stays in L1.
constexpr int64_t kBlockBytes = 24 * 1024;

}  // namespace

const basis::Kernels* SelectBasisKernels() {
  return PickKernels(basis::KernelsAvx512, basis::KernelsAvx2, basis::KernelsGeneric);
}

Ort::Status BasisConv::InferOutputShape(Ort::ShapeInferContext& ctx) {
  if (ctx.GetInputCount() < 3) return Ort::Status("BasisConv needs X, Bases and Coefs", ORT_INVALID_ARGUMENT);
  const auto bases = ctx.GetInputShape(1);
  const auto coefs = ctx.GetInputShape(2);
  if (bases.size() != 3 || coefs.size() != 2) {
    return Ort::Status("BasisConv: Bases must be [d, kH, kW] and Coefs [M, C/group*d]", ORT_INVALID_ARGUMENT);
  }
  for (const auto& v : {bases[0], bases[1], bases[2], coefs[0], coefs[1]}) {
    if (!v.IsInt() || v.AsInt() < 1) return Ort::Status{nullptr};  // unknown: leave the output shape open
  }
  const int64_t d = bases[0].AsInt();
  if (coefs[1].AsInt() % d != 0) {
    return Ort::Status("BasisConv: Coefs' second dimension must be a multiple of d", ORT_INVALID_ARGUMENT);
  }
  return InferConvOutputShape(ctx, {coefs[0].AsInt(), coefs[1].AsInt() / d, bases[1].AsInt(), bases[2].AsInt()});
}

BasisConv::BasisConv(const Ort::ConstKernelInfo& info) {
  Require(info.GetInputCount() >= 3 && info.GetInputCount() <= kInputCount,
          "expects 3 to 5 inputs (X, Bases, Coefs[, B[, Z]]), got ", info.GetInputCount());
  attrs_ = ConvAttributes::FromNode(info);
  epilogue_ = Epilogue::FromNode(info, 4);

  const ConstantTensor bt = RequireConstant(info, 1, "Bases");
  Require(bt.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "Bases must be float32");
  Require(bt.dims.size() == 3, "Bases must be 3-D [d, kH, kW], got rank ", bt.dims.size());
  d_ = bt.dims[0];
  kh_ = bt.dims[1];
  kw_ = bt.dims[2];
  Require(d_ >= 1 && d_ <= kMaxBases, "the number of bases d must be in [1, ", kMaxBases, "], got ", d_);

  const ConstantTensor ct = RequireConstant(info, 2, "Coefs");
  Require(ct.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "Coefs must be float32");
  Require(ct.dims.size() == 2, "Coefs must be 2-D [M, C/group*d], got rank ", ct.dims.size());
  out_channels_ = ct.dims[0];
  Require(ct.dims[1] >= d_ && ct.dims[1] % d_ == 0, "Coefs' second dimension (", ct.dims[1],
          ") must be a positive multiple of d (", d_, ")");
  in_per_group_ = ct.dims[1] / d_;
  attrs_.Validate(out_channels_, kh_, kw_);
  const int64_t G = attrs_.group, Mg = out_channels_ / G, Cg = in_per_group_, taps = CheckedMul(kh_, kw_, "Bases");
  Require(CheckedMul(G, Cg, "input channels") < (int64_t{1} << 31), "too many input channels");
  Require(ct.count < (int64_t{1} << 32) - 1, "Coefs has too many entries");

  has_bias_ = HasInput(info, 3);
  bias_.assign(static_cast<size_t>(out_channels_), 0.0f);
  if (has_bias_) {
    const ConstantTensor b = RequireConstant(info, 3, "B");
    Require(b.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "B must be float32");
    Require(b.dims.size() == 1 && b.dims[0] == out_channels_, "B must have shape [", out_channels_, "]");
    std::memcpy(bias_.data(), b.data, sizeof(float) * out_channels_);
  }
  bases_.assign(bt.As<float>(), bt.As<float>() + bt.count);
  coefs_.assign(ct.As<float>(), ct.As<float>() + ct.count);
  kernels_ = SelectBasisKernels();
  const int64_t tile = kernels_->tile;
  const int64_t block_rows = std::max<int64_t>(d_, kBlockBytes / (tile * 4));
  const int64_t cols = Cg * d_;

  // Active rows: (channel, basis) pairs some output of the group reads.
  group_row0_.assign(static_cast<size_t>(G + 1), 0);
  group_block0_.assign(static_cast<size_t>(G + 1), 0);
  std::vector<int64_t> local(static_cast<size_t>(cols));  // column -> row within its block, or -1
  for (int64_t g = 0; g < G; ++g) {
    group_row0_[g] = static_cast<int64_t>(row_c_.size());
    group_block0_[g] = static_cast<int64_t>(blocks_.size());
    std::vector<char> active(static_cast<size_t>(cols), 0);
    for (int64_t o = g * Mg; o < (g + 1) * Mg; ++o) {
      const float* row = coefs_.data() + o * cols;
      for (int64_t j = 0; j < cols; ++j) active[j] |= row[j] != 0.0f;
    }
    // Channel blocks of at most block_rows active rows (a channel is never split).
    int64_t c = 0;
    while (c < Cg) {
      Block blk;
      blk.group = g;
      blk.row0 = static_cast<int64_t>(row_c_.size());
      const int64_t c0 = c;
      for (; c < Cg; ++c) {
        int64_t n = 0;
        for (int64_t b = 0; b < d_; ++b) n += active[c * d_ + b];
        if (blk.rows > 0 && blk.rows + n > block_rows) break;
        for (int64_t b = 0; b < d_; ++b) {
          local[c * d_ + b] = -1;
          if (active[c * d_ + b]) {
            local[c * d_ + b] = blk.rows++;
            row_c_.push_back(static_cast<int32_t>(g * Cg + c));
            row_b_.push_back(static_cast<int32_t>(b));
          }
        }
      }
      if (blk.rows == 0) continue;  // only inactive channels left
      blk.starts = static_cast<int64_t>(starts_.size());
      for (int64_t o = g * Mg; o < (g + 1) * Mg; ++o) {
        starts_.push_back(static_cast<uint32_t>(entries_.size()));
        const float* row = coefs_.data() + o * cols;
        for (int64_t j = c0 * d_; j < c * d_; ++j) {
          if (row[j] != 0.0f) {
            entries_.push_back(basis::Entry{static_cast<uint32_t>(local[j] * tile), row[j]});
          }
        }
      }
      starts_.push_back(static_cast<uint32_t>(entries_.size()));
      max_block_rows_ = std::max(max_block_rows_, blk.rows);
      blocks_.push_back(blk);
    }
  }
  group_row0_[G] = static_cast<int64_t>(row_c_.size());
  group_block0_[G] = static_cast<int64_t>(blocks_.size());
  (void)taps;
  fallback_ = std::make_unique<OrtConv>(info, attrs_, has_bias_);
}

// ORT's Conv on the equivalent dense weights, then the fused activation.
void BasisConv::RunFallback(Ort::KernelContext& context, Ort::ConstValue& x, Ort::UnownedValue& y) {
  const int64_t taps = kh_ * kw_, cols = in_per_group_ * d_;
  std::call_once(dense_once_, [&] {
    const int64_t count = CheckedMul(out_channels_, in_per_group_, taps, "dense weights");
    Require(count <= kMaxFallbackWeights, "the dense weights for ORT's Conv fallback (", count,
            " values) are too large");
    std::vector<float> w(static_cast<size_t>(count));
    for (int64_t o = 0; o < out_channels_; ++o)
      for (int64_t c = 0; c < in_per_group_; ++c)
        for (int64_t b = 0; b < d_; ++b) {
          const float v = coefs_[o * cols + c * d_ + b];
          if (v == 0.0f) continue;
          float* dst = w.data() + (o * in_per_group_ + c) * taps;
          for (int64_t t = 0; t < taps; ++t) dst[t] += v * bases_[b * taps + t];
        }
    dense_weight_ = std::move(w);
  });
  const std::vector<int64_t> shape{out_channels_, in_per_group_, kh_, kw_};
  auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  Ort::Value w = Ort::Value::CreateTensor<float>(memory, dense_weight_.data(), dense_weight_.size(), shape.data(),
                                                 shape.size());
  Ort::ConstValue b = has_bias_ ? context.GetInput(3) : Ort::ConstValue{nullptr};
  fallback_->Run(context, x, w, b, y);
  epilogue_.FinishUnfused(context, y);
}


void BasisConv::Compute(Ort::KernelContext& context) {
  Ort::ConstValue x = context.GetInput(0);
  Require(x != nullptr && x.IsTensor(), "input X is missing");
  const auto x_info = x.GetTensorTypeAndShapeInfo();
  Require(x_info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "X must be float32");
  const ConvGeometry g = ResolveConvGeometry(attrs_, x_info.GetShape(), out_channels_, in_per_group_, kh_, kw_);
  Ort::UnownedValue y = context.GetOutput(0, g.OutputShape());
  if (g.batch == 0 || g.out_plane() == 0 || g.out_channels == 0) {
    epilogue_.Residual(context, y);  // a Z of another shape is an error even here
    return;
  }

  // Stride-phase planes (conv_geometry.h).
  const int64_t sh = g.stride_h, sw = g.stride_w;
  const PhasePlanes pp = PhasePlanes::Of(g);
  const int64_t Hq = pp.Hq, Wq = pp.Wq, phase = pp.phase, Q = pp.positions, max_off = pp.max_off;
  const std::vector<int64_t>& tap_off = pp.tap_off;
  const int64_t tile = kernels_->tile;
  const int64_t tiles = CeilDiv(Q, tile);
  const int64_t taps = g.taps();
  // Reads reach position tiles*tile - 1 + max_off of a plane (the last tile's
  // tail and the thrown-away columns included): the plane stride covers it.
  const int64_t plane_used = pp.used;
  const int64_t plane_stride =
      CeilDiv(std::max(plane_used, CheckedAdd(CheckedMul(tiles, tile, "positions"), max_off, "positions")), 16) * 16;
  const int64_t padded = CheckedMul(plane_stride, g.in_channels, "padded input");
  const int64_t image_in = g.in_channels * g.in_plane();

  // Huge pads, strides or dilations around a small input: the planes (or the
  // thrown-away positions) would dwarf input and output.
  if (padded > 4 * image_in + (int64_t{1} << 22) || Q > 4 * g.out_plane() + 4096) {
    RunFallback(context, x, y);
    return;
  }

  auto scratch = scratch_pool_.Acquire();

  const int64_t G = g.group, Mg = g.out_per_group, total_rows = static_cast<int64_t>(row_c_.size());
  const float* xdata = x.GetTensorData<float>();
  float* ydata = y.GetTensorMutableData<float>();
  const int64_t image_out = g.out_channels * g.out_plane();
  float* planes = AlignedBuffer(scratch->planes, padded);
  const basis::Kernels& k = *kernels_;
  const int64_t C = g.in_channels, H = g.in_h, W = g.in_w;
  const int64_t pad_top = g.pad_top, pad_left = g.pad_left;
  // Two-phase mode when the fused items (group, tile) are too few to share.
  const bool fused = G * tiles >= 8;
  const bool clamp = epilogue_.activation.kind != Activation::Kind::kNone;
  const float lo = epilogue_.activation.lo, hi = epilogue_.activation.hi;
  const float* zdata = epilogue_.Residual(context, y);
  float* maps = nullptr;
  if (!fused) maps = AlignedBuffer(scratch->maps, CheckedMul(CheckedMul(tiles, total_rows, "maps"), tile, "maps"));
  // Per-task buffers, taken here (never inside a pool callback). Fused: the
  // stage-1 tile T, then the stage sums; two-phase: the stage sums.
  const int64_t fused_tasks = std::min<int64_t>(G * tiles, 256);
  const int64_t t_floats = CeilDiv(CheckedMul(std::max<int64_t>(max_block_rows_, 1), tile, "tile"), 16) * 16;
  const int64_t nob = std::max<int64_t>(1, std::min<int64_t>(Mg, 16 / std::max<int64_t>(1, G * tiles)));
  const int64_t items2 = G * tiles * nob;
  auto tasks_lease = SharedTaskBuffers().Acquire();
  TaskBuffers& task_buffers = *tasks_lease;
  if (fused) {
    task_buffers.Reserve(TaskSlots(fused_tasks), t_floats + CheckedMul(Mg, tile, "stage"));
  } else {
    task_buffers.Reserve(TaskSlots(items2), CheckedMul(CeilDiv(Mg, nob), tile, "stage"));
  }

  for (int64_t n = 0; n < g.batch; ++n) {
    const float* xn = xdata + n * image_in;
    float* yn = ydata + n * image_out;
    const float* zn = zdata != nullptr ? zdata + n * image_out : nullptr;
    ParallelFor(context, C, std::min<int64_t>(C, 32), [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const float* src = xn + c * H * W;
        float* pl = planes + c * plane_stride;
        for (int64_t ry = 0; ry < sh; ++ry) {
          for (int64_t rx = 0; rx < sw; ++rx) {
            float* base = pl + (ry * sw + rx) * phase;
            for (int64_t qy = 0; qy < Hq; ++qy) {
              float* row = base + qy * Wq;
              const int64_t iy = qy * sh + ry - pad_top;
              if (iy < 0 || iy >= H) {
                std::memset(row, 0, sizeof(float) * Wq);
                continue;
              }
              const float* srow = src + iy * W;
              if (sw == 1) {
                // columns qx with 0 <= qx + rx - pad_left < W
                const int64_t a = std::min(Wq, std::max<int64_t>(0, pad_left - rx));
                const int64_t e = std::max(a, std::min(Wq, W + pad_left - rx));
                std::memset(row, 0, sizeof(float) * a);
                if (e > a) std::memcpy(row + a, srow + a + rx - pad_left, sizeof(float) * (e - a));
                std::memset(row + e, 0, sizeof(float) * (Wq - e));
              } else {
                for (int64_t qx = 0; qx < Wq; ++qx) {
                  const int64_t ix = qx * sw + rx - pad_left;
                  row[qx] = (ix >= 0 && ix < W) ? srow[ix] : 0.0f;
                }
              }
            }
          }
        }
        std::memset(pl + plane_used, 0, sizeof(float) * (plane_stride - plane_used));
      }
    });

    if (fused) {
      const int64_t items = G * tiles;
      ParallelFor(context, items, fused_tasks, [&](int64_t i0, int64_t i1) {
        const TaskBuffers::Borrowed buffer = task_buffers.Borrow();
        float* T = buffer.data();
        float* stage = T + t_floats;
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t gi = i / tiles, q0 = (i % tiles) * tile;
          const int64_t b0 = group_block0_[gi], b1 = group_block0_[gi + 1];
          if (b0 == b1) std::memset(stage, 0, sizeof(float) * Mg * tile);
          for (int64_t bi = b0; bi < b1; ++bi) {
            const Block& blk = blocks_[bi];
            k.basis(planes, plane_stride, q0, row_c_.data() + blk.row0, row_b_.data() + blk.row0, blk.rows,
                    bases_.data(), tap_off.data(), taps, T);
            k.coef(T, starts_.data() + blk.starts, entries_.data(), Mg, stage, bi == b0);
          }
          k.epilogue(stage, Mg, bias_.data() + gi * Mg, clamp, lo, hi, yn + gi * Mg * g.out_plane(),
                     zn != nullptr ? zn + gi * Mg * g.out_plane() : nullptr, g.out_plane(), q0, Q, Wq, g.out_w);
        }
      });
    } else {
      // Phase 1: every block's maps of every tile.
      const int64_t nblocks = static_cast<int64_t>(blocks_.size());
      const int64_t items1 = nblocks * tiles;
      ParallelFor(context, items1, std::min<int64_t>(items1, 64), [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const Block& blk = blocks_[i / tiles];
          const int64_t t = i % tiles;
          k.basis(planes, plane_stride, t * tile, row_c_.data() + blk.row0, row_b_.data() + blk.row0, blk.rows,
                  bases_.data(), tap_off.data(), taps, maps + (t * total_rows + blk.row0) * tile);
        }
      });
      // Phase 2: (group, tile, output block).
      ParallelFor(context, items2, items2, [&](int64_t i0, int64_t i1) {
        const TaskBuffers::Borrowed buffer = task_buffers.Borrow();
        float* stage = buffer.data();
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t ob = i % nob, t = (i / nob) % tiles, gi = i / (nob * tiles);
          const int64_t o0 = Mg * ob / nob, o1 = Mg * (ob + 1) / nob;
          if (o1 == o0) continue;
          const int64_t b0 = group_block0_[gi], b1 = group_block0_[gi + 1];
          if (b0 == b1) std::memset(stage, 0, sizeof(float) * (o1 - o0) * tile);
          for (int64_t bi = b0; bi < b1; ++bi) {
            const Block& blk = blocks_[bi];
            k.coef(maps + (t * total_rows + blk.row0) * tile, starts_.data() + blk.starts + o0, entries_.data(),
                   o1 - o0, stage, bi == b0);
          }
          k.epilogue(stage, o1 - o0, bias_.data() + gi * Mg + o0, clamp, lo, hi, yn + (gi * Mg + o0) * g.out_plane(),
                     zn != nullptr ? zn + (gi * Mg + o0) * g.out_plane() : nullptr, g.out_plane(), t * tile, Q,
                     Wq, g.out_w);
        }
      });
    }
  }
}

}  // namespace onnxcompress

ONNXCOMPRESS_REGISTER_OP(BasisConv);
