// keras_vae._kernels on CUDA buffers: any object with __cuda_array_interface__
// (CuPy arrays, PyTorch tensors), outputs preallocated by the caller, launched
// asynchronously on the caller's stream.
#include "python/cuda_entry.h"

#include <cstdint>
#include <string>
#include <vector>

#include "cuda/launch_plan.h"
#include "cuda/reparam_kl_cuda.h"
#include "reparam_kl.h"
#include "shapes.h"

namespace py = pybind11;

namespace keras_vae {
namespace {

enum class DType { kFloat16, kBFloat16, kFloat32, kFloat64 };

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
  }
  return "?";
}

// One argument's view of a __cuda_array_interface__ (version 2 or 3).
struct DeviceArray {
  std::string name;
  void* data;
  std::vector<int64_t> shape;
  DType dtype;
};

// typestr -> dtype. bfloat16 has no typestr, so its buffers arrive as any
// 2-byte type (a PyTorch caller passes tensor.view(torch.int16)) together
// with dtype="bfloat16".
DType parse_dtype(const std::string& name, const std::string& typestr,
                  const std::string& dtype) {
  const bool little = !typestr.empty() && (typestr[0] == '<' || typestr[0] == '|');
  const std::string kind = typestr.size() > 1 ? typestr.substr(1) : "";
  if (little && dtype == "bfloat16") {
    if (kind == "i2" || kind == "u2" || kind == "V2" || kind == "f2") {
      return DType::kBFloat16;
    }
  } else if (little && dtype.empty()) {
    if (kind == "f2") return DType::kFloat16;
    if (kind == "f4") return DType::kFloat32;
    if (kind == "f8") return DType::kFloat64;
  }
  if (!dtype.empty() && dtype != "bfloat16") {
    throw py::value_error("dtype must be None or 'bfloat16', got '" + dtype +
                          "'");
  }
  throw py::type_error(
      name + " has typestr '" + typestr +
      "'; expected '<f2', '<f4' or '<f8', or a 2-byte type with "
      "dtype='bfloat16'");
}

DeviceArray device_array(const py::handle& obj, const char* name,
                         const std::string& dtype, bool writable) {
  if (!py::hasattr(obj, "__cuda_array_interface__")) {
    throw py::type_error(std::string(name) +
                         " must be a CUDA array (an object with "
                         "__cuda_array_interface__, e.g. a CuPy array or a "
                         "PyTorch CUDA tensor)");
  }
  const py::dict cai = obj.attr("__cuda_array_interface__");
  DeviceArray a;
  a.name = name;
  for (const auto& d : cai["shape"].cast<py::tuple>()) {
    a.shape.push_back(d.cast<int64_t>());
  }
  a.dtype = parse_dtype(name, cai["typestr"].cast<std::string>(), dtype);
  const py::tuple data = cai["data"].cast<py::tuple>();
  a.data = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
  if (writable && data[1].cast<bool>()) {
    throw py::value_error(std::string(name) + " is read-only");
  }
  if (cai.contains("mask") && !cai["mask"].is_none()) {
    throw py::value_error(std::string(name) + " must not be masked");
  }
  if (cai.contains("strides") && !cai["strides"].is_none()) {
    const py::tuple strides = cai["strides"].cast<py::tuple>();
    const int64_t item = a.dtype == DType::kFloat64   ? 8
                         : a.dtype == DType::kFloat32 ? 4
                                                      : 2;
    int64_t expected = item;
    for (size_t i = a.shape.size(); i-- > 0;) {
      if (a.shape[i] > 1 && strides[i].cast<int64_t>() != expected) {
        throw py::value_error(std::string(name) + " must be C-contiguous");
      }
      expected *= a.shape[i];
    }
  }
  return a;
}

void raise_if(const std::string& error) {
  if (!error.empty()) throw py::value_error(error);
}

// The seed as the kernels read it: two int64 (or int32, sign-extended) words
// in device memory, never copied to the host.
cuda::NoiseSeed device_seed(const py::handle& obj) {
  if (!py::hasattr(obj, "__cuda_array_interface__")) {
    throw py::type_error(
        "seed must be a CUDA array of two int64 or int32 words (e.g. a "
        "PyTorch CUDA tensor on the device of mean)");
  }
  const py::dict cai = obj.attr("__cuda_array_interface__");
  const std::string typestr = cai["typestr"].cast<std::string>();
  std::vector<int64_t> shape;
  for (const auto& d : cai["shape"].cast<py::tuple>()) {
    shape.push_back(d.cast<int64_t>());
  }
  if (shape != std::vector<int64_t>{2} ||
      (typestr != "<i8" && typestr != "<i4")) {
    throw py::value_error("seed must have shape (2,) and dtype int64 or "
                          "int32, got typestr '" + typestr + "' and shape " +
                          format_dims(shape, DimsStyle::kTuple));
  }
  if (cai.contains("strides") && !cai["strides"].is_none()) {
    const py::tuple strides = cai["strides"].cast<py::tuple>();
    if (strides[0].cast<int64_t>() != (typestr == "<i8" ? 8 : 4)) {
      throw py::value_error("seed must be contiguous");
    }
  }
  const void* words = reinterpret_cast<const void*>(
      cai["data"].cast<py::tuple>()[0].cast<uintptr_t>());
  return typestr == "<i8"
             ? cuda::NoiseSeed::on_device(static_cast<const int64_t*>(words))
             : cuda::NoiseSeed::on_device(static_cast<const int32_t*>(words));
}

// The CUDA device holding `data`; a clear error if it is not device memory.
int device_of(const void* data, const std::string& name) {
  cudaPointerAttributes attr;
  if (cudaPointerGetAttributes(&attr, data) != cudaSuccess ||
      (attr.type != cudaMemoryTypeDevice &&
       attr.type != cudaMemoryTypeManaged)) {
    cudaGetLastError();  // clear the error of a host pointer
    throw py::value_error(name + " is not in CUDA device memory");
  }
  return attr.device;
}

// Checks the shape contract (shapes.h) of mean, log_var and num_samples, and
// every array (and the seed) against mean's dtype and device; returns the
// shapes of the call and makes mean's device current for the launch. A
// caller that knows the device of every array (PyTorch does) names it, and
// the pointers are not queried: cudaPointerGetAttributes is a driver call.
ReparamDims check_arrays(const std::vector<DeviceArray>& arrays,
                         const cuda::NoiseSeed& seed, int64_t num_samples,
                         int known_device) {
  const DeviceArray& mean = arrays[0];
  ReparamDims dims;
  raise_if(reparam_dims(mean.shape, arrays[1].shape, num_samples, &dims,
                        DimsStyle::kTuple));
  int device = known_device;
  auto expect_device = [&](const void* data, const std::string& name) {
    // Empty arrays may have no buffer.
    if (data == nullptr || known_device >= 0) return;
    const int on = device_of(data, name);
    if (device >= 0 && on != device) {
      throw py::value_error(name + " is on CUDA device " + std::to_string(on) +
                            " but mean is on device " +
                            std::to_string(device));
    }
    device = on;
  };
  for (const DeviceArray& a : arrays) {
    if (a.dtype != mean.dtype) {
      throw py::type_error(a.name + " has dtype " + dtype_name(a.dtype) +
                           " but mean has " + dtype_name(mean.dtype));
    }
    expect_device(a.data, a.name);
  }
  expect_device(seed.device_words, "seed");
  int current = -1;
  if (device >= 0 && (cudaGetDevice(&current) != cudaSuccess ||
                      current != device) &&
      cudaSetDevice(device) != cudaSuccess) {
    throw std::runtime_error("cudaSetDevice failed");
  }
  return dims;
}

void raise_if_failed(cudaError_t err) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("CUDA launch failed: ") +
                             cudaGetErrorString(err));
  }
}

template <typename T>
T* ptr(const DeviceArray& a) {
  return static_cast<T*>(a.data);
}

// Calls f(T()) with T the CUDA storage type of `dtype`.
template <typename F>
cudaError_t with_storage_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat16: return f(__half());
    case DType::kBFloat16: return f(__nv_bfloat16());
    case DType::kFloat32: return f(float());
    case DType::kFloat64: return f(double());
  }
  return cudaErrorInvalidValue;
}

void cuda_forward(py::handle mean, py::handle log_var, py::handle z,
                  py::handle kl, py::handle log_ratio, int64_t num_samples,
                  py::handle seed, uintptr_t stream, const std::string& dtype,
                  int device) {
  const std::vector<DeviceArray> a = {
      device_array(mean, "mean", dtype, false),
      device_array(log_var, "log_var", dtype, false),
      device_array(z, "z", dtype, true),
      device_array(kl, "kl", dtype, true),
      device_array(log_ratio, "log_ratio", dtype, true)};
  const cuda::NoiseSeed noise = device_seed(seed);
  const ReparamDims dims = check_arrays(a, noise, num_samples, device);
  raise_if(check_forward_outputs(dims, a[2].shape, a[3].shape, a[4].shape,
                                 DimsStyle::kTuple));
  raise_if_failed(with_storage_type(a[0].dtype, [&](auto tag) {
    using T = decltype(tag);
    return cuda::reparam_kl_forward<T>(
        dims.shape, ptr<T>(a[0]), ptr<T>(a[1]), noise, ptr<T>(a[2]), ptr<T>(a[3]),
        ptr<T>(a[4]), reinterpret_cast<cudaStream_t>(stream));
  }));
}

void cuda_backward(py::handle mean, py::handle log_var, py::handle grad_z,
                   py::handle grad_kl, py::handle grad_log_ratio,
                   py::handle grad_mean, py::handle grad_log_var,
                   int64_t num_samples, py::handle seed, bool stop_params,
                   uintptr_t stream, const std::string& dtype, int device) {
  const std::vector<DeviceArray> a = {
      device_array(mean, "mean", dtype, false),
      device_array(log_var, "log_var", dtype, false),
      device_array(grad_z, "grad_z", dtype, false),
      device_array(grad_kl, "grad_kl", dtype, false),
      device_array(grad_log_ratio, "grad_log_ratio", dtype, false),
      device_array(grad_mean, "grad_mean", dtype, true),
      device_array(grad_log_var, "grad_log_var", dtype, true)};
  const cuda::NoiseSeed noise = device_seed(seed);
  const ReparamDims dims = check_arrays(a, noise, num_samples, device);
  raise_if(check_upstream_grads(dims, a[2].shape, a[3].shape, a[4].shape,
                                DimsStyle::kTuple));
  raise_if(expect_dims("grad_mean", dims.params, a[5].shape,
                       DimsStyle::kTuple));
  raise_if(expect_dims("grad_log_var", dims.params, a[6].shape,
                       DimsStyle::kTuple));
  raise_if_failed(with_storage_type(a[0].dtype, [&](auto tag) {
    using T = decltype(tag);
    return cuda::reparam_kl_backward<T>(
        dims.shape, ptr<T>(a[0]), ptr<T>(a[1]), noise, ptr<T>(a[2]), ptr<T>(a[3]),
        ptr<T>(a[4]), stop_params, ptr<T>(a[5]), ptr<T>(a[6]),
        reinterpret_cast<cudaStream_t>(stream));
  }));
}

py::dict plan_dict(const cuda::LaunchPlan& p) {
  py::dict d;
  d["group_width"] = p.group_width;
  d["vectorized"] = p.vectorized;
  d["threads"] = p.threads;
  d["blocks"] = p.blocks;
  return d;
}

}  // namespace

void register_cuda_entry(py::module_& m) {
  m.def("cuda_forward", &cuda_forward,
        "Fills z [K, ..., D], kl [...] and log_ratio [K, ...] from mean and "
        "log_var [..., D], asynchronously on `stream` (a cudaStream_t as an "
        "int; 0 is the default stream), without synchronizing: `seed` is a "
        "CUDA array of two int64 or int32 words that the kernels read on the "
        "device. All arrays share one dtype and device; bfloat16 buffers are "
        "passed as 2-byte views with dtype='bfloat16'. `device`: the CUDA "
        "device of every array when the caller knows it (the pointers are "
        "then not queried), or -1.",
        py::arg("mean"), py::arg("log_var"), py::arg("z"), py::arg("kl"),
        py::arg("log_ratio"), py::arg("num_samples"), py::arg("seed"),
        py::arg("stream") = 0, py::arg("dtype") = "", py::arg("device") = -1);
  m.def("cuda_backward", &cuda_backward,
        "Fills grad_mean and grad_log_var [..., D] from the upstream "
        "gradients of (z, kl, log_ratio), regenerating the noise from the "
        "seed; asynchronous on `stream` like cuda_forward.",
        py::arg("mean"), py::arg("log_var"), py::arg("grad_z"),
        py::arg("grad_kl"), py::arg("grad_log_ratio"), py::arg("grad_mean"),
        py::arg("grad_log_var"), py::arg("num_samples"), py::arg("seed"),
        py::arg("stop_params") = false, py::arg("stream") = 0,
        py::arg("dtype") = "", py::arg("device") = -1);
  m.def(
      "cuda_launch_plan",
      [](int64_t rows, int64_t dim, int64_t num_samples, int itemsize,
         int64_t resident_blocks) {
        if (itemsize != 2 && itemsize != 4 && itemsize != 8) {
          throw py::value_error("itemsize must be 2, 4 or 8");
        }
        // 4 normals per Philox block in float (and the 16-bit types), 2 in
        // double: the layout of reparam_kl.h.
        const int per_block = itemsize == 8
                                  ? NormalsPerBlock<double>::kCount
                                  : NormalsPerBlock<float>::kCount;
        const ReparamShape s{num_samples, rows, dim};
        py::dict d;
        d["forward"] =
            plan_dict(cuda::forward_plan(s, per_block, true, resident_blocks));
        d["backward"] =
            plan_dict(cuda::backward_plan(s, per_block, true, resident_blocks));
        d["threads_per_block"] = cuda::kThreadsPerBlock;
        return d;
      },
      "The launch geometry the CUDA kernels would use, for aligned buffers "
      "on a device that keeps `resident_blocks` blocks resident (host-only; "
      "needs no GPU).",
      py::arg("rows"), py::arg("dim"), py::arg("num_samples"),
      py::arg("itemsize"), py::arg("resident_blocks"));
}

}  // namespace keras_vae
