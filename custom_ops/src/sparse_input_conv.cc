#include "sparse_input_conv.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

namespace onnxcompress {

namespace {

// Sparse channel block: the W rows one (channel block, kernel row) needs,
// kw*cb rows of the lanes of one sparse pass, take about 48 KiB (measured on
// the ResNet-18 shapes: larger blocks mean fewer, longer list runs, which
// matters more than keeping every row in L1). `forced` > 0 (from
// ONNXCOMPRESS_FALCON_CB, read at kernel creation; tuning only) overrides.
int64_t SparseChannelBlock(const falcon::Kernels& k, int64_t cg, int64_t kw, int64_t mblocks, int64_t forced) {
  const int64_t lanes = int64_t{k.mb} * std::min<int64_t>(k.sparse_mblocks, mblocks);
  const int64_t cb = forced > 0 ? forced : std::max<int64_t>(16, (48 * 1024) / (4 * lanes * kw));
  return std::min(cg, cb);
}

// ONNXCOMPRESS_FALCON_CB when set to a value in [1, 65536], else 0.
int64_t ForcedChannelBlock() {
  const char* env = std::getenv("ONNXCOMPRESS_FALCON_CB");
  if (env == nullptr) return 0;
  const long v = std::strtol(env, nullptr, 10);
  return v >= 1 && v <= 65536 ? v : 0;
}

}  // namespace

const falcon::Kernels* SelectFalconKernels() {
  return PickKernels(falcon::KernelsAvx512, falcon::KernelsAvx2, falcon::KernelsGeneric);
}

SparseInputConv::SparseInputConv(const Ort::ConstKernelInfo& info) {
  Require(info.GetInputCount() >= 2 && info.GetInputCount() <= kInputCount, "expects 2 to 4 inputs (X, W[, B[, Z]]), got ",
          info.GetInputCount());
  attrs_ = ConvAttributes::FromNode(info);
  epilogue_ = Epilogue::FromNode(info, 3);
  threshold_ = AttrFloat(info, "threshold", 0.0f);
  Require(std::isfinite(threshold_) && threshold_ >= 0.0f, "threshold must be finite and >= 0, got ", threshold_);
  dense_below_zero_fraction_ = AttrFloat(info, "dense_below_zero_fraction", 0.3f);
  Require(!std::isnan(dense_below_zero_fraction_), "dense_below_zero_fraction must be a number");

  const ConstantTensor w = RequireConstant(info, 1, "W");
  Require(w.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "W must be float32");
  Require(w.dims.size() == 4, "W must be 4-D [M, C/group, kH, kW], got rank ", w.dims.size());
  out_channels_ = w.dims[0];
  in_per_group_ = w.dims[1];
  kh_ = w.dims[2];
  kw_ = w.dims[3];
  Require(in_per_group_ >= 1, "W must have at least one input channel");
  attrs_.Validate(out_channels_, kh_, kw_);

  has_bias_ = HasInput(info, 2);
  bias_.assign(out_channels_, 0.0f);
  if (has_bias_) {
    const ConstantTensor b = RequireConstant(info, 2, "B");
    Require(b.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "B must be float32");
    Require(b.dims.size() == 1 && b.dims[0] == out_channels_, "B must have shape [", out_channels_, "]");
    std::memcpy(bias_.data(), b.data, sizeof(float) * out_channels_);
  }

  kernels_ = SelectFalconKernels();
  forced_cb_ = ForcedChannelBlock();

  // Pack W per group into [mblock][k = tap*Cg + c][MB lanes], lanes past the
  // group's output channels zero.
  const int64_t G = attrs_.group, Mg = out_channels_ / G, Cg = in_per_group_, taps = CheckedMul(kh_, kw_, "W");
  const int64_t MB = kernels_->mb;
  const int64_t K = CheckedMul(taps, Cg, "W");
  mblocks_ = CeilDiv(Mg, MB);
  const int64_t packed = CheckedMul(CheckedMul(CheckedMul(G, mblocks_, "packed W"), K, "packed W"), MB, "packed W");
  wpack_storage_.assign(static_cast<size_t>(packed) + 16, 0.0f);
  float* wp = wpack_storage_.data();
  wp += (16 - (reinterpret_cast<uintptr_t>(wp) / sizeof(float)) % 16) % 16;
  wpack_ = wp;
  const float* wsrc = w.As<float>();
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t m = 0; m < Mg; ++m) {
      const int64_t mo = g * Mg + m, mb = m / MB, lane = m % MB;
      float* dst = wp + (g * mblocks_ + mb) * K * MB + lane;
      for (int64_t c = 0; c < Cg; ++c) {
        for (int64_t t = 0; t < taps; ++t) dst[(t * Cg + c) * MB] = wsrc[(mo * Cg + c) * taps + t];
      }
    }
  }
  fallback_ = std::make_unique<OrtConv>(info, attrs_, has_bias_);
}

// ORT's Conv on the (thresholded) input, then the fused activation.
void SparseInputConv::RunFallback(Ort::KernelContext& context, const ConvGeometry& g, Ort::ConstValue& x,
                                  Ort::UnownedValue& y, Scratch& scratch) {
  Ort::ConstValue w = context.GetInput(1);
  Ort::ConstValue b = has_bias_ ? context.GetInput(2) : Ort::ConstValue{nullptr};
  const OrtValue* x_raw = x;
  Ort::Value x_thresholded{nullptr};
  if (threshold_ > 0.0f) {
    const int64_t n = g.batch * g.in_channels * g.in_plane();
    const float* src = x.GetTensorData<float>();
    scratch.thresholded.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) scratch.thresholded[i] = std::fabs(src[i]) < threshold_ ? 0.0f : src[i];
    const std::vector<int64_t> shape{g.batch, g.in_channels, g.in_h, g.in_w};
    auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    x_thresholded = Ort::Value::CreateTensor<float>(memory, scratch.thresholded.data(), static_cast<size_t>(n),
                                                    shape.data(), shape.size());
    x_raw = x_thresholded;
  }
  fallback_->Run(context, x_raw, w, b, y);
  epilogue_.FinishUnfused(context, y);
}

void SparseInputConv::Compute(Ort::KernelContext& context) {
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

  // Padded image: input pixel (iy, ix) at (iy + pad_top, ix + pad_left), big
  // enough for every tap of every output pixel.
  const int64_t reach_h = CheckedAdd(CheckedMul(g.out_h - 1, g.stride_h, "padded input"),
                                     CheckedMul(g.kh - 1, g.dil_h, "padded input") + 1, "padded input");
  const int64_t reach_w = CheckedAdd(CheckedMul(g.out_w - 1, g.stride_w, "padded input"),
                                     CheckedMul(g.kw - 1, g.dil_w, "padded input") + 1, "padded input");
  const int64_t Hp = std::max(CheckedAdd(g.pad_top, g.in_h, "padded input"), reach_h);
  const int64_t Wp = std::max(CheckedAdd(g.pad_left, g.in_w, "padded input"), reach_w);
  const int64_t pixels = CheckedMul(Hp, Wp, "padded input");
  const int64_t padded = CheckedMul(pixels, g.in_channels, "padded input");
  const int64_t image_in = g.in_channels * g.in_plane();

  auto scratch = scratch_pool_.Acquire();

  // Huge pads around a small input (or similar): the padded copy would dwarf
  // input and output; ORT's Conv handles those without one.
  if (padded > 4 * image_in + (int64_t{1} << 22)) {
    RunFallback(context, g, x, y, *scratch);
    return;
  }

  const falcon::Kernels& k = *kernels_;
  falcon::Plan plan;
  plan.C = g.in_channels;
  plan.H = g.in_h;
  plan.W = g.in_w;
  plan.Hp = Hp;
  plan.Wp = Wp;
  plan.pad_top = g.pad_top;
  plan.pad_left = g.pad_left;
  plan.G = g.group;
  plan.Cg = g.in_per_group;
  plan.Mg = g.out_per_group;
  plan.taps = g.taps();
  plan.out_plane = g.out_plane();
  plan.cb = SparseChannelBlock(k, plan.Cg, g.kw, mblocks_, forced_cb_);
  plan.ncb = CeilDiv(plan.Cg, plan.cb);
  plan.wpack = wpack_;
  plan.mblocks = mblocks_;
  plan.bias = bias_.data();
  plan.threshold = threshold_;
  plan.clamp = epilogue_.activation.kind != Activation::Kind::kNone;
  plan.lo = epilogue_.activation.lo;
  plan.hi = epilogue_.activation.hi;
  plan.residual = epilogue_.Residual(context, y);
  plan.y_base = y.GetTensorMutableData<float>();

  // Every index the kernels form, in_pix[op] + tap_pix[t], is at most
  // (reach_h - 1) * Wp + reach_w - 1 < Hp * Wp.
  scratch->in_pix.resize(static_cast<size_t>(plan.out_plane));
  for (int64_t oy = 0, op = 0; oy < g.out_h; ++oy) {
    for (int64_t ox = 0; ox < g.out_w; ++ox, ++op) scratch->in_pix[op] = oy * g.stride_h * Wp + ox * g.stride_w;
  }
  scratch->tap_pix.resize(static_cast<size_t>(plan.taps));
  for (int64_t ky = 0; ky < g.kh; ++ky) {
    for (int64_t kx = 0; kx < g.kw; ++kx) scratch->tap_pix[ky * g.kw + kx] = ky * g.dil_h * Wp + kx * g.dil_w;
  }
  scratch->in_y.resize(static_cast<size_t>(plan.out_plane));
  scratch->in_x.resize(static_cast<size_t>(plan.out_plane));
  for (int64_t oy = 0, op = 0; oy < g.out_h; ++oy) {
    for (int64_t ox = 0; ox < g.out_w; ++ox, ++op) {
      scratch->in_y[op] = oy * g.stride_h;
      scratch->in_x[op] = ox * g.stride_w;
    }
  }
  plan.in_pix = scratch->in_pix.data();
  plan.tap_pix = scratch->tap_pix.data();
  plan.in_y = scratch->in_y.data();
  plan.in_x = scratch->in_x.data();
  plan.kh = g.kh;
  plan.kw = g.kw;
  plan.dil_h = g.dil_h;
  plan.dil_w = g.dil_w;
  // Sparse lists: each padded row gets Wp*C entries plus one vector of slack
  // (vector compaction writes up to 16 floats past what it keeps).
  plan.row_stride = Wp * g.in_channels + 16;
  plan.gather_ok = g.in_plane() < (int64_t{1} << 26);
  const int64_t list_entries = CheckedMul(Hp, plan.row_stride, "sparse lists");
  const int64_t list_starts = CheckedMul(CheckedMul(Hp, g.group * plan.ncb, "sparse lists"), Wp + 1, "sparse lists");

  // The sparse lists index entries with 32 bits.
  const bool sparse_possible = list_entries < (int64_t{1} << 32) - 1;
  const int64_t row_tasks = std::min<int64_t>(Hp, 16);
  const float* xdata = x.GetTensorData<float>();
  float* ydata = y.GetTensorMutableData<float>();
  const int64_t image_out = g.out_channels * g.out_plane();

  for (int64_t n = 0; n < g.batch; ++n) {
    const float* xn = xdata + n * image_in;
    float* yn = ydata + n * image_out;
    bool dense;
    if (!sparse_possible || dense_below_zero_fraction_ > 1.0f) {
      dense = true;
    } else if (dense_below_zero_fraction_ <= 0.0f || image_in == 0) {
      dense = false;
    } else {
      const double zeros = static_cast<double>(k.count_zeros(xn, image_in, threshold_));
      dense = zeros / static_cast<double>(image_in) < dense_below_zero_fraction_;
    }

    if (dense) {
      scratch->padded.resize(static_cast<size_t>(padded));
      float* xp = scratch->padded.data();
      ParallelFor(context, Hp, row_tasks, [&](int64_t r0, int64_t r1) { k.to_padded_nhwc(plan, xn, xp, r0, r1); });
      // Work items: (group, W block, pixel chunk), chunks innermost so that
      // neighbouring items share the W block.
      const int64_t chunk = int64_t{k.dense_pixels} * 8;
      const int64_t chunks = CeilDiv(plan.out_plane, chunk);
      const int64_t items = g.group * mblocks_ * chunks;
      ParallelFor(context, items, items, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t c = i % chunks, mb = (i / chunks) % mblocks_, gi = i / (chunks * mblocks_);
          const int64_t op0 = c * chunk, op1 = std::min(plan.out_plane, op0 + chunk);
          k.dense(plan, xp, yn, gi, mb, op0, op1);
        }
      });
    } else {
      scratch->vals.resize(static_cast<size_t>(list_entries));
      scratch->idx.resize(static_cast<size_t>(list_entries));
      scratch->starts.resize(static_cast<size_t>(list_starts));
      float* vals = scratch->vals.data();
      uint32_t* idx = scratch->idx.data();
      uint32_t* starts = scratch->starts.data();
      ParallelFor(context, Hp, row_tasks,
                  [&](int64_t r0, int64_t r1) { k.build_lists(plan, xn, vals, idx, starts, r0, r1); });
      const int64_t chunk = k.sparse_chunk;
      const int64_t chunks = CeilDiv(plan.out_plane, chunk);
      const int64_t passes = CeilDiv(mblocks_, k.sparse_mblocks);
      const int64_t items = g.group * passes * chunks;
      ParallelFor(context, items, items, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t c = i % chunks, pass = (i / chunks) % passes, gi = i / (chunks * passes);
          const int64_t mb0 = pass * k.sparse_mblocks;
          const int64_t nmb = std::min<int64_t>(k.sparse_mblocks, mblocks_ - mb0);
          const int64_t op0 = c * chunk, op1 = std::min(plan.out_plane, op0 + chunk);
          k.sparse(plan, vals, idx, starts, yn, gi, mb0, nmb, op0, op1);
        }
      });
    }
  }
}

}  // namespace onnxcompress

ONNXCOMPRESS_REGISTER_OP(SparseInputConv);
