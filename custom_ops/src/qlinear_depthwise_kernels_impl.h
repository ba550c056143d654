// Template code of the QLinearDepthwiseConv kernels; included by exactly one
// translation unit per instruction set, which first defines
//   QDW_NS     namespace of this instantiation (keeps the builds apart)
//   QDW_NAME   name reported in the table
// Plain loops of fixed trip count that the compiler vectorizes with the
// translation unit's flags; nothing from the standard library that could be
// instantiated out of line.
#include <cstdint>
#include <cstring>

#include "qlinear_depthwise_kernels.h"

namespace onnxcompress {
namespace qdw {
namespace QDW_NS {
namespace {

constexpr int64_t kBlock = 64;  // output columns whose sums stay in registers across the taps

void Row(const int16_t* src, const int64_t* tap_off, const int32_t* w, int64_t taps, int32_t bias, int64_t ow,
         int32_t* acc) {
  int64_t x0 = 0;
  for (; x0 + kBlock <= ow; x0 += kBlock) {
    int32_t a[kBlock];
    for (int64_t j = 0; j < kBlock; ++j) a[j] = bias;
    for (int64_t t = 0; t < taps; ++t) {
      const int16_t* s = src + tap_off[t] + x0;
      const int32_t wt = w[t];
      for (int64_t j = 0; j < kBlock; ++j) a[j] += wt * static_cast<int32_t>(s[j]);
    }
    for (int64_t j = 0; j < kBlock; ++j) acc[x0 + j] = a[j];
  }
  const int64_t rest = ow - x0;
  if (rest > 0) {
    for (int64_t j = 0; j < rest; ++j) acc[x0 + j] = bias;
    for (int64_t t = 0; t < taps; ++t) {
      const int16_t* s = src + tap_off[t] + x0;
      const int32_t wt = w[t];
      for (int64_t j = 0; j < rest; ++j) acc[x0 + j] += wt * static_cast<int32_t>(s[j]);
    }
  }
}

// MLAS's requantization: clamp in float to [-zp, 255 - zp], round half to even by adding
// 1.5 * 2^23 and reading the low mantissa bits, then add the zero point.
void Requantize(const int32_t* acc, int64_t n, float scale, int32_t zero_point, uint8_t* y) {
  const float lo = static_cast<float>(0 - zero_point), hi = static_cast<float>(255 - zero_point);
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  constexpr int32_t kMagicBits = 0x4B400000;
  for (int64_t i = 0; i < n; ++i) {
    float v = static_cast<float>(acc[i]) * scale;
    v = v < lo ? lo : v;
    v = v > hi ? hi : v;
    const float r = v + kMagic;
    int32_t bits;
    std::memcpy(&bits, &r, sizeof(bits));
    y[i] = static_cast<uint8_t>(bits - kMagicBits + zero_point);
  }
}

}  // namespace

const Kernels kTable = {QDW_NAME, Row, Requantize};

}  // namespace QDW_NS
}  // namespace qdw
}  // namespace onnxcompress
