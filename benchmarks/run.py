"""`python -m benchmarks.run [--quick] [--out DIR]`: runs every benchmark.

Writes `results-<time>.json`, `latest.json`, `benchmarks.md` and
`speedup.png` to `--out`. A full run also pastes the markdown into
BENCHMARKS.md (between its generated-section markers) and copies the plot
next to this file, where BENCHMARKS.md shows it.
"""

import argparse
import datetime
import json
import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

from benchmarks import end_to_end  # noqa: E402
from benchmarks import latent  # noqa: E402
from benchmarks import log_likelihood  # noqa: E402
from benchmarks import machine  # noqa: E402
from benchmarks import memory  # noqa: E402
from benchmarks import report  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PARTS = ("latent", "memory", "end_to_end", "log_likelihood")

# Sizes and repetitions: --quick stays under two minutes on two cores.
CONFIGS = {
    "full": {
        "sizes": sorted(
            latent.TARGET_SIZES + latent.EXTRA_SIZES,
            key=lambda s: s[0] * s[1] * s[2],
        ),
        "repeats": 15,
        "min_sample_s": 0.02,
        "memory_sizes": latent.TARGET_SIZES[1:],
        "e2e_steps_per_k": {1: 60, 5: 30, 50: 10},
        "e2e_batch_size": 128,
        "e2e_repeats": 15,
        "ll_sizes": [100, 400, 1600],
    },
    "quick": {
        "sizes": latent.TARGET_SIZES,
        "repeats": 3,
        "min_sample_s": 0.005,
        "memory_sizes": latent.TARGET_SIZES[-1:],
        "e2e_steps_per_k": {1: 20, 5: 10, 50: 5},
        "e2e_batch_size": 128,
        "e2e_repeats": 3,
        "ll_sizes": [10, 40],
    },
}


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmarks of the fused reparameterize-and-KL op.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the four target sizes, few repetitions (under two minutes)",
    )
    parser.add_argument(
        "--out",
        default=os.path.join(HERE, "results"),
        help="directory for the JSON, markdown and PNG (default: "
        "benchmarks/results)",
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="which benchmarks to run (default: all)",
    )
    parser.add_argument(
        "--update-doc",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="paste the tables into BENCHMARKS.md and copy the plot to "
        "benchmarks/speedup.png (default: on for a full run of all parts)",
    )
    return parser.parse_args(argv)


def main(argv=None):
    """Runs the benchmarks; returns the exit status."""
    args = parse_args(argv)
    mode = "quick" if args.quick else "full"
    cfg = CONFIGS[mode]
    update_doc = args.update_doc
    if update_doc is None:
        update_doc = mode == "full" and set(args.parts) == set(PARTS)
    tf.get_logger().setLevel("ERROR")  # retracing notes: each size traces anew
    os.makedirs(args.out, exist_ok=True)

    def log(message):
        print(message, flush=True)

    start = time.perf_counter()
    command = "python -m benchmarks.run" + (" --quick" if args.quick else "")
    results = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"
        ),
        "config": {
            "mode": mode,
            "command": command,
            "parts": args.parts,
            **cfg,
        },
        "machine": machine.describe(),
    }
    if "latent" in args.parts:
        results["latent"] = latent.run(
            cfg["sizes"], cfg["repeats"], cfg["min_sample_s"], log=log
        )
    if "memory" in args.parts:
        results["memory"] = memory.run(cfg["memory_sizes"], log=log)
    if "end_to_end" in args.parts:
        results["end_to_end"] = end_to_end.run(
            cfg["e2e_steps_per_k"],
            cfg["e2e_batch_size"],
            cfg["e2e_repeats"],
            log=log,
        )
    if "log_likelihood" in args.parts:
        results["log_likelihood"] = log_likelihood.run(
            cfg["ll_sizes"], log=log
        )
    results["elapsed_s"] = time.perf_counter() - start

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for name in (f"results-{stamp}.json", "latest.json"):
        with open(os.path.join(args.out, name), "w") as f:
            json.dump(results, f, indent=1)
    section = report.markdown(results)
    with open(os.path.join(args.out, "benchmarks.md"), "w") as f:
        f.write(section)
    plot_path = os.path.join(args.out, "speedup.png")
    if results.get("latent"):
        report.plot(results, plot_path)
    if update_doc:
        report.update_document(os.path.join(REPO, "BENCHMARKS.md"), section)
        if results.get("latent"):
            shutil.copyfile(plot_path, os.path.join(HERE, "speedup.png"))
    log(section)
    log(f"Done in {results['elapsed_s']:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
