#include "conv_geometry.h"

#include <algorithm>

namespace onnxcompress {

namespace {
constexpr int64_t kMaxKernel = 1 << 12;
constexpr int64_t kMaxStrideOrDilation = 1 << 12;
constexpr int64_t kMaxPad = 1 << 16;
}  // namespace

namespace {
// Reads the Conv attributes from any source with Int/Ints/String(name, fallback).
template <typename Source>
ConvAttributes ReadConvAttributes(const Source& info) {
  ConvAttributes a;
  a.auto_pad = info.String("auto_pad", "NOTSET");
  Require(a.auto_pad == "NOTSET" || a.auto_pad == "SAME_UPPER" || a.auto_pad == "SAME_LOWER" ||
              a.auto_pad == "VALID",
          "attribute auto_pad must be NOTSET, SAME_UPPER, SAME_LOWER or VALID, got '", a.auto_pad, "'");
  const auto pads = info.Ints("pads", {0, 0, 0, 0});
  Require(pads.size() == 4, "attribute pads must have 4 values (2-D Conv), got ", pads.size());
  for (int i = 0; i < 4; ++i) a.pads[i] = pads[i];
  const auto strides = info.Ints("strides", {1, 1});
  Require(strides.size() == 2, "attribute strides must have 2 values, got ", strides.size());
  a.strides = {strides[0], strides[1]};
  const auto dilations = info.Ints("dilations", {1, 1});
  Require(dilations.size() == 2, "attribute dilations must have 2 values, got ", dilations.size());
  a.dilations = {dilations[0], dilations[1]};
  a.group = info.Int("group", 1);
  a.kernel_shape = info.Ints("kernel_shape", {});
  return a;
}

struct KernelInfoSource {
  const Ort::ConstKernelInfo& info;
  int64_t Int(const char* n, int64_t d) const { return AttrInt(info, n, d); }
  std::vector<int64_t> Ints(const char* n, const std::vector<int64_t>& d) const { return AttrInts(info, n, d); }
  std::string String(const char* n, const std::string& d) const { return AttrString(info, n, d); }
};

// ORT's shape-inference context has no "has attribute": a read that fails
// means the attribute is absent (its value is validated at kernel creation).
struct ShapeInferSource {
  Ort::ShapeInferContext& ctx;
  template <typename T, typename Read>
  static T Or(T d, Read read) {
    try {
      return read();
    } catch (const std::exception&) {
      return d;
    }
  }
  int64_t Int(const char* n, int64_t d) const { return Or(d, [&] { return ctx.GetAttrInt(n); }); }
  std::vector<int64_t> Ints(const char* n, const std::vector<int64_t>& d) const {
    return Or(d, [&] { return ctx.GetAttrInts(n); });
  }
  std::string String(const char* n, const std::string& d) const {
    return Or(d, [&] { return ShapeInferAttrString(n); });  // not ctx.GetAttrString (common.h)
  }
};
}  // namespace

ConvAttributes ConvAttributes::FromNode(const Ort::ConstKernelInfo& info) {
  return ReadConvAttributes(KernelInfoSource{info});
}

ConvAttributes ConvAttributes::FromShapeInference(Ort::ShapeInferContext& ctx) {
  return ReadConvAttributes(ShapeInferSource{ctx});
}

Ort::Status InferConvOutputShape(Ort::ShapeInferContext& ctx, const std::vector<int64_t>& filter, bool channels_last,
                                 ONNXTensorElementDataType type) {
  try {
    Require(filter.size() == 4, "filter shape must be 4-D");
    const std::vector<InferDim> x = ShapeInferInputShape(0);
    Require(x.size() == 4, "input X must be 4-D, got rank ", x.size());
    const int h = channels_last ? 1 : 2;  // index of X's (and Y's) first spatial axis
    const ConvAttributes a = ConvAttributes::FromShapeInference(ctx);
    a.Validate(filter[0], filter[2], filter[3]);
    std::vector<InferDim> out(4);
    out[0] = x[0];
    out[channels_last ? 3 : 1].value = filter[0];
    for (int axis = 0; axis < 2; ++axis) {
      if (x[h + axis].value >= 0) out[h + axis].value = ConvOutputSize(a, axis, x[h + axis].value, filter[2 + axis], nullptr);
    }
    ShapeInferSetOutputShape(0, out, type);
    return Ort::Status{nullptr};
  } catch (const std::exception& e) {
    return Ort::Status(e.what(), ORT_INVALID_ARGUMENT);
  }
}

Ort::Status InferConvOutputShapeFromWeight(Ort::ShapeInferContext& ctx, size_t weight_index, bool channels_last,
                                           ONNXTensorElementDataType type) {
  if (weight_index >= ctx.GetInputCount()) return Ort::Status("weight input is missing", ORT_INVALID_ARGUMENT);
  std::vector<int64_t> filter;
  for (const auto& d : ctx.GetInputShape(weight_index)) {
    if (!d.IsInt() || d.AsInt() < 0) return Ort::Status{nullptr};  // unknown: leave the output shape open
    filter.push_back(d.AsInt());
  }
  return InferConvOutputShape(ctx, filter, channels_last, type);
}

void ConvAttributes::Validate(int64_t out_channels, int64_t kh, int64_t kw) const {
  for (int i = 0; i < 4; ++i) {
    Require(pads[i] >= 0 && pads[i] <= kMaxPad, "pads must be in [0, ", kMaxPad, "], got ", pads[i]);
  }
  if (auto_pad != "NOTSET") {
    Require(pads[0] == 0 && pads[1] == 0 && pads[2] == 0 && pads[3] == 0,
            "pads must be 0 (or absent) when auto_pad is ", auto_pad);
  }
  for (int i = 0; i < 2; ++i) {
    Require(strides[i] >= 1 && strides[i] <= kMaxStrideOrDilation, "strides must be in [1, ",
            kMaxStrideOrDilation, "], got ", strides[i]);
    Require(dilations[i] >= 1 && dilations[i] <= kMaxStrideOrDilation, "dilations must be in [1, ",
            kMaxStrideOrDilation, "], got ", dilations[i]);
  }
  Require(kh >= 1 && kw >= 1 && kh <= kMaxKernel && kw <= kMaxKernel, "kernel size must be in [1, ",
          kMaxKernel, "], got ", kh, "x", kw);
  Require(group >= 1, "group must be >= 1, got ", group);
  Require(out_channels >= 1 && out_channels % group == 0, "output channels (", out_channels,
          ") must be a positive multiple of group (", group, ")");
  if (!kernel_shape.empty()) {
    Require(kernel_shape.size() == 2 && kernel_shape[0] == kh && kernel_shape[1] == kw,
            "attribute kernel_shape does not match the weights (", kh, "x", kw, ")");
  }
}

PhasePlanes PhasePlanes::Of(const ConvGeometry& g) {
  PhasePlanes p;
  const int64_t sh = g.stride_h, sw = g.stride_w;
  const int64_t reach_h = CheckedAdd(CheckedMul(g.out_h - 1, sh, "padded input"),
                                     CheckedMul(g.kh - 1, g.dil_h, "padded input") + 1, "padded input");
  const int64_t reach_w = CheckedAdd(CheckedMul(g.out_w - 1, sw, "padded input"),
                                     CheckedMul(g.kw - 1, g.dil_w, "padded input") + 1, "padded input");
  p.Hq = CeilDiv(reach_h, sh);
  p.Wq = CeilDiv(reach_w, sw);
  p.phase = CheckedMul(p.Hq, p.Wq, "padded input");
  p.used = CheckedMul(CheckedMul(sh, sw, "padded input"), p.phase, "padded input");
  p.positions = CheckedMul(g.out_h, p.Wq, "positions");
  p.tap_off.resize(static_cast<size_t>(g.taps()));
  for (int64_t ky = 0; ky < g.kh; ++ky) {
    for (int64_t kx = 0; kx < g.kw; ++kx) {
      const int64_t ry = ky * g.dil_h, rx = kx * g.dil_w;
      const int64_t off = ((ry % sh) * sw + rx % sw) * p.phase + (ry / sh) * p.Wq + rx / sw;
      p.tap_off[ky * g.kw + kx] = off;
      p.max_off = std::max(p.max_off, off);
    }
  }
  return p;
}

int64_t ConvOutputSize(const ConvAttributes& a, int axis, int64_t in, int64_t k, int64_t* pad_begin) {
  const int64_t stride = a.strides[axis];
  const int64_t extent = CheckedAdd(CheckedMul(a.dilations[axis], k - 1, "dilated kernel"), 1, "dilated kernel");
  int64_t begin = 0, out = 0;
  if (a.auto_pad == "NOTSET") {
    begin = a.pads[axis];
    const int64_t padded = CheckedAdd(CheckedAdd(in, a.pads[axis], "padded input"), a.pads[axis + 2], "padded input");
    Require(padded >= extent, "input size ", in, " (padded ", padded, ") is smaller than the dilated kernel ",
            extent, " on axis ", axis + 2);
    out = (padded - extent) / stride + 1;
  } else if (a.auto_pad == "VALID") {
    Require(in >= extent, "input size ", in, " is smaller than the dilated kernel ", extent, " on axis ", axis + 2);
    out = (in - extent) / stride + 1;
  } else {  // SAME_UPPER / SAME_LOWER: output = ceil(in / stride)
    out = CheckedAdd(in, stride - 1, "input size") / stride;
    const int64_t reach = out == 0 ? 0 : CheckedAdd(CheckedMul(out - 1, stride, "input size"), extent, "input size");
    const int64_t total = std::max<int64_t>(0, reach - in);
    begin = a.auto_pad == "SAME_UPPER" ? total / 2 : total - total / 2;
  }
  if (pad_begin) *pad_begin = begin;
  return out;
}

ConvGeometry ResolveConvGeometry(const ConvAttributes& a, const std::vector<int64_t>& x,
                                 int64_t out_channels, int64_t in_per_group, int64_t kh, int64_t kw) {
  Require(x.size() == 4, "input X must be 4-D [N, C, H, W], got rank ", x.size());
  for (int64_t d : x) Require(d >= 0, "input X has a negative dimension");
  ConvGeometry g;
  g.batch = x[0];
  g.in_channels = x[1];
  g.in_h = x[2];
  g.in_w = x[3];
  g.group = a.group;
  g.out_channels = out_channels;
  g.out_per_group = out_channels / a.group;
  g.in_per_group = in_per_group;
  Require(CheckedMul(in_per_group, a.group, "input channels") == g.in_channels, "input X has ", g.in_channels,
          " channels but the weights expect ", in_per_group, " x group ", a.group);
  g.kh = kh;
  g.kw = kw;
  g.stride_h = a.strides[0];
  g.stride_w = a.strides[1];
  g.dil_h = a.dilations[0];
  g.dil_w = a.dilations[1];
  g.out_h = ConvOutputSize(a, 0, g.in_h, kh, &g.pad_top);
  g.out_w = ConvOutputSize(a, 1, g.in_w, kw, &g.pad_left);
  // Every size a kernel computes from the geometry must fit: each product is
  // checked before it is formed (after this, in_plane(), out_plane() and
  // taps() and the products below cannot overflow).
  const int64_t in_plane = CheckedMul(g.in_h, g.in_w, "input plane");
  const int64_t out_plane = CheckedMul(g.out_h, g.out_w, "output plane");
  const int64_t taps = CheckedMul(kh, kw, "kernel");
  CheckedMul(g.batch, g.in_channels, in_plane, "input");
  CheckedMul(g.batch, g.out_channels, out_plane, "output");
  CheckedMul(CheckedMul(g.in_channels, taps, "im2col row"), out_plane, "im2col");
  return g;
}

}  // namespace onnxcompress
