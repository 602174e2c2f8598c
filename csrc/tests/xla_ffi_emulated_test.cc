// The XLA typed-FFI handlers, called as XLA calls them: a call frame of
// buffers and attributes, through a stand-in for XLA's C API whose stream is
// a tag the launches must carry. The CUDA handlers (xla/reparam_kl_ffi_cuda.cc,
// compiled against jaxlib's FFI headers) run the CUDA kernels on the SIMT
// emulation, the Host handlers the CPU kernels; both get the same call, and
// their results must agree. The CUDA handlers must not make the host wait
// (the seed stays in device memory), and must say they are safe in a command
// buffer.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "simt/simt.h"
#include "test_support.h"
#include "xla/ffi/api/c_api.h"
#include "xla/reparam_kl_ffi.h"

namespace {

using keras_vae_test::g_failures;
using keras_vae_test::near;
using keras_vae_test::pattern;

// --- A stand-in for the XLA runtime's side of the C API ---------------------

struct FakeError {
  XLA_FFI_Error_Code code;
  std::string message;
};

XLA_FFI_Error* create_error(XLA_FFI_Error_Create_Args* args) {
  return reinterpret_cast<XLA_FFI_Error*>(
      new FakeError{args->errc, args->message ? args->message : ""});
}
void error_message(XLA_FFI_Error_GetMessage_Args* args) {
  args->message = reinterpret_cast<FakeError*>(args->error)->message.c_str();
}
void destroy_error(XLA_FFI_Error_Destroy_Args* args) {
  delete reinterpret_cast<FakeError*>(args->error);
}

// XLA's stream for the call: any value; the launches must be on it.
const cudaStream_t kXlaStream = reinterpret_cast<cudaStream_t>(0x5a17);

XLA_FFI_Error* get_stream(XLA_FFI_Stream_Get_Args* args) {
  args->stream = kXlaStream;
  return nullptr;
}
// A pool of one thread: the Host handlers then shard nothing.
XLA_FFI_Error* schedule(XLA_FFI_ThreadPool_Schedule_Args* args) {
  args->task(args->data);
  return nullptr;
}
XLA_FFI_Error* num_threads(XLA_FFI_ThreadPool_NumThreads_Args* args) {
  *args->num_threads = 1;
  return nullptr;
}

const XLA_FFI_Api* fake_api() {
  static const XLA_FFI_Api api = [] {
    XLA_FFI_Api a;
    std::memset(&a, 0, sizeof(a));  // calls the handlers must not make: null
    a.struct_size = XLA_FFI_Api_STRUCT_SIZE;
    a.api_version = {XLA_FFI_Api_Version_STRUCT_SIZE, nullptr,
                     XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR};
    a.XLA_FFI_Error_Create = create_error;
    a.XLA_FFI_Error_GetMessage = error_message;
    a.XLA_FFI_Error_Destroy = destroy_error;
    a.XLA_FFI_Stream_Get = get_stream;
    a.XLA_FFI_ThreadPool_Schedule = schedule;
    a.XLA_FFI_ThreadPool_NumThreads = num_threads;
    return a;
  }();
  return &api;
}

// One buffer of a call: its type, dimensions and (host = emulated device)
// memory.
struct Operand {
  XLA_FFI_DataType type;
  std::vector<int64_t> dims;
  void* data;
};

// A call frame as XLA builds one; `stop` adds the backward's attribute.
class Call {
 public:
  Call(const std::vector<Operand>& args, const std::vector<Operand>& rets,
       const bool* stop)
      : operands_(args) {
    operands_.insert(operands_.end(), rets.begin(), rets.end());
    buffers_.resize(operands_.size());
    for (size_t i = 0; i < operands_.size(); ++i) {
      XLA_FFI_Buffer& b = buffers_[i];
      b.struct_size = XLA_FFI_Buffer_STRUCT_SIZE;
      b.extension_start = nullptr;
      b.dtype = operands_[i].type;
      b.data = operands_[i].data;
      b.rank = static_cast<int64_t>(operands_[i].dims.size());
      b.dims = operands_[i].dims.data();
      pointers_.push_back(&b);
    }
    arg_types_.assign(args.size(), XLA_FFI_ArgType_BUFFER);
    ret_types_.assign(rets.size(), XLA_FFI_RetType_BUFFER);
    std::memset(&frame_, 0, sizeof(frame_));
    frame_.struct_size = XLA_FFI_CallFrame_STRUCT_SIZE;
    frame_.api = fake_api();
    frame_.stage = XLA_FFI_ExecutionStage_EXECUTE;
    frame_.args = {XLA_FFI_Args_STRUCT_SIZE, nullptr,
                   static_cast<int64_t>(args.size()), arg_types_.data(),
                   pointers_.data()};
    frame_.rets = {XLA_FFI_Rets_STRUCT_SIZE, nullptr,
                   static_cast<int64_t>(rets.size()), ret_types_.data(),
                   pointers_.data() + args.size()};
    frame_.attrs = {XLA_FFI_Attrs_STRUCT_SIZE, nullptr, 0, nullptr, nullptr,
                    nullptr};
    if (stop) {
      stop_ = *stop;
      stop_scalar_ = {XLA_FFI_DataType_PRED, &stop_};
      stop_name_ = {keras_vae::xla_ffi::kStopAttr,
                    std::strlen(keras_vae::xla_ffi::kStopAttr)};
      attr_type_ = XLA_FFI_AttrType_SCALAR;
      attr_name_ = &stop_name_;
      attr_value_ = &stop_scalar_;
      frame_.attrs = {XLA_FFI_Attrs_STRUCT_SIZE, nullptr, 1, &attr_type_,
                      &attr_name_, &attr_value_};
    }
  }
  Call(const Call&) = delete;
  Call& operator=(const Call&) = delete;

  // "" on success, else the handler's error message.
  std::string run(XLA_FFI_Handler* handler) {
    XLA_FFI_Error* error = handler(&frame_);
    if (error == nullptr) return "";
    FakeError* e = reinterpret_cast<FakeError*>(error);
    std::string message = e->message.empty() ? "(error)" : e->message;
    delete e;
    return message;
  }

 private:
  std::vector<Operand> operands_;
  std::vector<XLA_FFI_Buffer> buffers_;
  std::vector<void*> pointers_;
  std::vector<XLA_FFI_ArgType> arg_types_;
  std::vector<XLA_FFI_RetType> ret_types_;
  XLA_FFI_CallFrame frame_;
  bool stop_ = false;
  XLA_FFI_Scalar stop_scalar_;
  XLA_FFI_ByteSpan stop_name_;
  XLA_FFI_ByteSpan* attr_name_ = nullptr;
  XLA_FFI_AttrType attr_type_;
  void* attr_value_ = nullptr;
};

// The traits a handler reports through the metadata extension.
XLA_FFI_Handler_Traits traits_of(XLA_FFI_Handler* handler) {
  XLA_FFI_Metadata metadata;
  std::memset(&metadata, 0, sizeof(metadata));
  metadata.struct_size = XLA_FFI_Metadata_STRUCT_SIZE;
  XLA_FFI_Metadata_Extension extension;
  extension.extension_base = {XLA_FFI_Metadata_Extension_STRUCT_SIZE,
                              XLA_FFI_Extension_Metadata, nullptr};
  extension.metadata = &metadata;
  XLA_FFI_CallFrame frame;
  std::memset(&frame, 0, sizeof(frame));
  frame.struct_size = XLA_FFI_CallFrame_STRUCT_SIZE;
  frame.api = fake_api();
  frame.extension_start = &extension.extension_base;
  XLA_FFI_Error* error = handler(&frame);
  EXPECT(error == nullptr, "the metadata query failed");
  if (error) delete reinterpret_cast<FakeError*>(error);
  return metadata.traits;
}

// --- Values ---------------------------------------------------------------

template <typename T>
struct Float;
template <>
struct Float<float> {
  static constexpr XLA_FFI_DataType kType = XLA_FFI_DataType_F32;
  static constexpr const char* kName = "f32";
  static constexpr double kTolerance = 2e-5;
};
template <>
struct Float<double> {
  static constexpr XLA_FFI_DataType kType = XLA_FFI_DataType_F64;
  static constexpr const char* kName = "f64";
  static constexpr double kTolerance = 1e-12;
};

template <typename T>
std::vector<T> filled(int64_t n, uint64_t salt, double lo, double hi) {
  std::vector<T> v(n);
  for (int64_t i = 0; i < n; ++i) {
    v[i] = static_cast<T>(pattern(i + salt * 7919, lo, hi));
  }
  return v;
}

int64_t product(const std::vector<int64_t>& dims) {
  int64_t p = 1;
  for (int64_t d : dims) p *= d;
  return p;
}

// The seed as the frontends pass it: s64 (TensorFlow, JAX with x64) or s32
// (JAX by default), a negative word to check the sign extension.
struct Seed {
  int64_t words64[2] = {-123456789012345ll, 77};
  int32_t words32[2] = {-12345, 77};
  bool s32;
  explicit Seed(bool use_s32) : s32(use_s32) {}
  Operand operand() {
    return s32 ? Operand{XLA_FFI_DataType_S32, {2}, words32}
               : Operand{XLA_FFI_DataType_S64, {2}, words64};
  }
  const char* name() const { return s32 ? "s32 seed" : "s64 seed"; }
};

template <typename T>
int compare(const std::vector<T>& cuda, const std::vector<T>& host,
            double scale, const std::string& what) {
  int bad = 0;
  for (size_t i = 0; i < cuda.size(); ++i) {
    if (!near(cuda[i], host[i], scale + std::fabs(host[i]),
              Float<T>::kTolerance) &&
        bad++ < 3) {
      EXPECT(false, "%s[%zu]: CUDA handler %.17g, Host handler %.17g",
             what.c_str(), i, static_cast<double>(cuda[i]),
             static_cast<double>(host[i]));
    }
  }
  return bad;
}

void expect_no_emulator_errors(const std::string& where) {
  for (const std::string& e : simt::take_errors()) {
    EXPECT(false, "%s: %s", where.c_str(), e.c_str());
  }
}

// The CUDA handler's call: no host waits, launches on XLA's stream.
std::string run_cuda(Call& call, XLA_FFI_Handler* handler,
                     const std::string& where) {
  const int64_t launches = simt::launch_count();
  std::string error;
  {
    simt::NoHostWaits no_waits(where);
    error = call.run(handler);
  }
  expect_no_emulator_errors(where);
  if (error.empty() && simt::launch_count() > launches) {
    EXPECT(simt::last_launch().stream == kXlaStream,
           "%s: launched on another stream than XLA's", where.c_str());
  }
  return error;
}

// Forward and backward of one shape ([batch..., D], K) and seed form, by
// both handlers, compared.
template <typename T>
void agree(const std::vector<int64_t>& batch, int64_t D, int64_t K,
           bool s32_seed) {
  std::vector<int64_t> params = batch;
  params.push_back(D);
  std::vector<int64_t> samples = {K};
  samples.insert(samples.end(), params.begin(), params.end());
  std::vector<int64_t> per_sample = {K};
  per_sample.insert(per_sample.end(), batch.begin(), batch.end());
  const int64_t P = product(params), Z = product(samples), N = product(batch);
  const int64_t R = product(per_sample);
  Seed seed(s32_seed);
  char buf[160];
  std::snprintf(buf, sizeof(buf), "%s N=%lld D=%lld K=%lld %s",
                Float<T>::kName, static_cast<long long>(N),
                static_cast<long long>(D), static_cast<long long>(K),
                seed.name());
  const std::string where = buf;
  const auto type = Float<T>::kType;

  std::vector<T> mean = filled<T>(P, 1, -2.0, 2.0);
  std::vector<T> log_var = filled<T>(P, 2, -3.0, 1.5);
  struct Out {
    std::vector<T> z, kl, log_ratio;
  };
  Out out[2];  // CUDA, Host
  XLA_FFI_Handler* forward[2] = {&KerasVaeReparamKlForwardCuda,
                                 &KerasVaeReparamKlForwardHost};
  for (int h = 0; h < 2; ++h) {
    out[h].z.assign(Z, NAN);
    out[h].kl.assign(N, NAN);
    out[h].log_ratio.assign(R, NAN);
    Call call({{type, params, mean.data()}, {type, params, log_var.data()},
               seed.operand()},
              {{type, samples, out[h].z.data()},
               {type, batch, out[h].kl.data()},
               {type, per_sample, out[h].log_ratio.data()}},
              nullptr);
    const std::string error = h == 0 ? run_cuda(call, forward[h], where)
                                     : call.run(forward[h]);
    EXPECT(error.empty(), "%s: forward %s handler: %s", where.c_str(),
           h == 0 ? "CUDA" : "Host", error.c_str());
  }
  // Sums of D terms of magnitude O(10) at most.
  compare(out[0].z, out[1].z, 1.0, where + " z");
  compare(out[0].kl, out[1].kl, 10.0 * D, where + " kl");
  compare(out[0].log_ratio, out[1].log_ratio, 10.0 * D, where + " log_ratio");

  std::vector<T> grad_z = filled<T>(Z, 3, -1.0, 1.0);
  std::vector<T> grad_kl = filled<T>(N, 4, -1.0, 1.0);
  std::vector<T> grad_log_ratio = filled<T>(R, 5, -1.0, 1.0);
  XLA_FFI_Handler* backward[2] = {&KerasVaeReparamKlBackwardCuda,
                                  &KerasVaeReparamKlBackwardHost};
  for (bool stop : {false, true}) {
    std::vector<T> grad_mean[2], grad_log_var[2];
    for (int h = 0; h < 2; ++h) {
      grad_mean[h].assign(P, NAN);
      grad_log_var[h].assign(P, NAN);
      Call call({{type, params, mean.data()},
                 {type, params, log_var.data()},
                 seed.operand(),
                 {type, samples, grad_z.data()},
                 {type, batch, grad_kl.data()},
                 {type, per_sample, grad_log_ratio.data()}},
                {{type, params, grad_mean[h].data()},
                 {type, params, grad_log_var[h].data()}},
                &stop);
      const std::string error = h == 0 ? run_cuda(call, backward[h], where)
                                       : call.run(backward[h]);
      EXPECT(error.empty(), "%s: backward %s handler: %s", where.c_str(),
             h == 0 ? "CUDA" : "Host", error.c_str());
    }
    // Sums of K terms of magnitude O(20) at most.
    const std::string what = where + (stop ? " stop" : "");
    compare(grad_mean[0], grad_mean[1], 20.0 * K, what + " grad_mean");
    compare(grad_log_var[0], grad_log_var[1], 20.0 * K, what + " grad_log_var");
  }
}

// A call both handlers refuse: the same message from each.
void same_refusal(XLA_FFI_DataType type, const std::vector<int64_t>& log_var_dims,
                  const char* expected, const std::string& where) {
  const std::vector<int64_t> params = {3, 4}, samples = {2, 3, 4}, batch = {3},
                             per_sample = {2, 3};
  std::vector<double> memory(64, 0.0);
  Seed seed(false);
  std::string errors[2];
  XLA_FFI_Handler* forward[2] = {&KerasVaeReparamKlForwardCuda,
                                 &KerasVaeReparamKlForwardHost};
  for (int h = 0; h < 2; ++h) {
    Call call({{type, params, memory.data()},
               {type, log_var_dims, memory.data()},
               seed.operand()},
              {{type, samples, memory.data()},
               {type, batch, memory.data()},
               {type, per_sample, memory.data()}},
              nullptr);
    errors[h] = h == 0 ? run_cuda(call, forward[h], where)
                       : call.run(forward[h]);
  }
  EXPECT(errors[0] == errors[1], "%s: CUDA handler \"%s\", Host handler \"%s\"",
         where.c_str(), errors[0].c_str(), errors[1].c_str());
  EXPECT(errors[0].find(expected) != std::string::npos,
         "%s: \"%s\" does not say \"%s\"", where.c_str(), errors[0].c_str(),
         expected);
}

}  // namespace

int main() {
  simt::Device device;
  device.multiprocessors = 2;
  device.blocks_per_multiprocessor = 1;  // capped: the kernels loop
  simt::set_device(device, 0);

  for (bool s32 : {false, true}) {
    for (int64_t K : {1, 2, 50}) {
      agree<float>({5}, 8, K, s32);
      agree<double>({5}, 8, K, s32);
      agree<float>({2, 3}, 33, K, s32);
      agree<double>({2, 3}, 33, K, s32);
    }
  }
  agree<float>({37}, 1, 3, false);
  agree<double>({4}, 1000, 2, true);

  // The 16-bit types reach the handlers as f32 (the frontends convert them,
  // as the kernels compute in float anyway): both handlers refuse them
  // alike, as they do a shape outside the contract.
  same_refusal(XLA_FFI_DataType_F16, {3, 4}, "mean must be f32 or f64", "f16");
  same_refusal(XLA_FFI_DataType_BF16, {3, 4}, "mean must be f32 or f64",
               "bf16");
  same_refusal(XLA_FFI_DataType_F32, {3, 5}, "log_var", "log_var's shape");

  const XLA_FFI_Handler_Traits compatible =
      XLA_FFI_HANDLER_TRAITS_COMMAND_BUFFER_COMPATIBLE;
  EXPECT(traits_of(&KerasVaeReparamKlForwardCuda) == compatible,
         "the CUDA forward handler is not marked command-buffer compatible");
  EXPECT(traits_of(&KerasVaeReparamKlBackwardCuda) == compatible,
         "the CUDA backward handler is not marked command-buffer compatible");

  if (g_failures > 0) {
    std::fprintf(stderr, "xla_ffi_emulated_test: %d failure(s)\n", g_failures);
    return 1;
  }
  std::printf("xla_ffi_emulated_test: the CUDA and Host handlers agree\n");
  return 0;
}
