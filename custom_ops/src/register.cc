// Entry point ONNX Runtime calls when the library is registered
// (SessionOptions.register_custom_ops_library).
// The ops come from one table, filled by the kernel files themselves
// (ONNXCOMPRESS_REGISTER_OP, op_base.h): nothing here names an op.
#include <algorithm>
#include <cstring>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "op_base.h"

namespace {
// Adds every op of the table, by name (a stable order; static initialisers run in link order).
// Two entries with one name would be a build mistake ORT reports confusingly: refused here.
void AddOps(Ort::CustomOpDomain& domain) {
  std::vector<const OrtCustomOp*> ops = onnxcompress::RegisteredOps();
  std::sort(ops.begin(), ops.end(), [](const OrtCustomOp* a, const OrtCustomOp* b) {
    return std::strcmp(a->GetName(a), b->GetName(b)) < 0;
  });
  for (size_t i = 0; i < ops.size(); ++i) {
    if (i > 0 && std::strcmp(ops[i - 1]->GetName(ops[i - 1]), ops[i]->GetName(ops[i])) == 0) {
      throw std::runtime_error(std::string("onnxcompress: two kernels register the op ") + ops[i]->GetName(ops[i]));
    }
    domain.Add(ops[i]);
  }
}
}  // namespace

namespace {
// The error for a runtime that cannot serve the API version of our headers,
// naming both versions. `api_base` answers GetApi(v) for every v up to its own
// API version; CreateStatus is the first entry of every OrtApi, so the oldest
// table can still report the error.
OrtStatus* RuntimeTooOld(const OrtApiBase* api_base) {
  uint32_t served = 0;
  const OrtApi* oldest = nullptr;
  for (uint32_t v = ORT_API_VERSION - 1; v >= 1; --v) {
    if (const OrtApi* api = api_base->GetApi(v)) {
      served = v;
      oldest = api;
      break;
    }
  }
  if (oldest == nullptr) return nullptr;  // no API at all: nothing can report
  const char* runtime = api_base->GetVersionString ? api_base->GetVersionString() : nullptr;
  std::ostringstream message;
  message << "the onnxcompress custom-op library needs ONNX Runtime C API version " << ORT_API_VERSION
          << " (onnxruntime >= 1." << ORT_API_VERSION << "), but the onnxruntime loading it is "
          << (runtime ? runtime : "unknown") << ", which serves API versions up to " << served
          << "; upgrade onnxruntime (pip install -U onnxruntime)";
  return oldest->CreateStatus(ORT_FAIL, message.str().c_str());
}
}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  // Never link libonnxruntime: take the API from the runtime that loads us.
  // ORT_API_VERSION is that of our headers; newer runtimes serve it too, an
  // older one is refused with both versions named.
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) return RuntimeTooOld(api_base);
  Ort::InitApi(api);
  // One domain object for the process; sessions share it.
  static std::once_flag once;
  static Ort::CustomOpDomain* domain = nullptr;
  try {
    std::call_once(once, [] {
      domain = new Ort::CustomOpDomain(onnxcompress::kDomain);
      AddOps(*domain);
    });
    Ort::UnownedSessionOptions session_options(options);
    session_options.Add(*domain);
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}
