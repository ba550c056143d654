// Registration boilerplate shared by every custom op: a kernel type declares
// its name, inputs and shape inference; this turns it into an OrtCustomOp
// whose kernel creation and compute report errors as ORT statuses.
#pragma once

#include <exception>
#include <string>
#include <type_traits>
#include <vector>

#include "common.h"

namespace onnxcompress {

inline constexpr const char* kDomain = "ai.onnxcompress";

// Mixin for kernels: Compute(Ort::KernelContext&) may throw; ORT sees a status.
template <typename Kernel>
struct KernelBase {
  OrtStatusPtr ComputeV2(OrtKernelContext* raw) {
    try {
      Ort::KernelContext context(raw);
      static_cast<Kernel*>(this)->Compute(context);
      return nullptr;
    } catch (const std::exception& e) {
      return Ort::GetApi().CreateStatus(ORT_RUNTIME_EXCEPTION, (std::string(Kernel::kName) + ": " + e.what()).c_str());
    }
  }
};

// The output type of a kernel: Kernel::OutputType() where it declares one, else float.
template <typename Kernel, typename = void>
struct OutputTypeOf {
  static ONNXTensorElementDataType Get() { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};
template <typename Kernel>
struct OutputTypeOf<Kernel, std::void_t<decltype(Kernel::OutputType())>> {
  static ONNXTensorElementDataType Get() { return Kernel::OutputType(); }
};

// Kernel must provide:
//   static constexpr const char* kName; static constexpr size_t kInputCount;
//   static ONNXTensorElementDataType InputType(size_t);
//   static bool InputOptional(size_t);
//   static Ort::Status InferOutputShape(Ort::ShapeInferContext&);
//   explicit Kernel(const Ort::ConstKernelInfo&)  (validates; throws InvalidNode)
// and may provide static ONNXTensorElementDataType OutputType() (default float).
template <typename Kernel>
struct CustomOp : Ort::CustomOpBase<CustomOp<Kernel>, Kernel, /*WithStatus=*/true> {
  // ORT's shape inference enters here instead of through the base's entry, so that the
  // inference runs in a ShapeInferScope (string attributes, common.h) and no exception
  // crosses into ORT.
  CustomOp() {
    OrtCustomOp::InferOutputShapeFn = [](const OrtCustomOp*, OrtShapeInferContext* raw) -> OrtStatusPtr {
      try {
        ShapeInferScope scope(raw);
        Ort::ShapeInferContext ctx(&Ort::GetApi(), raw);
        return Kernel::InferOutputShape(ctx).release();
      } catch (const std::exception& e) {
        return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, (std::string(Kernel::kName) + ": " + e.what()).c_str());
      }
    };
  }

  const char* GetName() const { return Kernel::kName; }
  size_t GetInputTypeCount() const { return Kernel::kInputCount; }
  ONNXTensorElementDataType GetInputType(size_t i) const { return Kernel::InputType(i); }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return Kernel::InputOptional(i) ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return OutputTypeOf<Kernel>::Get(); }

  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* raw, void** kernel) const {
    Ort::ConstKernelInfo info{raw};
    try {
      *kernel = new Kernel(info);
      return nullptr;
    } catch (const std::exception& e) {
      std::string node;
      try {
        node = info.GetNodeName();
      } catch (...) {
      }
      const std::string message = std::string(Kernel::kName) + " node '" + node + "': " + e.what();
      return api.CreateStatus(ORT_INVALID_ARGUMENT, message.c_str());
    }
  }

  static Ort::Status InferOutputShape(Ort::ShapeInferContext& ctx) { return Kernel::InferOutputShape(ctx); }
};

// The table of the ops the library registers (register.cc adds every entry to our domain).
// Each kernel file contributes its own entry with one line at namespace scope,
//   ONNXCOMPRESS_REGISTER_OP(SparseInputConv);
// so a new op is one kernel file and that line. The table is a function-local static, so
// entries made by static initialisers of any translation unit, in any order, all land in it.
inline std::vector<const OrtCustomOp*>& RegisteredOps() {
  static std::vector<const OrtCustomOp*> ops;
  return ops;
}

struct OpRegistration {
  explicit OpRegistration(const OrtCustomOp* op) { RegisteredOps().push_back(op); }
};

}  // namespace onnxcompress

#define ONNXCOMPRESS_REGISTER_OP(Kernel)                                                    \
  namespace onnxcompress {                                                                  \
  namespace registered {                                                                    \
  CustomOp<Kernel> g_##Kernel##_op;                                                         \
  const OpRegistration g_##Kernel##_registration{&g_##Kernel##_op};                        \
  }                                                                                         \
  }                                                                                         \
  static_assert(true, "ONNXCOMPRESS_REGISTER_OP ends with a semicolon")
