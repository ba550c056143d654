#include "clustered_sparse_conv.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

namespace onnxcompress {

namespace {

// Element i of an integer initializer of one of the allowed types.
struct IntReader {
  ONNXTensorElementDataType type;
  const void* data;
  int64_t operator[](int64_t i) const {
    switch (type) {
      case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return static_cast<const uint8_t*>(data)[i];
      case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16: return static_cast<const uint16_t*>(data)[i];
      case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return static_cast<const int32_t*>(data)[i];
      default: return static_cast<const int64_t*>(data)[i];
    }
  }
};

IntReader RequireIntegers(const ConstantTensor& t, const char* name, bool allow_int64) {
  const bool ok = t.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 || t.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16 ||
                  t.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 ||
                  (allow_int64 && t.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64);
  Require(ok, name, " must be uint8, uint16 or int32", allow_int64 ? " (or int64)" : "", ", got element type ",
          static_cast<int>(t.type));
  return IntReader{t.type, t.data};
}

// weight_shape [M, C/group, kH, kW]: every dimension >= 1 and reasonable.
std::vector<int64_t> WeightShape(const std::vector<int64_t>& ws) {
  Require(ws.size() == 4, "attribute weight_shape must have 4 values [M, C/group, kH, kW], got ", ws.size());
  for (int64_t d : ws) Require(d >= 1 && d <= (int64_t{1} << 24), "weight_shape values must be in [1, 2^24], got ", d);
  return ws;
}

}  // namespace

const cluspa::Kernels* SelectClusteredSparseKernels() {
  return PickKernels(cluspa::KernelsAvx512, cluspa::KernelsAvx2, cluspa::KernelsGeneric);
}

Ort::Status ClusteredSparseConv::InferOutputShape(Ort::ShapeInferContext& ctx) {
  std::vector<int64_t> ws;
  try {
    ws = WeightShape(ctx.GetAttrInts("weight_shape"));
  } catch (const std::exception& e) {
    return Ort::Status(e.what(), ORT_INVALID_ARGUMENT);
  }
  return InferConvOutputShape(ctx, ws);
}

ClusteredSparseConv::ClusteredSparseConv(const Ort::ConstKernelInfo& info) {
  Require(info.GetInputCount() >= 4 && info.GetInputCount() <= kInputCount,
          "expects 4 to 6 inputs (X, values, counts, indices[, B[, Z]]), got ", info.GetInputCount());
  attrs_ = ConvAttributes::FromNode(info);
  epilogue_ = Epilogue::FromNode(info, 5);
  const std::vector<int64_t> ws = WeightShape(AttrInts(info, "weight_shape", {}));
  out_channels_ = ws[0];
  in_per_group_ = ws[1];
  kh_ = ws[2];
  kw_ = ws[3];
  attrs_.Validate(out_channels_, kh_, kw_);
  const int64_t M = out_channels_;
  const int64_t D = CheckedMul(CheckedMul(in_per_group_, kh_, "weight_shape"), kw_, "weight_shape");
  Require(D < (int64_t{1} << 31), "C/group * kH * kW must be below 2^31");

  const ConstantTensor values = RequireConstant(info, 1, "values");
  Require(values.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "values must be float32");
  Require(values.dims.size() == 1 || values.dims.size() == 2, "values must be [K] or [M, K], got rank ",
          values.dims.size());
  const bool per_channel = values.dims.size() == 2;
  const int64_t K = values.dims.back();
  Require(K >= 1, "values must hold at least one value");
  if (per_channel) Require(values.dims[0] == M, "values [M, K] must have M = ", M, " rows, got ", values.dims[0]);

  const ConstantTensor counts = RequireConstant(info, 2, "counts");
  const IntReader count = RequireIntegers(counts, "counts", true);
  Require(counts.dims.size() == 2 && counts.dims[0] == M && counts.dims[1] == K, "counts must have shape [", M,
          ", ", K, "]");
  const ConstantTensor indices = RequireConstant(info, 3, "indices");
  const IntReader index = RequireIntegers(indices, "indices", false);
  Require(indices.dims.size() == 1, "indices must be 1-D, got rank ", indices.dims.size());
  const int64_t nnz = indices.count;
  Require(nnz < (int64_t{1} << 32), "too many indices");

  bias_.assign(static_cast<size_t>(M), 0.0f);
  if (HasInput(info, 4)) {
    const ConstantTensor b = RequireConstant(info, 4, "B");
    Require(b.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "B must be float32");
    Require(b.dims.size() == 1 && b.dims[0] == M, "B must have shape [", M, "]");
    std::memcpy(bias_.data(), b.data, sizeof(float) * M);
  }

  // The program: per channel, one segment per non-empty cluster. Every count
  // is >= 0, the counts add up to the number of indices, every index is a
  // column of the group (< C/group*kH*kW) and appears at most once per channel.
  // Everything allocated here is sized by the initializers (M from counts,
  // nnz from indices), never by weight_shape alone.
  const float* vals = values.As<float>();
  seg_begin_.assign(static_cast<size_t>(M) + 1, 0);
  seg_first_.clear();
  seg_value_.clear();
  rows_.resize(static_cast<size_t>(nnz));
  entry_value_.resize(static_cast<size_t>(nnz));
  std::vector<uint32_t> columns;  // one channel's columns, sorted to find repeats
  int64_t pos = 0;
  for (int64_t o = 0; o < M; ++o) {
    seg_begin_[o] = static_cast<int64_t>(seg_value_.size());
    const int64_t channel_first = pos;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t n = count[o * K + k];
      Require(n >= 0 && n <= D, "counts[", o, ", ", k, "] = ", n, " is outside [0, ", D, "]");
      Require(n <= nnz - pos, "the counts add up to more than the ", nnz, " indices");
      if (n == 0) continue;
      seg_first_.push_back(pos);
      seg_value_.push_back(vals[per_channel ? o * K + k : k]);
      for (int64_t e = pos; e < pos + n; ++e) {
        const int64_t j = index[e];
        Require(j >= 0 && j < D, "indices[", e, "] = ", j, " is outside [0, ", D, ")");
        rows_[e] = static_cast<uint32_t>(j);
        entry_value_[e] = seg_value_.back();
      }
      pos += n;
    }
    columns.assign(rows_.begin() + channel_first, rows_.begin() + pos);
    std::sort(columns.begin(), columns.end());
    for (size_t i = 1; i < columns.size(); ++i) {
      Require(columns[i] != columns[i - 1], "column ", columns[i], " appears twice in output channel ", o);
    }
  }
  Require(pos == nnz, "the counts add up to ", pos, " but there are ", nnz, " indices");
  seg_begin_[M] = static_cast<int64_t>(seg_value_.size());
  seg_first_.push_back(pos);
  kernels_ = SelectClusteredSparseKernels();
  if (kernels_->per_entry_fma) {
    // Per channel: entries by column (input channel ascending), cut into
    // column blocks of whole input channels, about kBlockColumns columns
    // each, and never more blocks than entries per channel on average (so
    // the M * (blocks + 1) starts stay within nnz + 2M: a block with no
    // entries in most channels saves nothing anyway).
    constexpr int64_t kBlockColumns = 96;
    const int64_t taps = kh_ * kw_;
    const int64_t max_blocks = std::max<int64_t>(1, CeilDiv(nnz, M));
    const int64_t block_ch =
        std::max(std::max<int64_t>(1, kBlockColumns / taps), CeilDiv(in_per_group_, max_blocks));
    const int64_t block_cols = block_ch * taps;
    nblocks_ = CeilDiv(in_per_group_, block_ch);
    entry_first_.assign(static_cast<size_t>(CheckedMul(M, nblocks_ + 1, "column blocks")), 0);
    std::vector<std::pair<uint32_t, float>> list;
    for (int64_t o = 0; o < M; ++o) {
      const int64_t e0 = seg_first_[seg_begin_[o]], e1 = seg_first_[seg_begin_[o + 1]];
      list.clear();
      for (int64_t e = e0; e < e1; ++e) list.emplace_back(rows_[e], entry_value_[e]);
      std::sort(list.begin(), list.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      int64_t* first = entry_first_.data() + o * (nblocks_ + 1);
      int64_t blk = 0;
      for (int64_t i = 0; i < static_cast<int64_t>(list.size()); ++i) {
        rows_[e0 + i] = list[i].first;
        entry_value_[e0 + i] = list[i].second;
        while (blk < nblocks_ && (blk + 1) * block_cols <= list[i].first) first[++blk] = e0 + i;
      }
      while (blk < nblocks_) first[++blk] = e1;
      first[0] = e0;
    }
  }
  fallback_ = std::make_unique<OrtConv>(info, attrs_, /*with_bias=*/true);
}

// ORT's Conv on the equivalent dense weights (built on first use), then the
// fused activation: for inputs whose phase planes the fast path cannot take.
void ClusteredSparseConv::RunFallback(Ort::KernelContext& context, Ort::ConstValue& x, Ort::UnownedValue& y) {
  const int64_t D = in_per_group_ * kh_ * kw_;
  std::call_once(dense_once_, [&] {
    const int64_t count = CheckedMul(out_channels_, D, "dense weights");
    Require(count <= kMaxFallbackWeights, "the dense weights for ORT's Conv fallback (", count,
            " values) are too large");
    std::vector<float> w(static_cast<size_t>(count), 0.0f);
    for (int64_t o = 0; o < out_channels_; ++o) {
      for (int64_t s = seg_begin_[o]; s < seg_begin_[o + 1]; ++s) {
        for (int64_t e = seg_first_[s]; e < seg_first_[s + 1]; ++e) w[o * D + rows_[e]] = entry_value_[e];
      }
    }
    dense_weight_ = std::move(w);
  });
  Require(!dense_weight_.empty(), "the dense weights for ORT's Conv fallback are too large");
  const std::vector<int64_t> wshape{out_channels_, in_per_group_, kh_, kw_};
  const std::vector<int64_t> bshape{out_channels_};
  auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  Ort::Value w = Ort::Value::CreateTensor<float>(memory, dense_weight_.data(), dense_weight_.size(), wshape.data(),
                                                 wshape.size());
  Ort::Value b = Ort::Value::CreateTensor<float>(memory, bias_.data(), bias_.size(), bshape.data(), bshape.size());
  fallback_->Run(context, x, w, b, y);
  epilogue_.FinishUnfused(context, y);
}

std::shared_ptr<const ClusteredSparseConv::Offsets> ClusteredSparseConv::OffsetsFor(int64_t Hq, int64_t Wq,
                                                                                 int64_t sh, int64_t sw, int64_t dh,
                                                                                 int64_t dw) {
  {
    std::lock_guard<std::mutex> lock(offsets_mutex_);
    if (offsets_ && offsets_->Hq == Hq && offsets_->Wq == Wq && offsets_->sh == sh && offsets_->sw == sw) {
      return offsets_;
    }
  }
  auto t = std::make_shared<Offsets>();
  t->sh = sh;
  t->sw = sw;
  t->Hq = Hq;
  t->Wq = Wq;
  const int64_t taps = kh_ * kw_, plane = Hq * Wq;
  t->off.resize(rows_.size());
  for (size_t e = 0; e < rows_.size(); ++e) {
    const int64_t j = rows_[e], c = j / taps, tap = j - c * taps, ky = tap / kw_, kx = tap - ky * kw_;
    const int64_t vy = ky * dh, vx = kx * dw;
    const int64_t off = ((c * sh + vy % sh) * sw + vx % sw) * plane + (vy / sh) * Wq + vx / sw;
    t->off[e] = static_cast<uint32_t>(off);  // < group planes, checked by the caller to fit
  }
  std::lock_guard<std::mutex> lock(offsets_mutex_);
  offsets_ = t;
  return t;
}

void ClusteredSparseConv::Compute(Ort::KernelContext& context) {
  Ort::ConstValue x = context.GetInput(0);
  Require(x != nullptr && x.IsTensor(), "input X is missing");
  const auto x_info = x.GetTensorTypeAndShapeInfo();
  Require(x_info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "X must be float32");
  const ConvGeometry g = ResolveConvGeometry(attrs_, x_info.GetShape(), out_channels_, in_per_group_, kh_, kw_);
  Ort::UnownedValue y = context.GetOutput(0, g.OutputShape());
  const int64_t out_plane = g.out_plane();
  if (g.batch == 0 || out_plane == 0 || g.out_channels == 0) {
    epilogue_.Residual(context, y);  // a Z of another shape is an error even here
    return;
  }

  const cluspa::Kernels& k = *kernels_;
  const int64_t P = k.block;
  // Padded extent every tap of every output pixel reaches, then the phase planes.
  const int64_t reach_h = CheckedAdd(CheckedMul(g.out_h - 1, g.stride_h, "padded input"),
                                     CheckedMul(g.kh - 1, g.dil_h, "padded input") + 1, "padded input");
  const int64_t reach_w = CheckedAdd(CheckedMul(g.out_w - 1, g.stride_w, "padded input"),
                                     CheckedMul(g.kw - 1, g.dil_w, "padded input") + 1, "padded input");
  const int64_t Hp = std::max(CheckedAdd(g.pad_top, g.in_h, "padded input"), reach_h);
  const int64_t Wp = std::max(CheckedAdd(g.pad_left, g.in_w, "padded input"), reach_w);
  cluspa::Geometry geo;
  geo.C = g.in_channels;
  geo.H = g.in_h;
  geo.W = g.in_w;
  geo.OH = g.out_h;
  geo.OW = g.out_w;
  geo.sh = g.stride_h;
  geo.sw = g.stride_w;
  geo.Hq = CeilDiv(Hp, g.stride_h);
  geo.Wq = CeilDiv(Wp, g.stride_w);
  geo.pad_top = g.pad_top;
  geo.pad_left = g.pad_left;
  const int64_t plane = CheckedMul(geo.Hq, geo.Wq, "phase planes");
  const int64_t group_floats =
      CheckedMul(CheckedMul(CheckedMul(g.in_per_group, g.stride_h, "phase planes"), g.stride_w, "phase planes"), plane,
                 "phase planes");
  // Entry offsets are 32-bit within a group, and the phase planes should not
  // dwarf the input (huge pads or strides around a small image): such inputs
  // run ORT's Conv instead.
  const int64_t xq_floats = CheckedAdd(CheckedMul(group_floats, g.group, "phase planes"), P + geo.Wq + 16,
                                       "phase planes");
  if (group_floats + P + geo.Wq >= (int64_t{1} << 32) - 1 ||
      xq_floats > 16 * (g.in_channels * g.in_plane()) + (int64_t{1} << 24)) {
    RunFallback(context, x, y);
    return;
  }
  const std::shared_ptr<const Offsets> offs = OffsetsFor(geo.Hq, geo.Wq, g.stride_h, g.stride_w, g.dil_h, g.dil_w);

  cluspa::Program prog;
  prog.seg_begin = seg_begin_.data();
  prog.seg_first = seg_first_.data();
  prog.seg_value = seg_value_.data();
  prog.offsets = offs->off.data();
  prog.entry_value = k.per_entry_fma ? entry_value_.data() : nullptr;
  prog.entry_first = entry_first_.data();
  prog.nblocks = nblocks_;
  prog.bias = bias_.data();
  prog.clamp = epilogue_.activation.kind != Activation::Kind::kNone;
  prog.lo = epilogue_.activation.lo;
  prog.hi = epilogue_.activation.hi;
  prog.residual = epilogue_.Residual(context, y);
  prog.y_base = y.GetTensorMutableData<float>();

  auto scratch = scratch_pool_.Acquire();
  scratch->xq.resize(static_cast<size_t>(xq_floats));
  float* xq = scratch->xq.data();
  std::memset(xq + xq_floats - (P + geo.Wq + 16), 0, sizeof(float) * (P + geo.Wq + 16));

  // Work items: (pixel block, channel chunk); chunks hold whole groups or lie
  // inside one group, and are split until there are enough items to share.
  const int64_t G = g.group, Mg = g.out_per_group;
  const int64_t pblocks = CeilDiv(out_plane / g.out_w * geo.Wq, P);
  int64_t chunk_ch = g.out_channels;
  if (pblocks < 16) chunk_ch = CeilDiv(g.out_channels, std::min<int64_t>(g.out_channels, CeilDiv(32, pblocks)));
  if (chunk_ch > Mg) chunk_ch = CeilDiv(chunk_ch, Mg) * Mg;
  const int64_t chunks = CeilDiv(g.out_channels, chunk_ch);
  const int64_t items = pblocks * chunks;
  // Small layers: one task each (the pool's hand-off costs more than the work).
  const int64_t work = CheckedMul(static_cast<int64_t>(rows_.size()) + g.out_channels, pblocks * P, "work");
  const int64_t compute_tasks = work < (int64_t{1} << 18) ? 1 : items;
  const int64_t build_floats = CheckedMul(group_floats, g.group, "phase planes");
  const int64_t build_tasks = build_floats < (int64_t{1} << 16) ? 1 : std::min<int64_t>(g.in_channels, 16);
  const int64_t tile_floats = k.per_entry_fma ? chunk_ch * P : 0;
  scratch->tiles.resize(static_cast<size_t>(CheckedMul(items, tile_floats, "tiles") + 16));
  float* tiles = scratch->tiles.data();
  tiles += (16 - (reinterpret_cast<uintptr_t>(tiles) / sizeof(float)) % 16) % 16;
  const float* xdata = x.GetTensorData<float>();
  float* ydata = y.GetTensorMutableData<float>();
  const int64_t image_in = g.in_channels * g.in_plane(), image_out = g.out_channels * out_plane;
  for (int64_t n = 0; n < g.batch; ++n) {
    const float* xn = xdata + n * image_in;
    float* yn = ydata + n * image_out;
    ParallelFor(context, g.in_channels, build_tasks, [&](int64_t c0, int64_t c1) { k.build_phases(geo, xn, c0, c1, xq); });
    ParallelFor(context, items, compute_tasks, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        float* tp = tiles + i * tile_floats;  // items never share a tile
        const int64_t c = i % chunks, pb = i / chunks;
        const int64_t o_begin = c * chunk_ch, o_end = std::min(g.out_channels, o_begin + chunk_ch);
        for (int64_t gi = o_begin / Mg; gi * Mg < o_end; ++gi) {
          const int64_t o0 = std::max(o_begin, gi * Mg), o1 = std::min(o_end, (gi + 1) * Mg);
          k.channels(geo, prog, xq + gi * group_floats, o0, o1, pb * P, yn, tp);
        }
      }
    });
  }
  (void)G;
}

}  // namespace onnxcompress

ONNXCOMPRESS_REGISTER_OP(ClusteredSparseConv);
