"""`python -m benchmarks.fit_run`: the end-to-end `fit` comparison alone
(`benchmarks.end_to_end`), with its steps and repetitions on the command
line, into a JSON file; for a run shorter than `benchmarks.run`'s.

    python -m benchmarks.fit_run --repeats 5 --steps 1:30 5:15 50:5 \\
        --out benchmarks/results/fit.json
"""

import argparse
import json
import os

from benchmarks import end_to_end, machine


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fit_run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", nargs="+", default=["1:30", "5:15", "50:5"],
                        help="K:steps per timed fit call")
    parser.add_argument("--backends", nargs="+",
                        default=list(end_to_end.BACKENDS))
    parser.add_argument("--out", default="benchmarks/results/fit.json")
    args = parser.parse_args(argv)
    steps = {int(k): int(n) for k, n in (s.split(":") for s in args.steps)}
    rows = end_to_end.run(steps, args.batch_size, args.repeats,
                          backends=args.backends)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": machine.describe(), "repeats": args.repeats,
                   "end_to_end": rows}, f, indent=1)


if __name__ == "__main__":
    main()
