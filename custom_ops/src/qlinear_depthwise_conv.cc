#include "qlinear_depthwise_conv.h"

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

}  // namespace

const qdw::Kernels* SelectQLinearDepthwiseKernels() {
  return PickKernels(qdw::KernelsAvx512, qdw::KernelsAvx2, qdw::KernelsGeneric);
}

ONNXTensorElementDataType QLinearDepthwiseConv::InputType(size_t i) {
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

Ort::Status QLinearDepthwiseConv::InferOutputShape(Ort::ShapeInferContext& ctx) {
  if (ctx.GetInputCount() < 8) return Ort::Status("QLinearDepthwiseConv needs QLinearConv's 8 inputs", ORT_INVALID_ARGUMENT);
  return InferConvOutputShapeFromWeight(ctx, kW);
}

QLinearDepthwiseConv::QLinearDepthwiseConv(const Ort::ConstKernelInfo& info) {
  Require(info.GetInputCount() >= 8 && info.GetInputCount() <= 9,
          "expects QLinearConv's 8 or 9 inputs (X, x_scale, x_zero_point, W, w_scale, w_zero_point, y_scale, "
          "y_zero_point[, B]), got ", info.GetInputCount());
  attrs_ = ConvAttributes::FromNode(info);
  for (const char* name : {"activation", "clip_min", "clip_max"}) {
    Require(!HasAttribute(info, name), "takes no fused activation (attribute ", name,
            "): fold it into y_scale / y_zero_point");
  }

  const ConstantTensor wt = RequireConstant(info, kW, "W");
  Require(wt.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8, "W must be int8");
  Require(wt.dims.size() == 4, "W must be 4-D [M, 1, kH, kW], got rank ", wt.dims.size());
  Require(wt.dims[1] == 1, "W must have one input channel per group (a depthwise filter), got ", wt.dims[1]);
  out_channels_ = wt.dims[0];
  kh_ = wt.dims[2];
  kw_ = wt.dims[3];
  attrs_.Validate(out_channels_, kh_, kw_);
  channels_ = attrs_.group;
  multiplier_ = out_channels_ / channels_;
  const int64_t taps = kh_ * kw_, M = out_channels_;

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

  scales_.resize(static_cast<size_t>(M));
  for (int64_t o = 0; o < M; ++o) {
    const float w_scale = PositiveScale(ws, ws.count == 1 ? 0 : o, "w_scale");
    // QLinearConv's order of operations, so that the requantization matches bit for bit.
    scales_[o] = x_scale * w_scale / y_scale;
    Require(std::isfinite(scales_[o]), "x_scale * w_scale / y_scale overflows at output channel ", o);
  }
  weights_.resize(static_cast<size_t>(wt.count));
  for (int64_t i = 0; i < wt.count; ++i) weights_[i] = wt.As<int8_t>()[i];
  Require(taps * 255 * 128 < (int64_t{1} << 30), "kernel ", kh_, "x", kw_, " is too large for int32 sums");

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
  kernels_ = SelectQLinearDepthwiseKernels();
}

void QLinearDepthwiseConv::Compute(Ort::KernelContext& context) {
  Ort::ConstValue x = context.GetInput(kX);
  Require(x != nullptr && x.IsTensor(), "input X is missing");
  const auto x_info = x.GetTensorTypeAndShapeInfo();
  Require(x_info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, "X must be uint8");
  const ConvGeometry g = ResolveConvGeometry(attrs_, x_info.GetShape(), out_channels_, 1, kh_, kw_);
  Ort::UnownedValue y = context.GetOutput(0, g.OutputShape());
  if (g.batch == 0 || g.out_plane() == 0 || g.out_channels == 0) return;

  const int64_t C = g.in_channels, H = g.in_h, W = g.in_w, OH = g.out_h, OW = g.out_w, M = g.out_channels;
  const int64_t d = multiplier_, sh = g.stride_h, sw = g.stride_w, taps = g.taps();
  const uint8_t* xdata = x.GetTensorData<uint8_t>();
  uint8_t* ydata = y.GetTensorMutableData<uint8_t>();
  const int32_t xz = x_zero_point_;

  // Padded planes by column stride phase: row r, phase rx, column q hold padded
  // input (r, q*sw + rx); Hp x Wq covers every row and column an output reads.
  const int64_t Hp = CheckedAdd(CheckedMul(OH - 1, sh, "padded input"), CheckedMul(g.kh - 1, g.dil_h, "padded input") + 1,
                                "padded input");
  const int64_t reach_w = CheckedAdd(CheckedMul(OW - 1, sw, "padded input"),
                                     CheckedMul(g.kw - 1, g.dil_w, "padded input") + 1, "padded input");
  const int64_t Wq = CeilDiv(reach_w, sw);
  const int64_t plane = CheckedMul(CheckedMul(sw, Hp, "padded input"), Wq, "padded input");
  // Huge pads or strides around a small input: the padded copy would dwarf the input, so the
  // sums are taken straight from the input instead (slower, same result).
  const bool direct = plane > 4 * g.in_plane() + (int64_t{1} << 20);
  std::vector<int64_t> tap_rel(static_cast<size_t>(taps));
  for (int64_t ky = 0; ky < g.kh; ++ky) {
    for (int64_t kx = 0; kx < g.kw; ++kx) {
      const int64_t cx = kx * g.dil_w;
      tap_rel[ky * g.kw + kx] = ((cx % sw) * Hp + ky * g.dil_h) * Wq + cx / sw;
    }
  }
  const int64_t plane_floats = direct ? 0 : CeilDiv(plane, 32) * 16;  // int16 values, rounded to 64 bytes
  const int64_t items = g.batch * C;
  const int64_t tasks = std::min<int64_t>(items, 64);
  auto lease = SharedTaskBuffers().Acquire();
  TaskBuffers& buffers = *lease;
  buffers.Reserve(TaskSlots(tasks), plane_floats + CeilDiv(OW, 16) * 16);

  ParallelFor(context, items, tasks, [&](int64_t i0, int64_t i1) {
    const TaskBuffers::Borrowed buffer = buffers.Borrow();
    int16_t* P = reinterpret_cast<int16_t*>(buffer.data());
    int32_t* acc = reinterpret_cast<int32_t*>(buffer.data() + plane_floats);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n = i / C, c = i % C;
      const uint8_t* src = xdata + (n * C + c) * H * W;
      if (!direct) {
        for (int64_t rx = 0; rx < sw; ++rx) {
          for (int64_t r = 0; r < Hp; ++r) {
            int16_t* row = P + (rx * Hp + r) * Wq;
            const int64_t iy = r - g.pad_top;
            if (iy < 0 || iy >= H) {
              std::memset(row, 0, sizeof(int16_t) * Wq);
              continue;
            }
            const uint8_t* srow = src + iy * W;
            for (int64_t q = 0; q < Wq; ++q) {
              const int64_t ix = q * sw + rx - g.pad_left;
              row[q] = (ix >= 0 && ix < W) ? static_cast<int16_t>(srow[ix] - xz) : int16_t{0};
            }
          }
        }
      }
      for (int64_t m = 0; m < d; ++m) {
        const int64_t o = c * d + m;
        const int32_t* w = weights_.data() + o * taps;
        uint8_t* yo = ydata + (n * M + o) * OH * OW;
        for (int64_t oy = 0; oy < OH; ++oy) {
          if (!direct) {
            kernels_->row(P + oy * sh * Wq, tap_rel.data(), w, taps, bias_[o], OW, acc);
          } else {
            for (int64_t ox = 0; ox < OW; ++ox) {
              int32_t a = bias_[o];
              for (int64_t ky = 0; ky < g.kh; ++ky) {
                const int64_t iy = oy * sh - g.pad_top + ky * g.dil_h;
                if (iy < 0 || iy >= H) continue;
                for (int64_t kx = 0; kx < g.kw; ++kx) {
                  const int64_t ix = ox * sw - g.pad_left + kx * g.dil_w;
                  if (ix >= 0 && ix < W) a += w[ky * g.kw + kx] * (static_cast<int32_t>(src[iy * W + ix]) - xz);
                }
              }
              acc[ox] = a;
            }
          }
          kernels_->requantize(acc, OW, scales_[o], y_zero_point_, yo + oy * OW);
        }
      }
    }
  });
}

}  // namespace onnxcompress

ONNXCOMPRESS_REGISTER_OP(QLinearDepthwiseConv);
