#include "qlinear_basis_maps.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace onnxcompress {

namespace {

enum Input : size_t { kX, kXScale, kXZero, kW, kWScale, kWZero, kYScale, kYZero, kB };

// A per-tensor quantization parameter: one element, rank 0 or 1.
ConstantTensor Scalar(const Ort::ConstKernelInfo& info, size_t index, const char* name,
                      ONNXTensorElementDataType type, const char* type_name) {
  ConstantTensor t = RequireConstant(info, index, name);
  Require(t.type == type, name, " must be ", type_name);
  Require(t.dims.size() <= 1 && t.count == 1, name, " must be a scalar (one element), got ", t.count, " elements");
  return t;
}

float PositiveScale(const ConstantTensor& t, int64_t i, const char* name) {
  const float v = t.As<float>()[i];
  Require(std::isfinite(v) && v > 0.0f, name, " must be finite and > 0, got ", v);
  return v;
}

// The kernels write whole vectors: positions are rounded up to this.
constexpr int64_t kRound = 16;

// A task's ring of the input rows (converted or packed) that its output rows read: one slot per
// row of the kernel's span, (kh - 1) * dil_h + 1, or per input row where the input is shorter.
// The rows one output row reads lie within the span, so they take distinct slots, and a row
// is filled once while it stays in the window. `tags` (slots of them) name the input row
// n * H + iy each slot holds.
struct RowRing {
  static int64_t Slots(const ConvGeometry& g) {
    return std::min(CheckedAdd(CheckedMul(g.kh - 1, g.dil_h, "kernel span"), 1, "kernel span"), g.in_h);
  }
  RowRing(int64_t slots, int64_t* tags) : slots_(slots), tags_(tags) {
    for (int64_t s = 0; s < slots_; ++s) tags_[s] = -1;
  }
  int64_t SlotOf(int64_t iy) const { return iy % slots_; }
  // The slot of input row iy of image n; `fill` is set where the slot does not hold it yet.
  int64_t Slot(int64_t n, int64_t iy, int64_t H, bool* fill) {
    const int64_t s = SlotOf(iy), tag = n * H + iy;
    *fill = tags_[s] != tag;
    tags_[s] = tag;
    return s;
  }

 private:
  int64_t slots_;
  int64_t* tags_;
};

}  // namespace

const qbm::Kernels* SelectQLinearBasisMapsKernels() {
  return PickKernels(qbm::KernelsAvx512, qbm::KernelsAvx2, qbm::KernelsGeneric);
}

ONNXTensorElementDataType QLinearBasisMaps::InputType(size_t i) {
  switch (i) {
    case kX:
    case kXZero:
    case kYZero:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
    case kW:
    case kWZero:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
    case kB:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    default:
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
}

Ort::Status QLinearBasisMaps::InferOutputShape(Ort::ShapeInferContext& ctx) {
  if (ctx.GetInputCount() < 8) return Ort::Status("QLinearBasisMaps needs QLinearConv's 8 inputs", ORT_INVALID_ARGUMENT);
  int64_t channels_last = 0;
  try {
    channels_last = ctx.GetAttrInt("channels_last");
  } catch (...) {
    channels_last = 0;  // absent
  }
  return InferConvOutputShapeFromWeight(ctx, kW, channels_last == 1, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8);
}

QLinearBasisMaps::QLinearBasisMaps(const Ort::ConstKernelInfo& info) {
  Require(info.GetInputCount() >= 8 && info.GetInputCount() <= 9,
          "expects QLinearConv's 8 or 9 inputs (X, x_scale, x_zero_point, W, w_scale, w_zero_point, y_scale, "
          "y_zero_point[, B]), got ", info.GetInputCount());
  attrs_ = ConvAttributes::FromNode(info);
  Require(!HasAttribute(info, "group"), "takes no group attribute: the d = M / C maps of every input channel "
          "are what it computes");
  for (const char* name : {"activation", "clip_min", "clip_max"}) {
    Require(!HasAttribute(info, name), "takes no fused activation (attribute ", name,
            "): fold it into y_scale / y_zero_point");
  }
  const int64_t channels_last = AttrInt(info, "channels_last", 0);
  Require(channels_last == 0 || channels_last == 1, "channels_last must be 0 or 1, got ", channels_last);
  channels_last_ = channels_last == 1;

  const ConstantTensor wt = RequireConstant(info, kW, "W");
  Require(wt.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8, "W must be int8");
  Require(wt.dims.size() == 4, "W must be 4-D [M, 1, kH, kW], got rank ", wt.dims.size());
  Require(wt.dims[1] == 1, "W must have one input channel per output (depthwise filters), got ", wt.dims[1]);
  out_channels_ = wt.dims[0];
  kh_ = wt.dims[2];
  kw_ = wt.dims[3];
  attrs_.Validate(out_channels_, kh_, kw_);
  const int64_t taps = kh_ * kw_, M = out_channels_;
  Require(taps * 255 * 128 < (int64_t{1} << 30), "kernel ", kh_, "x", kw_, " is too large for int32 sums");

  const float x_scale = PositiveScale(Scalar(info, kXScale, "x_scale", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "float32"),
                                      0, "x_scale");
  const float y_scale = PositiveScale(Scalar(info, kYScale, "y_scale", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "float32"),
                                      0, "y_scale");
  x_zero_point_ = Scalar(info, kXZero, "x_zero_point", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, "uint8").As<uint8_t>()[0];
  y_zero_point_ = Scalar(info, kYZero, "y_zero_point", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, "uint8").As<uint8_t>()[0];

  const ConstantTensor ws = RequireConstant(info, kWScale, "w_scale");
  Require(ws.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "w_scale must be float32");
  Require(ws.dims.size() <= 1 && (ws.count == 1 || ws.count == M), "w_scale must have 1 or M = ", M,
          " elements, got ", ws.count);
  const ConstantTensor wz = RequireConstant(info, kWZero, "w_zero_point");
  Require(wz.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8, "w_zero_point must be int8");
  Require(wz.dims.size() <= 1 && (wz.count == 1 || wz.count == M), "w_zero_point must have 1 or M = ", M,
          " elements, got ", wz.count);
  for (int64_t i = 0; i < wz.count; ++i) {
    Require(wz.As<int8_t>()[i] == 0, "w_zero_point must be 0 (symmetric s8 weights), got ",
            static_cast<int>(wz.As<int8_t>()[i]), " at ", i);
  }

  scales_.assign(static_cast<size_t>(M + 16), 1.0f);  // 16 past M: the VNNI path's last vector reads them
  for (int64_t o = 0; o < M; ++o) {
    const float w_scale = PositiveScale(ws, ws.count == 1 ? 0 : o, "w_scale");
    // QLinearConv's order of operations, so that the requantization matches bit for bit.
    scales_[o] = x_scale * w_scale / y_scale;
    Require(std::isfinite(scales_[o]), "x_scale * w_scale / y_scale overflows at output channel ", o);
  }
  weights_.resize(static_cast<size_t>(wt.count));
  weights_t_ = AlignedBuffer(weights_t_storage_, wt.count);
  for (int64_t o = 0; o < M; ++o) {
    for (int64_t t = 0; t < taps; ++t) {
      weights_[o * taps + t] = wt.As<int8_t>()[o * taps + t];
      weights_t_[t * M + o] = static_cast<float>(wt.As<int8_t>()[o * taps + t]);
    }
  }

  bias_.assign(static_cast<size_t>(M), 0);
  if (HasInput(info, kB)) {
    const ConstantTensor b = RequireConstant(info, kB, "B");
    Require(b.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, "B must be int32");
    Require(b.dims.size() == 1 && b.dims[0] == M, "B must have shape [", M, "]");
    std::memcpy(bias_.data(), b.data, sizeof(int32_t) * M);
    // With |B| < 2^30 and |sum| <= taps * 255 * 128 < 2^30 the int32 sums cannot overflow.
    for (int64_t o = 0; o < M; ++o) {
      Require(bias_[o] > -(int32_t{1} << 30) && bias_[o] < (int32_t{1} << 30), "B[", o, "] = ", bias_[o],
              " is outside (-2^30, 2^30)");
    }
  }
  int64_t max_abs_bias = 0;
  for (int64_t o = 0; o < M; ++o) max_abs_bias = std::max<int64_t>(max_abs_bias, std::abs(int64_t{bias_[o]}));
  if (qbm::FloatSumsExact(taps, max_abs_bias)) {
    float_bias_.assign(static_cast<size_t>(M + 16), 0.0f);  // 16 past M: whole vectors, as scales_
    for (int64_t o = 0; o < M; ++o) float_bias_[o] = static_cast<float>(bias_[o]);
  }
  kernels_ = SelectQLinearBasisMapsKernels();
  Require(kRound % kernels_->lanes == 0, "the ", kernels_->name, " kernels' vectors do not divide ", kRound);

  if (channels_last_ && kw_ <= 4 && VnniSelected() && qbm::RowKernelsAvx512Vnni() != nullptr) {
    rows_ = qbm::RowKernelsAvx512Vnni();
    const int64_t stride = M + 16;
    row_weights_.assign(static_cast<size_t>(CheckedMul(kh_, stride, "weights")), 0u);
    row_bias_.assign(static_cast<size_t>(stride), 0);
    for (int64_t o = 0; o < M; ++o) {
      int64_t sum = 0;
      for (int64_t ky = 0; ky < kh_; ++ky) {
        uint32_t lane = 0;
        for (int64_t kx = 0; kx < kw_; ++kx) {
          const int8_t v = wt.As<int8_t>()[o * taps + ky * kw_ + kx];
          lane |= static_cast<uint32_t>(static_cast<uint8_t>(v)) << (8 * kx);
          sum += v;
        }
        row_weights_[ky * stride + o] = lane;
      }
      // |B| < 2^30 and |x_zero_point * sum| < 255 * 128 * taps < 2^30: no overflow
      row_bias_[o] = static_cast<int32_t>(bias_[o] - x_zero_point_ * sum);
    }
  }
}

void QLinearBasisMaps::Compute(Ort::KernelContext& context) {
  Ort::ConstValue x = context.GetInput(kX);
  Require(x != nullptr && x.IsTensor(), "input X is missing");
  const auto x_info = x.GetTensorTypeAndShapeInfo();
  Require(x_info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, "X must be uint8");
  std::vector<int64_t> dims = x_info.GetShape();
  Require(dims.size() == 4, "input X must be 4-D, got rank ", dims.size());
  if (channels_last_) dims = {dims[0], dims[3], dims[1], dims[2]};  // the channels-first view
  const int64_t C = dims[1];
  Require(C >= 1 && out_channels_ % C == 0, "X has ", C, " channels, which must divide W's ", out_channels_,
          " outputs (d maps per channel)");
  const ConvGeometry g = ResolveConvGeometry(attrs_, dims, out_channels_, C, kh_, kw_);
  std::vector<int64_t> out_shape = g.OutputShape();
  if (channels_last_) out_shape = {out_shape[0], out_shape[2], out_shape[3], out_shape[1]};
  Ort::UnownedValue y = context.GetOutput(0, out_shape);
  if (g.batch == 0 || g.out_plane() == 0) return;
  const uint8_t* xdata = x.GetTensorData<uint8_t>();
  uint8_t* ydata = y.GetTensorMutableData<uint8_t>();
  // Channels last with VNNI: integer sums (where the packed rows stay small).
  if (rows_ != nullptr && ComputeRows(context, g, xdata, ydata)) return;
  // Channels last sums in float from the bias, exact for kernels of up to 514 taps and biases
  // below 2^24 - taps * 255 * 128; larger ones (no CNN has them) go through a channels-first copy.
  if (channels_last_ && !float_bias_.empty()) {
    ComputePixels(context, g, out_channels_ / C, xdata, ydata);
  } else if (channels_last_) {
    ComputeLastViaPlanes(context, g, out_channels_ / C, xdata, ydata);
  } else {
    ComputePlanes(context, g, out_channels_ / C, xdata, ydata);
  }
}

// Channels last: one task per block of consecutive output rows; each task keeps the input rows
// its outputs read, minus the zero point as float, in a ring of S = (kh-1)*dil_h + 1 rows of its
// own (as ComputeRows' packed rows: a float copy of the whole input did not stay in cache). Each
// ring row has zero columns at both ends where the pads reach (zero is the padding's value once
// the zero point is taken off), so that every pixel of an output row reads the same taps and
// the row is one kernel call; the taps are listed once per output row. Pads wider than the
// input (no CNN has them) keep the margins off: their pixels are taken one at a time with the
// taps inside the input (the border path).
void QLinearBasisMaps::ComputePixels(Ort::KernelContext& context, const ConvGeometry& g, int64_t d,
                                     const uint8_t* x, uint8_t* y) {
  const int64_t C = g.in_channels, H = g.in_h, W = g.in_w, OH = g.out_h, OW = g.out_w, M = g.out_channels;
  const int64_t taps = g.taps();
  // Columns read left of the input (by output column 0) and right of it (by the last one).
  const int64_t overhang_right = std::max<int64_t>(
      0, (OW - 1) * g.stride_w - g.pad_left + (g.kw - 1) * g.dil_w - (W - 1));
  const bool margins = g.pad_left + overhang_right <= W;
  const int64_t ml = margins ? g.pad_left : 0, mr = margins ? overhang_right : 0;
  const int64_t row = CheckedMul(W + ml + mr, C, "input row");
  const int64_t slots = RowRing::Slots(g);
  const int64_t ring = CeilDiv(CheckedMul(slots, row, "input rows"), 16) * 16;
  const int64_t items = g.batch * OH;
  const int64_t tasks = std::min<int64_t>(TaskSlots(items), 64);
  // Columns ox in [lo, hi) read input columns ox*sw - pad_left + kx*dil_w, all inside [-ml, W + mr)
  // (pads, kernel and input sizes are bounded by the geometry's checks: no overflow). With the
  // margins that is every column.
  const int64_t lo = std::min(OW, CeilDiv(g.pad_left - ml, g.stride_w));
  const int64_t last = W + mr - 1 + g.pad_left - (g.kw - 1) * g.dil_w;  // ox * stride_w <= last
  const int64_t hi = last < 0 ? lo : std::max(lo, std::min(OW, last / g.stride_w + 1));
  auto lease = SharedTaskBuffers().Acquire();
  TaskBuffers& buffers = *lease;
  // per task: the ring, then a tag per slot, a ring offset per kernel row, and an input and a
  // weight offset per tap for a border pixel and for the inner run (int64: two floats each)
  const int64_t index_words = CheckedAdd(slots + g.kh, CheckedMul(taps, 4, "taps"), "taps");
  buffers.Reserve(tasks, CheckedAdd(ring, CheckedMul(index_words, 2, "taps"), "input rows"));
  const qbm::Requant rq{scales_.data(), y_zero_point_};
  ParallelFor(context, items, tasks, [&](int64_t i0, int64_t i1) {
    const TaskBuffers::Borrowed buffer = buffers.Borrow();
    float* xs = buffer.data();
    int64_t* tags = reinterpret_cast<int64_t*>(buffer.data() + ring);
    int64_t* row_at = tags + slots;  // ring offset of the input row kernel row ky reads, -1 outside
    int64_t* offsets = row_at + g.kh;
    int64_t* weight_at = offsets + taps;  // offset of the tap's weights: tap index * M
    int64_t* inner_offsets = weight_at + taps;
    int64_t* inner_weights = inner_offsets + taps;
    RowRing rows(slots, tags);
    for (int64_t s = 0; s < slots && ml + mr > 0; ++s) {  // the margins stay zero: `shifted` writes between them
      std::fill(xs + s * row, xs + s * row + ml * C, 0.0f);
      std::fill(xs + s * row + (ml + W) * C, xs + (s + 1) * row, 0.0f);
    }
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n = i / OH, oy = i % OH;
      int64_t inner = 0;
      for (int64_t ky = 0; ky < g.kh; ++ky) {
        const int64_t iy = oy * g.stride_h - g.pad_top + ky * g.dil_h;
        row_at[ky] = -1;
        if (iy < 0 || iy >= H) continue;
        bool fill = false;
        const int64_t s = rows.Slot(n, iy, H, &fill);
        if (fill) kernels_->shifted(x + (n * H + iy) * W * C, W * C, x_zero_point_, xs + s * row + ml * C);
        row_at[ky] = s * row;
        for (int64_t kx = 0; kx < g.kw; ++kx) {  // relative to the run's first input column
          inner_offsets[inner] = row_at[ky] + kx * g.dil_w * C;
          inner_weights[inner++] = (ky * g.kw + kx) * M;
        }
      }
      uint8_t* yrow = y + (n * OH + oy) * OW * M;
      auto border = [&](int64_t ox) {
        int64_t count = 0;
        for (int64_t ky = 0; ky < g.kh; ++ky) {
          if (row_at[ky] < 0) continue;
          for (int64_t kx = 0; kx < g.kw; ++kx) {
            const int64_t ix = ox * g.stride_w - g.pad_left + kx * g.dil_w;
            if (ix < 0 || ix >= W) continue;
            offsets[count] = row_at[ky] + (ml + ix) * C;
            weight_at[count++] = (ky * g.kw + kx) * M;
          }
        }
        kernels_->pixels(xs, 0, 1, offsets, weight_at, count, C, d, weights_t_, float_bias_.data(), rq,
                        yrow + ox * M);
      };
      for (int64_t ox = 0; ox < lo; ++ox) border(ox);
      if (hi > lo) {
        // the run's first pixel reads ring column ml + lo*sw - pad_left >= 0 at kx = 0
        kernels_->pixels(xs + (ml + lo * g.stride_w - g.pad_left) * C, g.stride_w * C, hi - lo, inner_offsets,
                         inner_weights, inner, C, d, weights_t_, float_bias_.data(), rq, yrow + lo * M);
      }
      for (int64_t ox = hi; ox < OW; ++ox) border(ox);
    }
  });
}

// Channels last with VNNI: one task per block of consecutive output rows; each task packs the
// input rows its outputs read as row lanes (qbm::RowKernels) into a ring of S = (kh-1)*dil_h + 1
// rows of its own, each row once while it stays in the window (the kh - 1 rows a task shares
// with the one before it are packed by both). The ring stays in cache: a buffer of the whole
// packed input (4 bytes per input channel and output column) was written back to memory and
// read in again between nodes, which made the op 2-2.5x slower in a model than alone.
// False (nothing written) where the ring would be much larger than input and output (huge
// pads or dilations): the caller takes another path.
bool QLinearBasisMaps::ComputeRows(Ort::KernelContext& context, const ConvGeometry& g, const uint8_t* x,
                                   uint8_t* y) {
  const int64_t N = g.batch, C = g.in_channels, H = g.in_h, W = g.in_w, OH = g.out_h, OW = g.out_w,
                M = g.out_channels;
  const int64_t Cp = CeilDiv(C, 16) * 16;
  const int64_t row = CheckedMul(OW, Cp, "packed row");  // uint32 lanes (= floats) of one packed row
  const int64_t slots = RowRing::Slots(g);
  const int64_t ring = CheckedMul(slots + 1, row, "packed rows");  // + a row of zero points
  const int64_t in_bytes = CheckedMul(N * H, W * C, "input"), out_bytes = CheckedMul(N * OH, OW * M, "output");
  if (ring > 4 * (in_bytes + out_bytes) + (int64_t{1} << 18)) return false;
  const int64_t items = N * OH;
  // As many tasks as threads could run (each repacks up to kh - 1 rows at its start).
  const int64_t tasks = std::min<int64_t>(TaskSlots(items), 64);
  auto buffers_lease = SharedTaskBuffers().Acquire();
  TaskBuffers& buffers = *buffers_lease;
  // per task: the ring, then a tag per slot and a pointer per kernel row (two floats each)
  buffers.Reserve(tasks, CheckedAdd(ring, CheckedMul(slots + g.kh, 2, "ring tags"), "packed rows"));
  const uint8_t zp = static_cast<uint8_t>(x_zero_point_);
  ParallelFor(context, items, tasks, [&](int64_t i0, int64_t i1) {
    const TaskBuffers::Borrowed buffer = buffers.Borrow();
    uint32_t* lanes = reinterpret_cast<uint32_t*>(buffer.data());
    uint32_t* zp_row = lanes + slots * row;  // outside the input: every byte the zero point
    int64_t* tags = reinterpret_cast<int64_t*>(buffer.data() + ring);
    const uint32_t** taps = reinterpret_cast<const uint32_t**>(tags + slots);
    std::memset(zp_row, zp, sizeof(uint32_t) * row);
    RowRing packed(slots, tags);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n = i / OH, oy = i % OH;
      for (int64_t ky = 0; ky < g.kh; ++ky) {
        const int64_t iy = oy * g.stride_h - g.pad_top + ky * g.dil_h;
        if (iy < 0 || iy >= H) {
          taps[ky] = zp_row;
          continue;
        }
        bool fill = false;
        uint32_t* t = lanes + packed.Slot(n, iy, H, &fill) * row;
        if (fill) rows_->pack_row(x + (n * H + iy) * W * C, W, C, OW, g.stride_w, g.pad_left, g.dil_w, g.kw, zp, t);
        taps[ky] = t;
      }
      rows_->output_row(taps, g.kh, OW, C, M, row_weights_.data(), M + 16, row_bias_.data(),
                        scales_.data(), y_zero_point_, y + i * OW * M);
    }
  });
  return true;
}

// Channels last with a kernel too large for exact float sums: through channels-first copies.
void QLinearBasisMaps::ComputeLastViaPlanes(Ort::KernelContext& context, const ConvGeometry& g, int64_t d,
                                            const uint8_t* x, uint8_t* y) {
  const int64_t N = g.batch, C = g.in_channels, HW = g.in_plane(), M = g.out_channels, OHW = g.out_plane();
  std::vector<uint8_t> xt(static_cast<size_t>(CheckedMul(N * C, HW, "input"))), yt(static_cast<size_t>(
      CheckedMul(N * M, OHW, "output")));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t p = 0; p < HW; ++p)
      for (int64_t c = 0; c < C; ++c) xt[(n * C + c) * HW + p] = x[(n * HW + p) * C + c];
  ComputePlanes(context, g, d, xt.data(), yt.data());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t p = 0; p < OHW; ++p)
      for (int64_t o = 0; o < M; ++o) y[(n * OHW + p) * M + o] = yt[(n * M + o) * OHW + p];
}

// Channels first: each input channel is padded once (stride-phase planes, as BasisConv's)
// and its d maps are swept over all output rows at once.
void QLinearBasisMaps::ComputePlanes(Ort::KernelContext& context, const ConvGeometry& g, int64_t d,
                                     const uint8_t* xdata, uint8_t* ydata) {
  const int64_t C = g.in_channels, H = g.in_h, W = g.in_w, OH = g.out_h, OW = g.out_w, M = g.out_channels;
  const int64_t sh = g.stride_h, sw = g.stride_w, taps = g.taps();
  const int32_t xz = x_zero_point_;
  // Stride-phase planes (conv_geometry.h), one input channel at a time.
  const PhasePlanes pp = PhasePlanes::Of(g);
  const int64_t Hq = pp.Hq, Wq = pp.Wq, phase = pp.phase, Q = pp.positions, plane_used = pp.used;
  const std::vector<int64_t>& tap_off = pp.tap_off;
  const int64_t Qp = CeilDiv(Q, kRound) * kRound;
  const int64_t plane = std::max(plane_used, CheckedAdd(Qp, pp.max_off, "padded input"));
  // Huge pads, strides or dilations around a small input: the planes (or the thrown-away
  // positions) would dwarf input and output, so the sums are taken straight from the input.
  const bool direct = plane > 4 * g.in_plane() + (int64_t{1} << 20) || Q > 4 * g.out_plane() + 4096;
  const int64_t positions = direct ? CeilDiv(OW, kRound) * kRound : Qp;
  const int64_t plane_floats = direct ? 0 : CeilDiv(plane, 16) * 16;  // int32 values in 64-byte units
  const int64_t acc_floats = CeilDiv(positions, 16) * 16 + 16;        // int32 sums, a vector of slack
  const int64_t items = g.batch * C;
  const int64_t tasks = std::min<int64_t>(items, 64);
  auto lease = SharedTaskBuffers().Acquire();
  TaskBuffers& buffers = *lease;
  buffers.Reserve(TaskSlots(tasks), plane_floats + acc_floats);

  ParallelFor(context, items, tasks, [&](int64_t i0, int64_t i1) {
    const TaskBuffers::Borrowed buffer = buffers.Borrow();
    int32_t* P = reinterpret_cast<int32_t*>(buffer.data());
    int32_t* acc = reinterpret_cast<int32_t*>(buffer.data() + plane_floats);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n = i / C, c = i % C;
      const uint8_t* src = xdata + (n * C + c) * H * W;
      if (!direct) {
        std::memset(P, 0, sizeof(int32_t) * plane);
        for (int64_t ry = 0; ry < sh; ++ry) {
          for (int64_t rx = 0; rx < sw; ++rx) {
            int32_t* base = P + (ry * sw + rx) * phase;
            // columns qx with 0 <= qx*sw + rx - pad_left < W
            const int64_t a = std::min(Wq, CeilDiv(std::max<int64_t>(0, g.pad_left - rx), sw));
            const int64_t e = std::max(a, std::min(Wq, CeilDiv(std::max<int64_t>(0, W + g.pad_left - rx), sw)));
            const int64_t shift = rx - g.pad_left;  // column qx reads input column qx*sw + shift
            for (int64_t qy = 0; qy < Hq; ++qy) {
              const int64_t iy = qy * sh + ry - g.pad_top;
              if (iy < 0 || iy >= H) continue;
              int32_t* row = base + qy * Wq;
              const uint8_t* srow = src + iy * W;
              if (sw == 1) {
                const uint8_t* from = srow + (a + shift);
                int32_t* to = row + a;
                for (int64_t qx = 0; qx < e - a; ++qx) to[qx] = static_cast<int32_t>(from[qx]) - xz;
              } else {
                for (int64_t qx = a; qx < e; ++qx) row[qx] = static_cast<int32_t>(srow[qx * sw + shift]) - xz;
              }
            }
          }
        }
      }
      for (int64_t m = 0; m < d; ++m) {
        const int64_t o = m * C + c;
        const int32_t* w = weights_.data() + o * taps;
        uint8_t* yo = ydata + (n * M + o) * OH * OW;
        if (!direct) {
          kernels_->plane(P, tap_off.data(), w, taps, bias_[o], Qp, acc);
          kernels_->requantize_plane(acc, Wq, OH, OW, scales_[o], y_zero_point_, yo);
          continue;
        }
        for (int64_t oy = 0; oy < OH; ++oy) {
          for (int64_t ox = 0; ox < OW; ++ox) {
            int32_t sum = bias_[o];
            for (int64_t ky = 0; ky < g.kh; ++ky) {
              const int64_t iy = oy * sh - g.pad_top + ky * g.dil_h;
              if (iy < 0 || iy >= H) continue;
              for (int64_t kx = 0; kx < g.kw; ++kx) {
                const int64_t ix = ox * sw - g.pad_left + kx * g.dil_w;
                if (ix >= 0 && ix < W) sum += w[ky * g.kw + kx] * (static_cast<int32_t>(src[iy * W + ix]) - xz);
              }
            }
            acc[ox] = sum;
          }
          for (int64_t ox = OW; ox < positions; ++ox) acc[ox] = 0;
          kernels_->requantize_plane(acc, positions, 1, OW, scales_[o], y_zero_point_, yo + oy * OW);
        }
      }
    }
  });
}

}  // namespace onnxcompress

ONNXCOMPRESS_REGISTER_OP(QLinearBasisMaps);
