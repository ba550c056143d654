#include "lut_conv.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace onnxcompress {

namespace {

constexpr int64_t kMaxCodebooks = 1 << 16;
constexpr int64_t kMaxPrototypes = 256;
constexpr int64_t kTreeK = 16;
constexpr int64_t kTreeNodes = 15;

bool AllFinite(const float* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(v[i])) return false;
  }
  return true;
}

}  // namespace

const lut::Kernels* SelectLutKernels() {
  return PickKernels(lut::KernelsAvx512, lut::KernelsAvx2, lut::KernelsGeneric);
}

Ort::Status LutConv::InferOutputShape(Ort::ShapeInferContext& ctx) {
  try {
    if (ctx.GetInputCount() < 2) return Ort::Status("LutConv needs X and T", ORT_INVALID_ARGUMENT);
    std::vector<int64_t> t;
    for (const auto& d : ctx.GetInputShape(1)) {
      if (!d.IsInt() || d.AsInt() < 1) return Ort::Status{nullptr};  // unknown: leave the output open
      t.push_back(d.AsInt());
    }
    if (t.size() != 4) return Ort::Status("LutConv: T must be 4-D [G, C, K, Mg]", ORT_INVALID_ARGUMENT);
    const int64_t in_channels = ctx.GetAttrInt("in_channels");
    const std::vector<int64_t> ks = ctx.GetAttrInts("kernel_shape");
    if (ks.size() != 2 || t[0] < 1 || in_channels % t[0] != 0) {
      return Ort::Status("LutConv: bad kernel_shape, in_channels or groups", ORT_INVALID_ARGUMENT);
    }
    return InferConvOutputShape(ctx, {CheckedMul(t[0], t[3], "outputs"), in_channels / t[0], ks[0], ks[1]});
  } catch (const std::exception& e) {
    return Ort::Status(e.what(), ORT_INVALID_ARGUMENT);
  }
}

LutConv::LutConv(const Ort::ConstKernelInfo& info) {
  Require(info.GetInputCount() >= 2 && info.GetInputCount() <= kInputCount, "expects 2 to 8 inputs, got ",
          info.GetInputCount());
  attrs_ = ConvAttributes::FromNode(info);
  epilogue_ = Epilogue::FromNode(info, 7);
  Require(attrs_.kernel_shape.size() == 2, "attribute kernel_shape [kh, kw] is required");
  kh_ = attrs_.kernel_shape[0];
  kw_ = attrs_.kernel_shape[1];
  in_channels_ = AttrInt(info, "in_channels", -1);
  Require(in_channels_ >= 1 && in_channels_ <= (int64_t{1} << 24), "attribute in_channels must be in [1, 2^24], got ",
          in_channels_);
  const std::string encoder = AttrString(info, "encoder", "tree");
  Require(encoder == "tree" || encoder == "exhaustive", "attribute encoder must be 'tree' or 'exhaustive', got '",
          encoder, "'");
  tree_ = encoder == "tree";

  // Tables [G, C, K, Mg].
  const ConstantTensor t = RequireConstant(info, 1, "T");
  const bool bytes = t.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
  Require(bytes || t.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "T must be float32 or uint8");
  Require(t.dims.size() == 4, "T must be 4-D [G, C, K, Mg], got rank ", t.dims.size());
  G_ = t.dims[0];
  C_ = t.dims[1];
  K_ = t.dims[2];
  Mg_ = t.dims[3];
  Require(G_ == attrs_.group, "T's first dimension (", G_, ") must equal group (", attrs_.group, ")");
  Require(C_ >= 1 && C_ <= kMaxCodebooks, "codebooks (T's dimension 1) must be in [1, ", kMaxCodebooks, "], got ", C_);
  Require(K_ >= 1 && K_ <= kMaxPrototypes, "prototypes (T's dimension 2) must be in [1, ", kMaxPrototypes, "], got ",
          K_);
  Require(Mg_ >= 1, "T's last dimension (outputs per group) must be >= 1");
  const int64_t M = CheckedMul(G_, Mg_, "outputs");
  attrs_.Validate(M, kh_, kw_);
  Require(in_channels_ % G_ == 0, "in_channels (", in_channels_, ") must be a multiple of group (", G_, ")");
  D_ = CheckedMul(in_channels_ / G_, CheckedMul(kh_, kw_, "kernel"), "im2col columns");
  Require(D_ < (int64_t{1} << 31), "im2col rows are too long (", D_, " columns)");
  CheckedMul(CheckedMul(G_, C_, "tables"), CheckedMul(K_, Mg_, "tables"), "tables");

  // scale (8-bit tables only) and bias.
  scale_.assign(static_cast<size_t>(M), 1.0f);
  if (bytes) {
    const ConstantTensor s = RequireConstant(info, 2, "scale");
    Require(s.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "scale must be float32");
    Require(s.dims.size() == 1 && (s.dims[0] == 1 || s.dims[0] == M), "scale must have shape [1] or [", M, "]");
    const float* sv = s.As<float>();
    Require(AllFinite(sv, s.count), "scale must be finite");
    for (int64_t o = 0; o < M; ++o) scale_[o] = sv[s.count == 1 ? 0 : o];
  } else {
    Require(!HasInput(info, 2), "scale is only for 8-bit (uint8) tables");
  }
  bias_.assign(static_cast<size_t>(M), 0.0f);
  if (HasInput(info, 3)) {
    const ConstantTensor b = RequireConstant(info, 3, "B");
    Require(b.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "B must be float32");
    Require(b.dims.size() == 1 && b.dims[0] == M, "B must have shape [", M, "]");
    std::memcpy(bias_.data(), b.data, sizeof(float) * M);
  }

  // Encoder.
  const int64_t GC = G_ * C_;
  if (tree_) {
    Require(K_ == kTreeK, "the tree encoder has 16 prototypes per codebook; T's dimension 2 is ", K_);
    Require(!HasInput(info, 6), "prototypes are for encoder 'exhaustive', not 'tree'");
    const ConstantTensor sd = RequireConstant(info, 4, "split_dims");
    Require(sd.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, "split_dims must be int64");
    Require(sd.dims.size() == 3 && sd.dims[0] == G_ && sd.dims[1] == C_ && sd.dims[2] == 4,
            "split_dims must have shape [", G_, ", ", C_, ", 4]");
    const int64_t* sdv = sd.As<int64_t>();
    for (int64_t i = 0; i < sd.count; ++i) {
      Require(sdv[i] >= 0 && sdv[i] < D_, "split_dims[", i, "] = ", sdv[i], " is outside [0, ", D_, ")");
    }
    split_dims_.assign(sdv, sdv + sd.count);
    const ConstantTensor th = RequireConstant(info, 5, "thresholds");
    Require(th.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "thresholds must be float32");
    Require(th.dims.size() == 3 && th.dims[0] == G_ && th.dims[1] == C_ && th.dims[2] == kTreeNodes,
            "thresholds must have shape [", G_, ", ", C_, ", 15]");
    const float* thv = th.As<float>();
    thr_.assign(static_cast<size_t>(GC * 16 + 16), 0.0f);
    for (int64_t i = 0; i < GC; ++i) {
      for (int64_t j = 0; j < kTreeNodes; ++j) {
        const float v = thv[i * kTreeNodes + j];
        Require(!std::isnan(v), "thresholds must not be NaN");
        thr_[i * 16 + j] = v;
      }
    }
  } else {
    Require(!HasInput(info, 4) && !HasInput(info, 5), "split_dims and thresholds are for encoder 'tree'");
    const ConstantTensor pr = RequireConstant(info, 6, "prototypes");
    Require(pr.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "prototypes must be float32");
    Require(pr.dims.size() == 4 && pr.dims[0] == G_ && pr.dims[1] == C_ && pr.dims[2] == K_ && pr.dims[3] >= 1,
            "prototypes must have shape [", G_, ", ", C_, ", ", K_, ", S]");
    S_ = pr.dims[3];
    Require(CheckedMul(C_, S_, "codebook columns") >= D_ && (C_ - 1) * S_ < D_, "codebooks of ", S_,
            " columns must cover the ", D_, " im2col columns with none left empty (C*S >= D > (C-1)*S)");
    const float* pv = pr.As<float>();
    Require(AllFinite(pv, pr.count), "prototypes must be finite");
    protos_.assign(pv, pv + pr.count);
    pnorm_.assign(static_cast<size_t>(GC * K_), 0.0f);
    for (int64_t i = 0; i < GC * K_; ++i) {
      float n = 0.0f;
      for (int64_t s = 0; s < S_; ++s) n += pv[i * S_ + s] * pv[i * S_ + s];
      pnorm_[i] = n;
    }
  }

  // Tables, packed for the kernels.
  if (bytes) {
    kp_ = K_ <= 16 ? 16 : K_;
    const uint8_t* tv = t.As<uint8_t>();
    tq_.assign(static_cast<size_t>(CheckedMul(CheckedMul(GC, Mg_, "tables"), kp_, "tables")), 0);
    for (int64_t i = 0; i < GC; ++i) {
      for (int64_t k = 0; k < K_; ++k) {
        for (int64_t o = 0; o < Mg_; ++o) tq_[(i * Mg_ + o) * kp_ + k] = tv[(i * K_ + k) * Mg_ + o];
      }
    }
  } else {
    const float* tv = t.As<float>();
    tf_.assign(tv, tv + t.count);
  }
  kernels_ = SelectLutKernels();
}

namespace lut {
int64_t WorkFloats(const Plan& p, int64_t rows, int64_t blocks) {
  const int64_t floats = 2 * rows * kOutTile + (p.tree ? 0 : CheckedMul(p.S, rows, "encoder scratch"));
  const int64_t code_bytes = CheckedAdd(CheckedMul(p.C, blocks, rows, "codes"), 64, "codes");
  return floats + CeilDiv(code_bytes, 4);
}
}  // namespace lut

void LutConv::Compute(Ort::KernelContext& context) {
  Ort::ConstValue x = context.GetInput(0);
  Require(x != nullptr && x.IsTensor(), "input X is missing");
  const auto x_info = x.GetTensorTypeAndShapeInfo();
  Require(x_info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "X must be float32");
  const std::vector<int64_t> x_dims = x_info.GetShape();
  Require(x_dims.size() == 4 && x_dims[1] == in_channels_, "X must be [N, ", in_channels_, ", H, W]");
  const ConvGeometry g = ResolveConvGeometry(attrs_, x_dims, G_ * Mg_, in_channels_ / G_, kh_, kw_);
  Ort::UnownedValue y = context.GetOutput(0, g.OutputShape());
  if (g.batch == 0 || g.out_plane() == 0) {
    epilogue_.Residual(context, y);  // a Z of another shape is an error even here
    return;
  }

  // The padded input (zero border), indexed with int32 by the kernels. Bands
  // of output rows: one band (the whole image) unless the padded copy would
  // be far larger than the input (huge pads or strides) or too large for
  // int32 indices; then each band pads only the input rows it reads.
  const int64_t reach_w = CheckedAdd(CheckedMul(g.out_w - 1, g.stride_w, "padded input"),
                                     CheckedMul(g.kw - 1, g.dil_w, "padded input") + 1, "padded input");
  const int64_t Wp = std::max(CheckedAdd(g.pad_left, g.in_w, "padded input"), reach_w);
  const int64_t extent_h = CheckedMul(g.kh - 1, g.dil_h, "padded input") + 1;
  const int64_t row_floats = CheckedMul(g.in_channels, Wp, "padded input");
  // padded rows read by a band of `rows` output rows
  auto band_rows_in = [&](int64_t rows) { return CheckedMul(rows - 1, g.stride_h, "padded input") + extent_h; };
  const int64_t image_in = g.in_channels * g.in_plane();
  const int64_t limit = std::min<int64_t>((int64_t{1} << 31) - 1, 4 * image_in + (int64_t{1} << 22));
  int64_t band = g.out_h;
  if (CheckedMul(band_rows_in(band), row_floats, "padded input") > limit) {
    band = std::max<int64_t>(1, ((limit / row_floats) - extent_h) / g.stride_h + 1);
    band = std::min(band, g.out_h);
  }
  const int64_t rows_in = band_rows_in(band);
  const int64_t plane_p = CheckedMul(rows_in, Wp, "padded input");
  const int64_t padded = CheckedMul(plane_p, g.in_channels, "padded input");
  Require(padded < (int64_t{1} << 31) - 1, "the input one output row of LutConv reads (", padded,
          " values, padded) is too large");

  auto scratch = scratch_pool_.Acquire();

  const lut::Kernels& k = *kernels_;
  const int64_t R = k.rows;
  // Offset of im2col column d = (c, ky, kx) of group gi in the padded band.
  const int64_t cg = g.in_per_group, taps = g.taps();
  auto col_off = [&](int64_t gi, int64_t d) {
    const int64_t c = d / taps, ky = (d % taps) / g.kw, kx = d % g.kw;
    return static_cast<int32_t>((gi * cg + c) * plane_p + ky * g.dil_h * Wp + kx * g.dil_w);
  };
  if (tree_) {  // only the split columns (D, from attributes, can be far larger than the tables)
    scratch->split_off.resize(split_dims_.size());
    for (size_t i = 0; i < split_dims_.size(); ++i) {
      scratch->split_off[i] = col_off(static_cast<int64_t>(i) / (C_ * 4), split_dims_[i]);
    }
  } else {  // exhaustive: every column (D <= C*S, checked at creation against the prototypes)
    scratch->col_off.resize(static_cast<size_t>(G_ * D_));
    for (int64_t gi = 0; gi < G_; ++gi) {
      for (int64_t d = 0; d < D_; ++d) scratch->col_off[gi * D_ + d] = col_off(gi, d);
    }
  }

  lut::Plan plan;
  plan.G = G_;
  plan.D = D_;
  plan.C = C_;
  plan.K = K_;
  plan.S = S_;
  plan.Mg = Mg_;
  plan.out_w = g.out_w;
  plan.y_stride = g.out_plane();
  plan.unit_stride_w = g.stride_w == 1;
  plan.col_off = scratch->col_off.data();
  plan.tree = tree_;
  plan.split_off = scratch->split_off.data();
  plan.thr = thr_.data();
  plan.protos = protos_.data();
  plan.pnorm = pnorm_.data();
  plan.tf = tf_.empty() ? nullptr : tf_.data();
  plan.tq = tq_.empty() ? nullptr : tq_.data();
  plan.kp = kp_;
  plan.scale = scale_.data();
  plan.bias = bias_.data();
  plan.clamp = epilogue_.activation.kind != Activation::Kind::kNone;
  plan.lo = epilogue_.activation.lo;
  plan.hi = epilogue_.activation.hi;
  plan.residual = epilogue_.Residual(context, y);
  plan.y_base = y.GetTensorMutableData<float>();

  scratch->padded.resize(static_cast<size_t>(padded));
  float* xp = scratch->padded.data();
  plan.xp = xp;
  const float* xdata = x.GetTensorData<float>();
  float* ydata = y.GetTensorMutableData<float>();
  const int64_t image_out = g.out_channels * g.out_plane();
  // Per-task work buffers for the largest band, taken before the regions.
  const int64_t max_blocks = CeilDiv(band * g.out_w, R);
  const int64_t max_items = G_ * max_blocks;
  const int64_t max_tasks = std::min<int64_t>(max_items, 64);
  auto tasks_lease = SharedTaskBuffers().Acquire();
  TaskBuffers& task_buffers = *tasks_lease;
  task_buffers.Reserve(TaskSlots(max_tasks), lut::WorkFloats(plan, R, CeilDiv(max_items, max_tasks)));
  scratch->base.resize(static_cast<size_t>(max_blocks * R + 64));  // slack: vector reads past the last block
  int64_t based_rows = -1;  // the band height `base` holds
  for (int64_t n = 0; n < g.batch; ++n) {
    const float* xn = xdata + n * image_in;
    float* yn = ydata + n * image_out;
    for (int64_t oy0 = 0; oy0 < g.out_h; oy0 += band) {
      const int64_t rows = std::min(band, g.out_h - oy0);
      const int64_t plane = rows * g.out_w, blocks = CeilDiv(plane, R);
      if (rows != based_rows) {
        for (int64_t op = 0; op < blocks * R + 64; ++op) {
          const int64_t q = std::min(op, plane - 1);
          scratch->base[op] = static_cast<int32_t>((q / g.out_w) * g.stride_h * Wp + (q % g.out_w) * g.stride_w);
        }
        based_rows = rows;
      }
      plan.base = scratch->base.data();
      plan.plane = plane;
      // Padded row r of the band is padded row pr0 + r of the image.
      const int64_t pr0 = oy0 * g.stride_h, band_in = band_rows_in(rows);
      ParallelFor(context, g.in_channels, std::min<int64_t>(g.in_channels, 16), [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          float* dst = xp + c * plane_p;
          const float* src = xn + c * g.in_plane();
          for (int64_t r = 0; r < band_in; ++r) {
            float* row = dst + r * Wp;
            const int64_t iy = pr0 + r - g.pad_top;
            if (iy < 0 || iy >= g.in_h) {
              std::memset(row, 0, sizeof(float) * Wp);
              continue;
            }
            std::memset(row, 0, sizeof(float) * g.pad_left);
            std::memcpy(row + g.pad_left, src + iy * g.in_w, sizeof(float) * g.in_w);
            std::memset(row + g.pad_left + g.in_w, 0, sizeof(float) * (Wp - g.pad_left - g.in_w));
          }
        }
      });
      float* yb = yn + oy0 * g.out_w;
      const int64_t items = G_ * blocks;
      ParallelFor(context, items, std::min<int64_t>(items, 64), [&](int64_t i0, int64_t i1) {
        const TaskBuffers::Borrowed work = task_buffers.Borrow();
        while (i0 < i1) {
          const int64_t gi = i0 / blocks, b0 = i0 % blocks;
          const int64_t b1 = std::min(blocks, b0 + (i1 - i0));
          k.run(plan, yb, gi, b0, b1, work.data());
          i0 += b1 - b0;
        }
      });
    }
  }
}

}  // namespace onnxcompress

ONNXCOMPRESS_REGISTER_OP(LutConv);
