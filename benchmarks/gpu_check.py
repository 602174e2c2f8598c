"""`make gpu-check`: proves the CUDA path on a lent GPU machine, in one command.

From a checkout, with keras, namex and optree carried as cp312 wheels (the
machine has PyTorch, JAX with CUDA, CuPy, nvcc and compute-sanitizer, but no
TensorFlow, no Keras and no network):

    python3 -m benchmarks.gpu_check --out runs/gpu-check --wheels build/gpu-wheels

Each step writes its log into the output folder, and summary.md (and
summary.json) say what passed, how long each step took and where its
output is:

1. environment: the GPU, the driver, nvcc and the Python packages;
2. wheels: the carried wheels unpacked onto PYTHONPATH;
3. build: keras_vae._kernels with CUDA for sm_90 only, without TensorFlow
   (KERAS_VAE_BUILD_TF_OP=OFF);
4. tests: tests/test_gpu.py and tests/test_gpu_frameworks.py with
   KERAS_VAE_REQUIRE_GPU=1 (a skip is a failure), TensorFlow unimportable;
5. the GPU benchmark (benchmarks.gpu_bench): the fused op against a copy of
   the same bytes and the unfused composition in PyTorch and JAX at the four
   sizes of BENCHMARKS.md, and VAE.fit on JAX at K = 1, 5, 50;
6. compute-sanitizer memcheck, racecheck and synccheck on small forward and
   backward calls of every dtype (`--sanitizer-cases`).

The steps share a budget (--budget-s, 420 s: the machine runs one command for
at most 10 minutes); a step that would start past it is recorded as skipped.
`--dry-run` runs what needs no GPU: the arguments, the build's
configuration, the GPU tests without TensorFlow (they skip), the sanitizer
cases and the benchmark harness on the CPU at tiny sizes; `make test` runs it
so that this script cannot rot.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_TESTS = ["tests/test_gpu.py", "tests/test_gpu_frameworks.py"]
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck")
# The wheels a machine without Keras must be carried (`make gpu-wheels`),
# and the module each provides; a module the machine has is not unpacked.
REQUIRED_WHEELS = ("keras", "namex", "optree")
WHEEL_MODULES = {"keras": "keras", "namex": "namex", "optree": "optree",
                 "absl_py": "absl", "rich": "rich", "markdown_it_py": "markdown_it",
                 "mdurl": "mdurl", "pygments": "pygments", "h5py": "h5py"}
# Run before pytest: TensorFlow must not be needed, and must not be found.
NO_TENSORFLOW = (
    "import sys; sys.modules['tensorflow'] = None; import pytest; "
    "sys.exit(pytest.main(sys.argv[1:]))"
)


class Check:
    """The steps of one run, their logs and the budget they share."""

    def __init__(self, out, budget_s, dry_run):
        self.out, self.dry_run = out, dry_run
        self.deadline = time.monotonic() + budget_s
        self.steps = []
        self.env = dict(os.environ, PYTHONUNBUFFERED="1",
                        TF_CPP_MIN_LOG_LEVEL="2")
        self.pythonpath = [ROOT]

    def _env(self, extra):
        env = dict(self.env, **extra)
        env["PYTHONPATH"] = os.pathsep.join(
            self.pythonpath + [p for p in [os.environ.get("PYTHONPATH")] if p])
        return env

    def run(self, name, cmd, timeout_s, env=None):
        """Runs `cmd`, its output into <out>/<name>.log; True if it passed."""
        log = os.path.join(self.out, f"{name}.log")
        left = self.deadline - time.monotonic()
        if left < 10:
            self.steps.append({"step": name, "status": "skipped (budget)",
                               "seconds": 0, "log": None})
            return False
        started = time.monotonic()
        with open(log, "w") as f:
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            try:
                code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                                      cwd=ROOT, env=self._env(env or {}),
                                      timeout=min(timeout_s, left)).returncode
                status = "passed" if code == 0 else f"failed (exit {code})"
            except subprocess.TimeoutExpired:
                status = "failed (timed out)"
            except OSError as e:
                status = f"failed ({e})"
                f.write(f"{e}\n")
        self.steps.append({"step": name, "status": status,
                           "seconds": round(time.monotonic() - started, 1),
                           "log": os.path.basename(log)})
        print(f"gpu-check: {name}: {status} "
              f"({self.steps[-1]['seconds']} s)", flush=True)
        return status == "passed"

    def note(self, name, status, detail=""):
        self.steps.append({"step": name, "status": status, "seconds": 0,
                           "log": None, "detail": detail})
        print(f"gpu-check: {name}: {status} {detail}", flush=True)

    def summarize(self):
        ok = all(s["status"] == "passed" for s in self.steps)
        with open(os.path.join(self.out, "summary.json"), "w") as f:
            json.dump({"dry_run": self.dry_run, "passed": ok,
                       "steps": self.steps}, f, indent=1)
        lines = [f"# gpu-check{' (dry run)' if self.dry_run else ''}: "
                 f"{'passed' if ok else 'FAILED'}", "",
                 "| step | status | seconds | log |", "|---|---|---|---|"]
        for s in self.steps:
            lines.append(f"| {s['step']} | {s['status']} | {s['seconds']} "
                         f"| {s['log'] or s.get('detail', '')} |")
        with open(os.path.join(self.out, "summary.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines))
        return ok


def unpack_wheels(check, wheels_dir, dry_run):
    """Unpacks the carried wheels (zip files) whose module the machine lacks
    into build/gpu-site, put on PYTHONPATH: nothing can be installed there."""
    import importlib.util

    found = sorted(f for f in os.listdir(wheels_dir) if f.endswith(".whl")) \
        if os.path.isdir(wheels_dir) else []
    project = lambda wheel: wheel.split("-")[0].lower()  # noqa: E731
    missing = [w for w in REQUIRED_WHEELS
               if w not in {project(f) for f in found}
               and importlib.util.find_spec(w) is None]
    if missing and not dry_run:
        check.note("wheels", "failed",
                   f"missing in {wheels_dir}: {', '.join(missing)} "
                   "(`make gpu-wheels` fetches them)")
        return
    site = os.path.join(ROOT, "build", "gpu-site")
    unpacked = []
    for wheel in found:
        module = WHEEL_MODULES.get(project(wheel), project(wheel))
        if importlib.util.find_spec(module) is not None:
            continue  # the machine's own
        with zipfile.ZipFile(os.path.join(wheels_dir, wheel)) as z:
            z.extractall(site)
        unpacked.append(project(wheel))
    if unpacked:
        check.pythonpath.append(site)
    check.note("wheels", "passed",
               f"unpacked: {', '.join(unpacked) or 'none'}"
               + (f"; absent (dry run): {', '.join(missing)}" if missing else ""))


def build(check, arch, jobs, dry_run):
    """The framework-free module with CUDA for `arch`, into keras_vae/."""
    build_dir = os.path.join(ROOT, "build", "gpu-dry" if dry_run else "gpu")
    configure = ["cmake", "-S", ROOT, "-B", build_dir,
                 "-DCMAKE_BUILD_TYPE=Release", "-DKERAS_VAE_BUILD_TF_OP=OFF",
                 f"-DCMAKE_CUDA_ARCHITECTURES={arch}",
                 f"-DPython_EXECUTABLE={sys.executable}"]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    env = {"KERAS_VAE_CUDA": "auto" if dry_run else "on"}
    if dry_run:
        # The output directory of a dry run is its own: the tree's modules,
        # which other work uses, stay as they are.
        configure.append(f"-DKERAS_VAE_OUTPUT_DIR={build_dir}/out")
        return check.run("build-config", configure, 300, env)
    return (check.run("build-config", configure, 120, env)
            and check.run("build", ["cmake", "--build", build_dir, "-j",
                                    str(jobs)], 300, env))


def environment(check):
    script = (
        "import importlib, platform, sys\n"
        "print('python', sys.version.split()[0], platform.platform())\n"
        "for m in ('numpy', 'torch', 'jax', 'jaxlib', 'cupy', 'keras', "
        "'pybind11'):\n"
        "    try:\n"
        "        print(m, importlib.import_module(m).__version__)\n"
        "    except Exception as e:\n"
        "        print(m, 'absent:', type(e).__name__)\n"
    )
    check.run("environment", [sys.executable, "-c", script], 120)
    for tool in (["nvidia-smi"], ["nvcc", "--version"]):
        if shutil.which(tool[0]):
            check.run(f"environment-{tool[0]}", tool, 60)


def gpu_tests(check, dry_run):
    junit = os.path.join(check.out, "gpu_tests.xml")
    cmd = [sys.executable, "-c", NO_TENSORFLOW, *GPU_TESTS, "-q", "-rs",
           "-p", "no:cacheprovider", f"--junitxml={junit}"]
    # tests/conftest.py keeps backend-independent tests in TensorFlow's run;
    # nothing here imports TensorFlow (it is made unimportable above).
    env = {"KERAS_BACKEND": "tensorflow"}
    if not dry_run:
        env["KERAS_VAE_REQUIRE_GPU"] = "1"
    return check.run("tests", cmd, 300, env)


def sanitizers(check, dry_run):
    cases = [sys.executable, "-m", "benchmarks.gpu_check", "--sanitizer-cases"]
    if dry_run:
        return check.run("sanitizer-cases-cpu", cases + ["--device", "cpu"], 120)
    sanitizer = shutil.which("compute-sanitizer")
    if sanitizer is None:
        check.note("compute-sanitizer", "failed", "not on PATH")
        return False
    ok = True
    for tool in SANITIZER_TOOLS:
        # Without PyTorch's caching allocator every tensor is an allocation
        # of its own, so memcheck sees an access past its end.
        ok &= check.run(f"sanitizer-{tool}",
                        [sanitizer, "--tool", tool, "--error-exitcode", "1",
                         "--print-limit", "20", *cases], 150,
                        {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})
    return ok


def benchmark(check, dry_run):
    cmd = [sys.executable, "-m", "benchmarks.gpu_bench", "--out", check.out]
    if dry_run:
        cmd += ["--device", "cpu", "--tiny"]
    else:
        cmd += ["--calls", "30", "--repeats", "9", "--fit-steps", "10",
                "--fit-repeats", "3"]
    return check.run("benchmark", cmd, 300, {"KERAS_BACKEND": "jax"})


def sanitizer_cases(device):
    """Small forward and backward calls in every dtype, D odd and whole
    Philox blocks, K = 1 and 50, each buffer misaligned once: what
    compute-sanitizer watches. Checks that every output was written."""
    import torch

    from keras_vae.backend import torch as fused

    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        for batch, dim, k in ((3, 5, 1), (4, 8, 50), (33, 3, 2)):
            mean = torch.randn(batch, dim, device=device, dtype=dtype)
            log_var = torch.randn(batch, dim, device=device, dtype=dtype)
            mean.requires_grad_(True)
            log_var.requires_grad_(True)
            seed = torch.tensor([7, -8], device=device)
            z, kl, lr = fused.reparameterize_kl(mean, log_var, k, seed, dim % 2 == 1)
            (z.float().sum() + kl.float().sum() + lr.float().sum()).backward()
            for t in (z, kl, lr, mean.grad, log_var.grad):
                assert torch.isfinite(t.float()).all(), (dtype, batch, dim, k)
    if device == "cuda":
        # The raw kernels on buffers one element off their alignment.
        from keras_vae import _kernels

        base = torch.randn(2 * 4 * 8 + 8, device=device)
        mean = base[1:1 + 32].view(4, 8)
        z = torch.empty(2 * 2 * 4 * 8 + 1, device=device)[1:].view(2, 4, 8)
        kl, lr = torch.empty(4, device=device), torch.empty(2, 4, device=device)
        _kernels.cuda_forward(mean, mean, z, kl, lr, 2,
                              torch.tensor([1, 2], device=device))
        torch.cuda.synchronize()
        assert torch.isfinite(z).all()
    print("sanitizer cases: done")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for every result (created)")
    parser.add_argument("--wheels", default=os.path.join(ROOT, "build", "gpu-wheels"),
                        help="folder of the carried cp312 wheels: keras, namex, optree")
    parser.add_argument("--dry-run", action="store_true",
                        help="run only what needs no GPU")
    parser.add_argument("--arch", default="90", help="CUDA architectures to build")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--sanitizer-cases", action="store_true",
                        help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sanitizer_cases:
        sanitizer_cases(args.device)
        return 0
    if not args.out:
        parser.error("--out is required")
    os.makedirs(args.out, exist_ok=True)
    args.out = os.path.abspath(args.out)
    check = Check(args.out, args.budget_s, args.dry_run)
    unpack_wheels(check, args.wheels, args.dry_run)
    environment(check)
    if build(check, args.arch, args.jobs, args.dry_run):
        gpu_tests(check, args.dry_run)
        benchmark(check, args.dry_run)
        # Last: the slowest per kernel, so the budget's end cuts them first.
        sanitizers(check, args.dry_run)
    return 0 if check.summarize() else 1


if __name__ == "__main__":
    sys.exit(main())
