// keras_vae._kernels: the fused kernels on NumPy buffers, with no TensorFlow.
// It exists so the kernels can be tested and measured where TensorFlow is
// absent or cannot see the device.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cpu/normals.h"
#include "cpu/reparam_kl_cpu.h"
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

// Splits [0, total) over hardware threads (the NumPy entry has no pool).
void thread_for(int64_t total, int64_t /*cost*/,
                const std::function<void(int64_t, int64_t)>& fn) {
  const int64_t workers = std::max<int64_t>(
      1, std::min<int64_t>(total, std::thread::hardware_concurrency()));
  if (workers <= 1) return cpu::serial_for(total, 0, fn);
  std::vector<std::thread> pool;
  const int64_t step = (total + workers - 1) / workers;
  for (int64_t b = 0; b < total; b += step) {
    pool.emplace_back(fn, b, std::min(total, b + step));
  }
  for (auto& t : pool) t.join();
}

template <typename T>
py::tuple forward(const Array<T>& mean, const Array<T>& log_var,
                  int64_t num_samples, uint64_t seed0, uint64_t seed1) {
  const ReparamDims dims = checked_dims(mean, log_var, num_samples);
  Array<T> z(py_shape(dims.z)), kl(py_shape(dims.kl)),
      log_ratio(py_shape(dims.log_ratio));
  {
    py::gil_scoped_release release;
    cpu::reparam_kl_forward<T>(dims.shape, mean.data(), log_var.data(),
                               stream_from_seed(seed0, seed1),
                               z.mutable_data(), kl.mutable_data(),
                               log_ratio.mutable_data(), thread_for);
  }
  return py::make_tuple(z, kl, log_ratio);
}

template <typename T>
py::tuple backward(const Array<T>& mean, const Array<T>& log_var,
                   int64_t num_samples, uint64_t seed0, uint64_t seed1,
                   const Array<T>& grad_z, const Array<T>& grad_kl,
                   const Array<T>& grad_log_ratio, bool stop_params) {
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
        grad_mean.mutable_data(), grad_log_var.mutable_data(), thread_for);
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
      "forward(mean, log_var, num_samples, seed0, seed1) -> (z, kl, log_ratio)";
  const char* bwd_doc =
      "backward(mean, log_var, num_samples, seed0, seed1, grad_z, grad_kl, "
      "grad_log_ratio, stop_params) -> (grad_mean, grad_log_var)";
  // double first so float64 input is not cast down by forcecast.
  m.def("cpu_forward", &forward<double>, fwd_doc, py::arg("mean").noconvert(),
        py::arg("log_var").noconvert(), py::arg("num_samples"),
        py::arg("seed0"), py::arg("seed1"));
  m.def("cpu_forward", &forward<float>, fwd_doc, py::arg("mean"),
        py::arg("log_var"), py::arg("num_samples"), py::arg("seed0"),
        py::arg("seed1"));
  m.def("cpu_backward", &backward<double>, bwd_doc,
        py::arg("mean").noconvert(), py::arg("log_var").noconvert(),
        py::arg("num_samples"), py::arg("seed0"), py::arg("seed1"),
        py::arg("grad_z"), py::arg("grad_kl"), py::arg("grad_log_ratio"),
        py::arg("stop_params") = false);
  m.def("cpu_backward", &backward<float>, bwd_doc, py::arg("mean"),
        py::arg("log_var"), py::arg("num_samples"), py::arg("seed0"),
        py::arg("seed1"), py::arg("grad_z"), py::arg("grad_kl"),
        py::arg("grad_log_ratio"), py::arg("stop_params") = false);
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
