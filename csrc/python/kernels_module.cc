// keras_vae._kernels: the fused kernels on NumPy buffers, with no TensorFlow.
// It exists so the kernels can be tested and measured where TensorFlow is
// absent or cannot see the device.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cpu/normals.h"
#include "cpu/reparam_kl_cpu.h"
#include "cpu/thread_pool.h"
#include "python/ffi_capsules.h"
#include "reparam_kl.h"
#include "shapes.h"
#if KERAS_VAE_WITH_CUDA
#include "python/cuda_entry.h"
#endif

namespace py = pybind11;

namespace keras_vae {
namespace {

template <typename T>
using Array = py::array_t<T, py::array::c_style | py::array::forcecast>;

Dims dims_of(const py::array& a) {
  return Dims(a.shape(), a.shape() + a.ndim());
}

std::vector<py::ssize_t> py_shape(const Dims& d) {
  return std::vector<py::ssize_t>(d.begin(), d.end());
}

void raise_if(const std::string& error) {
  if (!error.empty()) throw py::value_error(error);
}

// The shape contract (shapes.h), with the caller's argument names in every
// error and shapes written as Python tuples.
template <typename T>
ReparamDims checked_dims(const Array<T>& mean, const Array<T>& log_var,
                         int64_t num_samples) {
  ReparamDims dims;
  raise_if(reparam_dims(dims_of(mean), dims_of(log_var), num_samples, &dims,
                        DimsStyle::kTuple));
  return dims;
}

// The threads a call uses when it names none: set_num_threads, else the
// hardware's.
std::atomic<int> default_num_threads{0};

// The parallel-for of one call: the persistent pool, with `num_threads`
// threads (0: the default), serial for small work.
cpu::ParallelFor pool_for(int num_threads) {
  if (num_threads <= 0) num_threads = default_num_threads.load();
  if (num_threads <= 0) {
    num_threads = static_cast<int>(std::thread::hardware_concurrency());
  }
  return cpu::pool_parallel_for(num_threads);
}

template <typename T>
py::tuple forward(const Array<T>& mean, const Array<T>& log_var,
                  int64_t num_samples, uint64_t seed0, uint64_t seed1,
                  int num_threads) {
  const ReparamDims dims = checked_dims(mean, log_var, num_samples);
  Array<T> z(py_shape(dims.z)), kl(py_shape(dims.kl)),
      log_ratio(py_shape(dims.log_ratio));
  {
    py::gil_scoped_release release;
    cpu::reparam_kl_forward<T>(dims.shape, mean.data(), log_var.data(),
                               stream_from_seed(seed0, seed1),
                               z.mutable_data(), kl.mutable_data(),
                               log_ratio.mutable_data(), pool_for(num_threads));
  }
  return py::make_tuple(z, kl, log_ratio);
}

template <typename T>
py::tuple backward(const Array<T>& mean, const Array<T>& log_var,
                   int64_t num_samples, uint64_t seed0, uint64_t seed1,
                   const Array<T>& grad_z, const Array<T>& grad_kl,
                   const Array<T>& grad_log_ratio, bool stop_params,
                   int num_threads) {
  const ReparamDims dims = checked_dims(mean, log_var, num_samples);
  raise_if(check_upstream_grads(dims, dims_of(grad_z), dims_of(grad_kl),
                                dims_of(grad_log_ratio), DimsStyle::kTuple));
  Array<T> grad_mean(py_shape(dims.params)),
      grad_log_var(py_shape(dims.params));
  {
    py::gil_scoped_release release;
    cpu::reparam_kl_backward<T>(
        dims.shape, mean.data(), log_var.data(), stream_from_seed(seed0, seed1),
        grad_z.data(), grad_kl.data(), grad_log_ratio.data(), stop_params,
        grad_mean.mutable_data(), grad_log_var.mutable_data(),
        pool_for(num_threads));
  }
  return py::make_tuple(grad_mean, grad_log_var);
}

}  // namespace
}  // namespace keras_vae

PYBIND11_MODULE(_kernels, m) {
  using namespace keras_vae;
  m.doc() = "The fused reparameterize-and-KL kernels on NumPy buffers.";
  m.def("build_info", [] {
    py::dict info;
    info["cpu"] = true;
    info["cuda"] = static_cast<bool>(KERAS_VAE_WITH_CUDA);
    info["cuda_architectures"] = std::string(KERAS_VAE_CUDA_ARCHS);
    return info;
  }, "What this build compiled: CPU, CUDA and the CUDA architectures.");
  const char* fwd_doc =
      "forward(mean, log_var, num_samples, seed0, seed1, num_threads=0) -> "
      "(z, kl, log_ratio). num_threads: the threads of the persistent pool "
      "to use (the framework's setting, e.g. torch.get_num_threads()); 0 "
      "uses set_num_threads' value, else the hardware's.";
  const char* bwd_doc =
      "backward(mean, log_var, num_samples, seed0, seed1, grad_z, grad_kl, "
      "grad_log_ratio, stop_params, num_threads=0) -> (grad_mean, "
      "grad_log_var)";
  // double first so float64 input is not cast down by forcecast.
  m.def("cpu_forward", &forward<double>, fwd_doc, py::arg("mean").noconvert(),
        py::arg("log_var").noconvert(), py::arg("num_samples"),
        py::arg("seed0"), py::arg("seed1"), py::arg("num_threads") = 0);
  m.def("cpu_forward", &forward<float>, fwd_doc, py::arg("mean"),
        py::arg("log_var"), py::arg("num_samples"), py::arg("seed0"),
        py::arg("seed1"), py::arg("num_threads") = 0);
  m.def("cpu_backward", &backward<double>, bwd_doc,
        py::arg("mean").noconvert(), py::arg("log_var").noconvert(),
        py::arg("num_samples"), py::arg("seed0"), py::arg("seed1"),
        py::arg("grad_z"), py::arg("grad_kl"), py::arg("grad_log_ratio"),
        py::arg("stop_params") = false,
        py::arg("num_threads") = 0);
  m.def("cpu_backward", &backward<float>, bwd_doc, py::arg("mean"),
        py::arg("log_var"), py::arg("num_samples"), py::arg("seed0"),
        py::arg("seed1"), py::arg("grad_z"), py::arg("grad_kl"),
        py::arg("grad_log_ratio"), py::arg("stop_params") = false,
        py::arg("num_threads") = 0);
  m.def("set_num_threads", [](int n) {
    if (n < 0) throw py::value_error("num_threads must be >= 0");
    default_num_threads.store(n);
  }, py::arg("num_threads"),
        "The threads a call uses when it names none (0: the hardware's). "
        "The pool's threads start once and are reused by every call.");
  m.def("get_num_threads", [] { return default_num_threads.load(); },
        "set_num_threads' value (0: the hardware's).");
  m.def("cpu_isa", [] { return cpu::cpu_isa_name(cpu::active_cpu_isa()); },
        "The instruction set the CPU kernels draw float noise with: "
        "'scalar', 'avx2' or 'avx512'.");
  m.def("supported_cpu_isas", [] {
    py::list names;
    for (auto isa : {cpu::CpuIsa::kScalar, cpu::CpuIsa::kAvx2,
                     cpu::CpuIsa::kAvx512}) {
      if (cpu::cpu_isa_supported(isa)) names.append(cpu::cpu_isa_name(isa));
    }
    return names;
  }, "The instruction sets this build and this CPU can run, narrowest first.");
  m.def("set_cpu_isa", [](const std::string& isa) {
    cpu::CpuIsa parsed;
    if (!cpu::parse_cpu_isa(isa.c_str(), &parsed)) {
      throw py::value_error(
          "isa must be 'scalar', 'avx2' or 'avx512', got '" + isa + "'");
    }
    if (!cpu::set_cpu_isa(parsed)) {
      throw py::value_error("isa '" + isa +
                            "' is not supported by this CPU or build");
    }
  }, py::arg("isa"),
        "Forces the CPU kernels of this module onto one instruction set (for "
        "tests and measurements; the TensorFlow op reads KERAS_VAE_CPU_ISA).");
#if KERAS_VAE_WITH_CUDA
  register_cuda_entry(m);
#endif
  register_ffi_capsules(m);
}
