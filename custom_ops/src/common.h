// Shared helpers of the onnxcompress custom-op library: errors, attribute
// reading, constant initializers and the fused activation.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "onnxruntime_cxx_api.h"

namespace onnxcompress {

// Every validation failure is thrown as this and turned into an ORT status
// (ORT_INVALID_ARGUMENT) at the C boundary, so a malformed node is an ORT
// error at session creation, never a crash.
struct InvalidNode : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename... Parts>
[[noreturn]] void Fail(const Parts&... parts) {
  std::ostringstream message;
  (message << ... << parts);
  throw InvalidNode(message.str());
}

template <typename... Parts>
inline void Require(bool condition, const Parts&... parts) {
  if (!condition) Fail(parts...);
}

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Overflow-checked arithmetic on element counts and offsets, checked before
// the result is formed (never an overflowed product checked afterwards):
// operands must be >= 0 and the result at most kMaxCount.
inline constexpr int64_t kMaxCount = int64_t{1} << 48;
int64_t CheckedMul(int64_t a, int64_t b, const char* what);
int64_t CheckedMul(int64_t a, int64_t b, int64_t c, const char* what);
int64_t CheckedAdd(int64_t a, int64_t b, const char* what);

// Optional attributes: the default when the node does not carry one; an
// attribute of the wrong type is an error, not silently ignored. "Does not
// carry one" is decided by HasAttribute, never by an error message's text.
int64_t AttrInt(const Ort::ConstKernelInfo& info, const char* name, int64_t fallback);
float AttrFloat(const Ort::ConstKernelInfo& info, const char* name, float fallback);
std::string AttrString(const Ort::ConstKernelInfo& info, const char* name, const std::string& fallback);

// String attributes during ORT's shape inference. Ort::ShapeInferContext::GetAttrString
// (the C++ header) copies the attribute into a buffer of exactly its length and then
// builds the std::string with strlen, reading past the buffer (found by the ASan fuzz,
// tests/fuzz). CustomOp (op_base.h) runs each shape inference inside a
// ShapeInferScope, which makes the raw context of this thread's current inference
// available to ShapeInferAttrString; it reads with the length and throws when the
// attribute is absent or not a string.
class ShapeInferScope {
 public:
  explicit ShapeInferScope(const OrtShapeInferContext* ctx);
  ~ShapeInferScope();
  ShapeInferScope(const ShapeInferScope&) = delete;
  ShapeInferScope& operator=(const ShapeInferScope&) = delete;

 private:
  const OrtShapeInferContext* previous_;
};
std::string ShapeInferAttrString(const char* name);
// One dimension as shape inference sees it: a value (>= 0), or unknown (-1) with a symbolic
// name ("" when unnamed).
struct InferDim {
  int64_t value = -1;
  std::string symbol;
};
// Input `index`'s shape in the current shape inference, the names copied, or an empty
// vector when ORT knows no shape.
std::vector<InferDim> ShapeInferInputShape(size_t index);
// Sets output `index` to `type` and `dims`. An unknown dim keeps its name or gets a fresh
// one (Ort::ShapeInferContext::SetOutputShape throws on unnamed ones, and ORT then drops
// the whole output shape, and with it the rank its layout transformers need around our nodes).
void ShapeInferSetOutputShape(size_t index, const std::vector<InferDim>& dims, ONNXTensorElementDataType type);
std::vector<int64_t> AttrInts(const Ort::ConstKernelInfo& info, const char* name,
                              const std::vector<int64_t>& fallback);
// Whether the node has an attribute `name` of a type a kernel can read (int,
// float, string, ints or floats): ORT reports a missing attribute and one of
// another type with the same status code, so this probes every type. (An
// attribute of a type no kernel reads, strings or a graph, counts as absent.)
bool HasAttribute(const Ort::ConstKernelInfo& info, const char* name);

// A tensor input that must be a constant initializer, read once at session
// creation. `dims` is its shape; `data` stays valid while the session lives
// (we copy what we keep anyway).
struct ConstantTensor {
  std::vector<int64_t> dims;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  const void* data = nullptr;
  int64_t count = 0;
  template <typename T>
  const T* As() const { return static_cast<const T*>(data); }
};
ConstantTensor RequireConstant(const Ort::ConstKernelInfo& info, size_t index, const char* name);
// True when the node has input `index` and it is not an empty (omitted) name.
bool HasInput(const Ort::ConstKernelInfo& info, size_t index);

// Fused activation applied to the op's output.
struct Activation {
  enum class Kind { kNone, kRelu, kClip } kind = Kind::kNone;
  float lo = -std::numeric_limits<float>::infinity();
  float hi = std::numeric_limits<float>::infinity();
  static Activation FromNode(const Ort::ConstKernelInfo& info);
  float Apply(float v) const {
    if (kind == Kind::kNone) return v;
    return v < lo ? lo : (v > hi ? hi : v);
  }
  void ApplyInPlace(float* data, int64_t count) const;
};

// What every float op of ours does to its output after the convolution:
// Y = activation(conv(X) + Z), where Z, the residual sum, is the node's optional
// last input (index `z_index`), a float tensor of Y's shape read at run time. A
// ResNet block's Conv -> Add -> Relu is one node this way, as ORT's own NCHWc
// Conv fuses them (its Sum input). The kernels add Z as they store each output,
// before the activation; ORT's Conv fallback paths do both in one pass after.
struct Epilogue {
  Activation activation;
  size_t z_index = 0;
  bool has_residual = false;
  static Epilogue FromNode(const Ort::ConstKernelInfo& info, size_t z_index);
  // Z's data, checked (float32, Y's shape; no broadcasting); nullptr when the node has no Z.
  const float* Residual(const Ort::KernelContext& context, const Ort::UnownedValue& y) const;
  // After a path that applied neither (ORT's Conv fallback): adds Z, applies the activation.
  void FinishUnfused(const Ort::KernelContext& context, Ort::UnownedValue& y) const;
};

// Instruction sets the inner kernels are compiled for, one translation unit
// each (*_avx512.cc, *_avx2.cc, *_generic.cc).
enum class Isa { kGeneric, kAvx2, kAvx512 };

// The instruction set to use: ONNXCOMPRESS_ISA (avx512, avx2, generic or auto)
// when set, else the best this CPU has (AVX-512 = F/BW/VL/DQ + FMA, AVX2 =
// AVX2 + FMA). A bad value, or one the CPU lacks, throws InvalidNode.
Isa SelectIsa();
// Whether ONNXCOMPRESS_ISA names an instruction set (not unset / auto).
bool IsaForced();
// Whether kernels may use AVX-512 VNNI (vpdpbusd) where they have a path for it:
// the CPU has it (with AVX-512 F/BW/VL/DQ) and ONNXCOMPRESS_ISA is unset, auto or
// avx512vnni. ONNXCOMPRESS_ISA=avx512 means AVX-512 without VNNI, so that both
// paths can be tested on a VNNI CPU; avx512vnni on a CPU without it throws.
bool VnniSelected();
const char* IsaName(Isa isa);

// The kernel table of the selected instruction set, never null: a getter
// returns null when the build left that instruction set out (non-x86, or a
// compiler without the flags); then `auto` takes the next one down (the
// generic table always exists) and a forced ONNXCOMPRESS_ISA is an error.
// The getters are only called for an instruction set the CPU has.
template <typename Kernels>
const Kernels* PickKernels(const Kernels* (*avx512)(), const Kernels* (*avx2)(), const Kernels* (*generic)()) {
  const Isa isa = SelectIsa();
  const Kernels* k = nullptr;
  if (isa == Isa::kAvx512) k = avx512();
  if (k == nullptr && isa == Isa::kAvx512 && IsaForced()) {
    Fail("ONNXCOMPRESS_ISA=avx512 but this build of the library has no AVX-512 kernels");
  }
  if (k == nullptr && isa != Isa::kGeneric) k = avx2();
  if (k == nullptr && isa == Isa::kAvx2 && IsaForced()) {
    Fail("ONNXCOMPRESS_ISA=avx2 but this build of the library has no AVX2 kernels");
  }
  if (k == nullptr) k = generic();
  Require(k != nullptr, "this build of the library has no kernels at all");
  return k;
}

// Per-call work buffers kept between calls (they grow to the largest input
// seen): each concurrent Run on one session leases its own, and the lease
// gives it back when it goes out of scope.
template <typename T>
class ScratchPool {
 public:
  class Lease {
   public:
    Lease(ScratchPool* pool, std::unique_ptr<T> item) : pool_(pool), item_(std::move(item)) {}
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() { pool_->Release(std::move(item_)); }
    T& operator*() { return *item_; }
    T* operator->() { return item_.get(); }
    T* get() { return item_.get(); }

   private:
    ScratchPool* pool_;
    std::unique_ptr<T> item_;
  };

  Lease Acquire() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (items_.empty()) return Lease(this, std::make_unique<T>());
    std::unique_ptr<T> item = std::move(items_.back());
    items_.pop_back();
    return Lease(this, std::move(item));
  }

 private:
  void Release(std::unique_ptr<T> item) {
    std::lock_guard<std::mutex> lock(mutex_);
    items_.push_back(std::move(item));
  }
  std::mutex mutex_;
  std::vector<std::unique_ptr<T>> items_;
};

// Work buffers for the tasks of one parallel region, allocated before the
// region starts (nothing allocates inside a thread-pool callback): a running
// task borrows one of `slots` buffers and gives it back when it ends. With
// fewer slots than threads a task waits for a free one; holders never block,
// so this always progresses. Kept in a kernel's Scratch, it grows to the
// largest region seen.
class TaskBuffers {
 public:
  // Room for `slots` buffers of `floats` floats each (64-byte aligned).
  void Reserve(int64_t slots, int64_t floats);
  class Borrowed {
   public:
    Borrowed(TaskBuffers* owner, int64_t slot) : owner_(owner), slot_(slot) {}
    Borrowed(const Borrowed&) = delete;
    Borrowed& operator=(const Borrowed&) = delete;
    ~Borrowed() { owner_->busy_[slot_].store(false, std::memory_order_release); }
    float* data() const { return owner_->base_ + slot_ * owner_->stride_; }

   private:
    TaskBuffers* owner_;
    int64_t slot_;
  };
  // Only from inside the region that Reserve prepared.
  Borrowed Borrow();

 private:
  std::vector<float> storage_;
  std::unique_ptr<std::atomic<bool>[]> busy_;
  int64_t slots_ = 0, stride_ = 0, capacity_slots_ = 0;
  float* base_ = nullptr;
};

// A 64-byte aligned pointer into `v` with at least `count` floats after it (v grows as needed).
inline float* AlignedBuffer(std::vector<float>& v, int64_t count) {
  if (v.size() < static_cast<size_t>(count + 16)) v.resize(static_cast<size_t>(count + 16));
  float* p = v.data();
  return p + (16 - (reinterpret_cast<uintptr_t>(p) / sizeof(float)) % 16) % 16;
}

// Buffers for a region of `tasks` tasks: one per task, at most one per
// hardware thread (more never run at once on this machine).
int64_t TaskSlots(int64_t tasks);

// TaskBuffers shared by every node of the process (a Compute leases one for
// its regions), so that their memory scales with the concurrent runs, not
// with the number of nodes times hardware threads.
ScratchPool<TaskBuffers>& SharedTaskBuffers();

// Runs `fn(begin, end)` over [0, total) in ORT's intra-op thread pool, in
// `tasks` chunks of near-equal size. No exception leaves a pool callback: the
// first one a task throws is kept, the remaining tasks are skipped, and it is
// rethrown here once the region has ended (Compute turns it into an ORT
// error status).
template <typename Fn>
void ParallelFor(const Ort::KernelContext& context, int64_t total, int64_t tasks, Fn&& fn) {
  if (total <= 0) return;
  if (tasks > total) tasks = total;
  if (tasks <= 1) {
    fn(int64_t{0}, total);
    return;
  }
  struct Job {
    Fn* fn;
    int64_t total, tasks;
    std::atomic<bool> failed{false};
    std::mutex mutex;
    std::exception_ptr error;
  } job;
  job.fn = &fn;
  job.total = total;
  job.tasks = tasks;
  context.ParallelFor(
      [](void* data, size_t i) {
        auto* j = static_cast<Job*>(data);
        if (j->failed.load(std::memory_order_relaxed)) return;
        try {
          const int64_t begin = j->total * static_cast<int64_t>(i) / j->tasks;
          const int64_t end = j->total * (static_cast<int64_t>(i) + 1) / j->tasks;
          (*j->fn)(begin, end);
        } catch (...) {
          std::lock_guard<std::mutex> lock(j->mutex);
          if (!j->error) j->error = std::current_exception();
          j->failed.store(true, std::memory_order_relaxed);
        }
      },
      // num_batch 0: one pool work item per task. (num_batch 1 would make ORT
      // run every task sequentially on the calling thread.)
      static_cast<size_t>(tasks), 0, &job);
  if (job.error) std::rethrow_exception(job.error);
}

}  // namespace onnxcompress
