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

// Checks the shape contract (shapes.h) of mean, log_var and num_samples, and
// every array against mean's dtype and device; returns the shapes of the
// call and makes mean's device current for the launch.
ReparamDims check_arrays(const std::vector<DeviceArray>& arrays,
                         int64_t num_samples) {
  const DeviceArray& mean = arrays[0];
  ReparamDims dims;
  raise_if(reparam_dims(mean.shape, arrays[1].shape, num_samples, &dims,
                        DimsStyle::kTuple));
  int device = -1;
  for (const DeviceArray& a : arrays) {
    if (a.dtype != mean.dtype) {
      throw py::type_error(a.name + " has dtype " + dtype_name(a.dtype) +
                           " but mean has " + dtype_name(mean.dtype));
    }
    if (a.data == nullptr) continue;  // empty arrays may have no buffer
    cudaPointerAttributes attr;
    if (cudaPointerGetAttributes(&attr, a.data) != cudaSuccess ||
        (attr.type != cudaMemoryTypeDevice &&
         attr.type != cudaMemoryTypeManaged)) {
      cudaGetLastError();  // clear the error of a host pointer
      throw py::value_error(a.name + " is not in CUDA device memory");
    }
    if (device >= 0 && attr.device != device) {
      throw py::value_error(a.name + " is on CUDA device " +
                            std::to_string(attr.device) +
                            " but mean is on device " +
                            std::to_string(device));
    }
    device = attr.device;
  }
  if (device >= 0 && cudaSetDevice(device) != cudaSuccess) {
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
                  uint64_t seed0, uint64_t seed1, uintptr_t stream,
                  const std::string& dtype) {
  const std::vector<DeviceArray> a = {
      device_array(mean, "mean", dtype, false),
      device_array(log_var, "log_var", dtype, false),
      device_array(z, "z", dtype, true),
      device_array(kl, "kl", dtype, true),
      device_array(log_ratio, "log_ratio", dtype, true)};
  const ReparamDims dims = check_arrays(a, num_samples);
  raise_if(check_forward_outputs(dims, a[2].shape, a[3].shape, a[4].shape,
                                 DimsStyle::kTuple));
  const PhiloxStream noise = stream_from_seed(seed0, seed1);
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
                   int64_t num_samples, uint64_t seed0, uint64_t seed1,
                   bool stop_params, uintptr_t stream,
                   const std::string& dtype) {
  const std::vector<DeviceArray> a = {
      device_array(mean, "mean", dtype, false),
      device_array(log_var, "log_var", dtype, false),
      device_array(grad_z, "grad_z", dtype, false),
      device_array(grad_kl, "grad_kl", dtype, false),
      device_array(grad_log_ratio, "grad_log_ratio", dtype, false),
      device_array(grad_mean, "grad_mean", dtype, true),
      device_array(grad_log_var, "grad_log_var", dtype, true)};
  const ReparamDims dims = check_arrays(a, num_samples);
  raise_if(check_upstream_grads(dims, a[2].shape, a[3].shape, a[4].shape,
                                DimsStyle::kTuple));
  raise_if(expect_dims("grad_mean", dims.params, a[5].shape,
                       DimsStyle::kTuple));
  raise_if(expect_dims("grad_log_var", dims.params, a[6].shape,
                       DimsStyle::kTuple));
  const PhiloxStream noise = stream_from_seed(seed0, seed1);
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
        "int; 0 is the default stream). All arrays share one dtype and "
        "device; bfloat16 buffers are passed as 2-byte views with "
        "dtype='bfloat16'.",
        py::arg("mean"), py::arg("log_var"), py::arg("z"), py::arg("kl"),
        py::arg("log_ratio"), py::arg("num_samples"), py::arg("seed0"),
        py::arg("seed1"), py::arg("stream") = 0, py::arg("dtype") = "");
  m.def("cuda_backward", &cuda_backward,
        "Fills grad_mean and grad_log_var [..., D] from the upstream "
        "gradients of (z, kl, log_ratio), regenerating the noise from the "
        "seed; asynchronous on `stream` like cuda_forward.",
        py::arg("mean"), py::arg("log_var"), py::arg("grad_z"),
        py::arg("grad_kl"), py::arg("grad_log_ratio"), py::arg("grad_mean"),
        py::arg("grad_log_var"), py::arg("num_samples"), py::arg("seed0"),
        py::arg("seed1"), py::arg("stop_params") = false,
        py::arg("stream") = 0, py::arg("dtype") = "");
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
