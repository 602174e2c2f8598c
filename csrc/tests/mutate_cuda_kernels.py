#!/usr/bin/env python3
"""Shows that the emulated CUDA tests catch realistic bugs in the kernels.

Run by hand (not in CI), from the repository root:

    python3 csrc/tests/mutate_cuda_kernels.py [--build-dir build/mutations]

Each mutation below is applied to a copy of csrc/cuda/reparam_kl_cuda.cu; the
three flavours of reparam_kl_cuda_emulated_test are built against the copy
and run, and a table shows which flavours fail (catch the bug). A mutation no
flavour catches makes the script exit with status 1. About a minute per
mutation on two cores.
"""

import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
SOURCE = ROOT / "csrc" / "cuda" / "reparam_kl_cuda.cu"
FLAVOURS = ("plain", "asan", "tsan")
ENVIRONMENT = {
    "asan": {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1",
             "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"},
    "tsan": {"TSAN_OPTIONS": "halt_on_error=1"},
}
ARGUMENTS = {"tsan": ["float32"]}  # as ctest runs it

# (name, text of the kernel source, its replacement). Every occurrence is
# replaced; the text must occur.
MUTATIONS = [
    ("shuffle offset leaves the group",
     "for (int offset = group_width / 2; offset > 0; offset /= 2)",
     "for (int offset = group_width; offset > 0; offset /= 2)"),
    ("shuffle mask of half a warp",
     "__shfl_xor_sync(0xffffffffu, kl_sum, offset)",
     "__shfl_xor_sync(0x0000ffffu, kl_sum, offset)"),
    ("per-lane loop bound (both kernels)",
     "first < items;",
     "lanes.item(first, group_width) < items;"),
    ("alignment check bypassed",
     "const bool aligned = aligned_to(mean, kChunkBytes) &&",
     "const bool aligned = true || aligned_to(mean, kChunkBytes) &&"),
    ("tail of D dropped",
     "active && d0 < D; d0 += d_step",
     "active && d0 + P <= D; d0 += d_step"),
    ("output layout swapped (z and log_ratio n-major)",
     "const int64_t row = k * N + n;\n    C lr_sum",
     "const int64_t row = n * K + k;\n    C lr_sum"),
    ("kl written for every k",
     "if (k == 0) kl[n] = S::store(kl_sum);",
     "kl[n] = S::store(kl_sum);"),
    ("grid stride of one warp (both kernels)",
     "first += lanes.stride",
     "first += lanes.per_warp"),
    ("32-bit thread index (both kernels)",
     "(static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x)",
     "(blockIdx.x * blockDim.x + threadIdx.x)"),
    ("backward shuffle leaves the group",
     "d_mu[e] += __shfl_xor_sync(0xffffffffu, d_mu[e], offset);",
     "d_mu[e] += __shfl_xor_sync(0xffffffffu, d_mu[e], 2 * offset);"),
    ("KL gradient added by every lane of a group",
     "if (active && group_lane == 0) {\n      const C g_kl",
     "if (active) {\n      const C g_kl"),
    ("backward alignment check bypassed",
     "const bool aligned = aligned_to(grad_z, kChunkBytes) &&",
     "const bool aligned = true || aligned_to(grad_z, kChunkBytes) &&"),
    ("one buffer's alignment unchecked (forward z)",
     "aligned_to(log_var, kChunkBytes) &&\n                       aligned_to(z, kChunkBytes);",
     "aligned_to(log_var, kChunkBytes);"),
    ("int32 seed words read as int64",
     "if (seed.int32_words) {",
     "if (false) {"),
    ("32-bit flat index of z",
     "const int64_t out_at = row * D + d0;",
     "const int out_at = row * D + d0;"),
]


def run(cmd, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def first_failure(output):
    """The first line that says why a run failed: the emulator's or a
    sanitizer's report if there is one, with directories dropped."""
    lines = [re.sub(r"/\S*/", "", line).strip() for line in output.splitlines()]
    for marker in ("reparam_kl_cuda.cu:", "ThreadSanitizer", "runtime error",
                   "AddressSanitizer", ": "):
        for line in lines:
            if marker in line and "emulated cases" not in line:
                return line[line.find(marker) if marker.endswith(":") else 0:][:140]
    return lines[-1][:140] if lines else ""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build-dir", default=str(ROOT / "build" / "mutations"))
    parser.add_argument("--cmake", default=shutil.which("cmake") or "cmake")
    parser.add_argument("--only", help="run the mutations whose name contains this")
    args = parser.parse_args()

    build = pathlib.Path(args.build_dir)
    build.mkdir(parents=True, exist_ok=True)
    mutant = build / "mutant" / "reparam_kl_cuda.cu"
    mutant.parent.mkdir(exist_ok=True)
    original = SOURCE.read_text()
    mutant.write_text(original)
    configure = run([args.cmake, "-S", str(ROOT / "csrc" / "tests"), "-B",
                     str(build), "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
                     f"-DKERAS_VAE_CUDA_SOURCE={mutant}"])
    if configure.returncode:
        sys.exit(configure.stdout + configure.stderr)
    targets = [f"reparam_kl_cuda_emulated_test_{f}" for f in FLAVOURS]

    rows = []
    for name, old, new in MUTATIONS:
        if args.only and args.only not in name:
            continue
        if old not in original:
            sys.exit(f"mutation '{name}': text not found in {SOURCE}")
        mutant.write_text(original.replace(old, new))
        started = time.time()
        built = run([args.cmake, "--build", str(build), "-j", "2", "--target",
                     *targets])
        if built.returncode:
            rows.append((name, ["build failed"] * 3, built.stderr[-200:]))
            continue
        verdicts, why = [], ""
        for flavour in FLAVOURS:
            env = dict(os.environ, **ENVIRONMENT.get(flavour, {}))
            result = run([str(build / f"reparam_kl_cuda_emulated_test_{flavour}"),
                          *ARGUMENTS.get(flavour, [])], env=env)
            caught = result.returncode != 0
            verdicts.append("caught" if caught else "-")
            if caught and not why:
                why = f"{flavour}: {first_failure(result.stdout + result.stderr)}"
        rows.append((name, verdicts, why))
        print(f"{name}: {' '.join(verdicts)} ({time.time() - started:.0f} s)",
              flush=True)
    mutant.write_text(original)

    print()
    print("| mutation | plain | asan+ubsan | tsan | first report |")
    print("|---|---|---|---|---|")
    for name, verdicts, why in rows:
        print(f"| {name} | {' | '.join(verdicts)} | {why.replace('|', '/')} |")
    missed = [name for name, verdicts, _ in rows if "caught" not in verdicts]
    if missed:
        print(f"\nnot caught: {', '.join(missed)}")
        return 1
    print(f"\nall {len(rows)} mutations caught")
    return 0


if __name__ == "__main__":
    sys.exit(main())
