#include "common.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <thread>

namespace onnxcompress {

int64_t CheckedMul(int64_t a, int64_t b, const char* what) {
  // Operands are checked first; __builtin_mul_overflow never forms a wrapped product.
  int64_t out;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &out) || out > kMaxCount) {
    Fail(what, " is too large (", a, " x ", b, ")");
  }
  return out;
}

int64_t CheckedMul(int64_t a, int64_t b, int64_t c, const char* what) {
  return CheckedMul(CheckedMul(a, b, what), c, what);
}

int64_t CheckedAdd(int64_t a, int64_t b, const char* what) {
  int64_t out;
  if (__builtin_add_overflow(a, b, &out) || out > kMaxCount || out < -kMaxCount) Fail(what, " overflows");
  return out;
}

namespace {
const OrtShapeInferContext*& CurrentShapeInferContext() {
  thread_local const OrtShapeInferContext* current = nullptr;
  return current;
}
}  // namespace

ShapeInferScope::ShapeInferScope(const OrtShapeInferContext* ctx) : previous_(CurrentShapeInferContext()) {
  CurrentShapeInferContext() = ctx;
}

ShapeInferScope::~ShapeInferScope() { CurrentShapeInferContext() = previous_; }

std::vector<InferDim> ShapeInferInputShape(size_t index) {
  const OrtShapeInferContext* ctx = CurrentShapeInferContext();
  if (ctx == nullptr) throw std::logic_error("ShapeInferInputShape outside a shape inference");
  const OrtApi& api = Ort::GetApi();
  OrtTensorTypeAndShapeInfo* info = nullptr;
  Ort::ThrowOnError(api.ShapeInferContext_GetInputTypeShape(ctx, index, &info));  // ORT keeps it
  size_t rank = 0;
  Ort::ThrowOnError(api.GetDimensionsCount(info, &rank));
  std::vector<int64_t> values(rank);
  std::vector<const char*> symbols(rank, nullptr);
  if (rank > 0) {
    Ort::ThrowOnError(api.GetDimensions(info, values.data(), rank));
    Ort::ThrowOnError(api.GetSymbolicDimensions(info, symbols.data(), rank));
  }
  std::vector<InferDim> dims(rank);
  for (size_t i = 0; i < rank; ++i) {
    dims[i].value = values[i] >= 0 ? values[i] : -1;
    if (dims[i].value < 0 && symbols[i] != nullptr) dims[i].symbol = symbols[i];
  }
  return dims;
}

void ShapeInferSetOutputShape(size_t index, const std::vector<InferDim>& dims, ONNXTensorElementDataType type) {
  const OrtShapeInferContext* ctx = CurrentShapeInferContext();
  if (ctx == nullptr) throw std::logic_error("ShapeInferSetOutputShape outside a shape inference");
  const OrtApi& api = Ort::GetApi();
  OrtTensorTypeAndShapeInfo* info = nullptr;
  Ort::ThrowOnError(api.CreateTensorTypeAndShapeInfo(&info));
  std::unique_ptr<OrtTensorTypeAndShapeInfo, void (*)(OrtTensorTypeAndShapeInfo*)> owned(
      info, [](OrtTensorTypeAndShapeInfo* p) { Ort::GetApi().ReleaseTensorTypeAndShapeInfo(p); });
  // An unknown dim without a name gets a fresh one: ORT would take -1 for a size (and warn on
  // every run that a graph output's "-1" does not match what was computed).
  static std::atomic<uint64_t> fresh{0};
  std::vector<std::string> names(dims.size());
  std::vector<int64_t> values;
  std::vector<const char*> symbols;
  for (size_t i = 0; i < dims.size(); ++i) {
    const InferDim& d = dims[i];
    if (d.value < 0) names[i] = d.symbol.empty() ? "onnxcompress_unk_" + std::to_string(fresh++) : d.symbol;
    values.push_back(d.value >= 0 ? d.value : -1);
    symbols.push_back(names[i].c_str());
  }
  Ort::ThrowOnError(api.SetTensorElementType(info, type));
  Ort::ThrowOnError(api.SetDimensions(info, values.data(), values.size()));
  Ort::ThrowOnError(api.SetSymbolicDimensions(info, symbols.data(), symbols.size()));
  Ort::ThrowOnError(api.ShapeInferContext_SetOutputTypeShape(ctx, index, info));
}

std::string ShapeInferAttrString(const char* name) {
  const OrtShapeInferContext* ctx = CurrentShapeInferContext();
  if (ctx == nullptr) throw std::logic_error("ShapeInferAttrString outside a shape inference");
  const OrtApi& api = Ort::GetApi();
  const OrtOpAttr* attr = nullptr;
  Ort::ThrowOnError(api.ShapeInferContext_GetAttribute(ctx, name, &attr));
  if (attr == nullptr) throw std::runtime_error(std::string("no attribute ") + name);
  // The first read asks for the size (runtimes differ: with or without a terminating NUL).
  char probe = 0;
  size_t size = 0;
  if (OrtStatus* status = api.ReadOpAttr(attr, ORT_OP_ATTR_STRING, &probe, 0, &size)) {
    api.ReleaseStatus(status);
  }
  if (size == 0) {
    Ort::ThrowOnError(api.ReadOpAttr(attr, ORT_OP_ATTR_STRING, &probe, 0, &size));  // empty, or not a string
    return std::string();
  }
  std::vector<char> chars(size + 1, '\0');
  size_t written = 0;
  Ort::ThrowOnError(api.ReadOpAttr(attr, ORT_OP_ATTR_STRING, chars.data(), size, &written));
  written = std::min(written, size);
  const auto end = std::find(chars.begin(), chars.begin() + static_cast<std::ptrdiff_t>(written), '\0');
  return std::string(chars.begin(), end);
}

bool HasAttribute(const Ort::ConstKernelInfo& info, const char* name) {
  const OrtApi& api = Ort::GetApi();
  const OrtKernelInfo* raw = info;
  auto ok = [&](OrtStatus* status) {
    if (status == nullptr) return true;
    api.ReleaseStatus(status);
    return false;
  };
  int64_t i = 0;
  float f = 0.0f;
  size_t size = 0;
  return ok(api.KernelInfoGetAttribute_int64(raw, name, &i)) ||
         ok(api.KernelInfoGetAttribute_float(raw, name, &f)) ||
         ok(api.KernelInfoGetAttribute_string(raw, name, nullptr, &size)) ||
         ok(api.KernelInfoGetAttributeArray_int64(raw, name, nullptr, &size)) ||
         ok(api.KernelInfoGetAttributeArray_float(raw, name, nullptr, &size));
}

namespace {
// The attribute when the node has it (of the right type), the fallback when
// it has none; present with another type is an error of the node.
template <typename T, typename Read>
T ReadOr(const Ort::ConstKernelInfo& info, const char* name, T fallback, Read read) {
  if (!HasAttribute(info, name)) return fallback;
  try {
    return read();
  } catch (const Ort::Exception& e) {
    Fail("attribute '", name, "' has the wrong type (", e.what(), ")");
  }
}
}  // namespace

int64_t AttrInt(const Ort::ConstKernelInfo& info, const char* name, int64_t fallback) {
  return ReadOr<int64_t>(info, name, fallback, [&] { return info.GetAttribute<int64_t>(name); });
}
float AttrFloat(const Ort::ConstKernelInfo& info, const char* name, float fallback) {
  return ReadOr<float>(info, name, fallback, [&] { return info.GetAttribute<float>(name); });
}
std::string AttrString(const Ort::ConstKernelInfo& info, const char* name, const std::string& fallback) {
  return ReadOr<std::string>(info, name, fallback, [&] { return info.GetAttribute<std::string>(name); });
}
std::vector<int64_t> AttrInts(const Ort::ConstKernelInfo& info, const char* name,
                              const std::vector<int64_t>& fallback) {
  std::vector<int64_t> v =
      ReadOr<std::vector<int64_t>>(info, name, fallback, [&] { return info.GetAttributes<int64_t>(name); });
  if (v.empty()) {
    // ORT reads a list attribute of another element type as an empty list of ints.
    size_t floats = 0;
    OrtStatus* status = Ort::GetApi().KernelInfoGetAttributeArray_float(info, name, nullptr, &floats);
    if (status != nullptr) Ort::GetApi().ReleaseStatus(status);
    Require(status != nullptr || floats == 0, "attribute '", name, "' has the wrong type (floats, not ints)");
  }
  return v;
}

bool HasInput(const Ort::ConstKernelInfo& info, size_t index) {
  if (index >= info.GetInputCount()) return false;
  return !info.GetInputName(index).empty();
}

ConstantTensor RequireConstant(const Ort::ConstKernelInfo& info, size_t index, const char* name) {
  Require(HasInput(info, index), "input ", index, " (", name, ") is missing");
  int is_constant = 0;
  Ort::ConstValue value = info.GetTensorConstantInput(index, &is_constant);
  Require(is_constant != 0 && value != nullptr, "input ", index, " (", name,
          ") must be a constant initializer of the model");
  Require(value.IsTensor(), "input ", index, " (", name, ") is not a tensor");
  auto shape_info = value.GetTensorTypeAndShapeInfo();
  ConstantTensor out;
  out.dims = shape_info.GetShape();
  out.type = shape_info.GetElementType();
  out.count = 1;
  for (int64_t d : out.dims) {
    Require(d >= 0, "input ", name, " has a negative dimension");
    out.count = CheckedMul(out.count, d, name);
  }
  Require(static_cast<int64_t>(shape_info.GetElementCount()) == out.count, "input ", name,
          " has an inconsistent element count");
  out.data = value.GetTensorRawData();
  Require(out.count == 0 || out.data != nullptr, "input ", name, " has no data");
  return out;
}

namespace {
bool CpuHas(Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (isa == Isa::kAvx512) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma");
  }
  if (isa == Isa::kAvx2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return isa == Isa::kGeneric;
}

bool CpuHasAvx512Vnni() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return CpuHas(Isa::kAvx512) && __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

std::string IsaEnv() {
  const char* env = std::getenv("ONNXCOMPRESS_ISA");
  std::string want = env ? env : "";
  for (char& ch : want) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return want;
}
}  // namespace

bool VnniSelected() {
  const std::string want = IsaEnv();
  return (want.empty() || want == "auto" || want == "avx512vnni") && CpuHasAvx512Vnni();
}

bool IsaForced() {
  const std::string want = IsaEnv();
  return !want.empty() && want != "auto";
}

const char* IsaName(Isa isa) {
  return isa == Isa::kAvx512 ? "avx512" : (isa == Isa::kAvx2 ? "avx2" : "generic");
}

int64_t TaskSlots(int64_t tasks) {
  static const int64_t hardware = std::max<int64_t>(1, std::thread::hardware_concurrency());
  return std::max<int64_t>(1, std::min(tasks, hardware));
}

ScratchPool<TaskBuffers>& SharedTaskBuffers() {
  static auto* pool = new ScratchPool<TaskBuffers>();  // never destroyed: kernels may outlive static teardown
  return *pool;
}

void TaskBuffers::Reserve(int64_t slots, int64_t floats) {
  Require(slots >= 1 && floats >= 0, "bad task buffer request");
  const int64_t stride = CeilDiv(std::max<int64_t>(floats, 1), 16) * 16;
  const int64_t need = CheckedAdd(CheckedMul(slots, stride, "task buffers"), 16, "task buffers");
  if (static_cast<int64_t>(storage_.size()) < need) storage_.resize(static_cast<size_t>(need));
  if (capacity_slots_ < slots) {
    busy_ = std::make_unique<std::atomic<bool>[]>(static_cast<size_t>(slots));
    capacity_slots_ = slots;
  }
  for (int64_t i = 0; i < slots; ++i) busy_[i].store(false, std::memory_order_relaxed);
  slots_ = slots;
  stride_ = stride;
  float* p = storage_.data();
  base_ = p + (16 - (reinterpret_cast<uintptr_t>(p) / sizeof(float)) % 16) % 16;
}

TaskBuffers::Borrowed TaskBuffers::Borrow() {
  for (;;) {
    for (int64_t i = 0; i < slots_; ++i) {
      bool expected = false;
      if (!busy_[i].load(std::memory_order_relaxed) &&
          busy_[i].compare_exchange_strong(expected, true, std::memory_order_acquire)) {
        return Borrowed(this, i);
      }
    }
    std::this_thread::yield();
  }
}

Isa SelectIsa() {
  const char* env = std::getenv("ONNXCOMPRESS_ISA");
  const std::string want = IsaEnv();
  if (want.empty() || want == "auto") {
    return CpuHas(Isa::kAvx512) ? Isa::kAvx512 : (CpuHas(Isa::kAvx2) ? Isa::kAvx2 : Isa::kGeneric);
  }
  if (want == "avx512") {
    Require(CpuHas(Isa::kAvx512), "ONNXCOMPRESS_ISA=avx512 but this CPU has no AVX-512 (F/BW/VL/DQ) and FMA");
    return Isa::kAvx512;
  }
  if (want == "avx512vnni") {
    Require(CpuHasAvx512Vnni(), "ONNXCOMPRESS_ISA=avx512vnni but this CPU has no AVX-512 (F/BW/VL/DQ) with VNNI");
    return Isa::kAvx512;
  }
  if (want == "avx2") {
    Require(CpuHas(Isa::kAvx2), "ONNXCOMPRESS_ISA=avx2 but this CPU has no AVX2 and FMA");
    return Isa::kAvx2;
  }
  if (want == "generic") return Isa::kGeneric;
  Fail("ONNXCOMPRESS_ISA must be avx512vnni, avx512, avx2, generic or auto, got '", env, "'");
}

Activation Activation::FromNode(const Ort::ConstKernelInfo& info) {
  Activation act;
  const std::string kind = AttrString(info, "activation", "");
  if (kind.empty() || kind == "None" || kind == "none") {
    act.kind = Kind::kNone;
  } else if (kind == "Relu") {
    act.kind = Kind::kRelu;
    act.lo = 0.0f;
  } else if (kind == "Clip") {
    act.kind = Kind::kClip;
    act.lo = AttrFloat(info, "clip_min", -std::numeric_limits<float>::infinity());
    act.hi = AttrFloat(info, "clip_max", std::numeric_limits<float>::infinity());
    Require(!std::isnan(act.lo) && !std::isnan(act.hi) && act.lo <= act.hi,
            "activation Clip needs clip_min <= clip_max, got ", act.lo, " and ", act.hi);
  } else {
    Fail("attribute activation must be '', 'Relu' or 'Clip', got '", kind, "'");
  }
  return act;
}

Epilogue Epilogue::FromNode(const Ort::ConstKernelInfo& info, size_t z_index) {
  Epilogue e;
  e.activation = Activation::FromNode(info);
  e.z_index = z_index;
  e.has_residual = HasInput(info, z_index);
  return e;
}

const float* Epilogue::Residual(const Ort::KernelContext& context, const Ort::UnownedValue& y) const {
  if (!has_residual) return nullptr;
  Ort::ConstValue z = context.GetInput(z_index);
  Require(z != nullptr && z.IsTensor(), "input Z (the residual) is missing");
  const auto z_info = z.GetTensorTypeAndShapeInfo();
  Require(z_info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "Z must be float32");
  const std::vector<int64_t> y_shape = y.GetTensorTypeAndShapeInfo().GetShape(), z_shape = z_info.GetShape();
  if (z_shape != y_shape) {
    std::ostringstream got, want;
    for (size_t i = 0; i < z_shape.size(); ++i) got << (i ? ", " : "") << z_shape[i];
    for (size_t i = 0; i < y_shape.size(); ++i) want << (i ? ", " : "") << y_shape[i];
    Fail("Z must have the output's shape [", want.str(), "], got [", got.str(), "]");
  }
  return z.GetTensorData<float>();
}

void Epilogue::FinishUnfused(const Ort::KernelContext& context, Ort::UnownedValue& y) const {
  const int64_t count = static_cast<int64_t>(y.GetTensorTypeAndShapeInfo().GetElementCount());
  float* out = y.GetTensorMutableData<float>();
  if (const float* add = Residual(context, y)) {
    for (int64_t i = 0; i < count; ++i) out[i] += add[i];
  }
  activation.ApplyInPlace(out, count);
}

void Activation::ApplyInPlace(float* data, int64_t count) const {
  if (kind == Kind::kNone) return;
  const float l = lo, h = hi;
  for (int64_t i = 0; i < count; ++i) data[i] = std::min(std::max(data[i], l), h);
}

}  // namespace onnxcompress
