"""The RESULTS.md table from `make results`'s run directories.

    python -m benchmarks.results_table [runs/results]

Reads each run's metrics.json (the evaluation that `keras-vae evaluate`
merged into it, whose means and standard errors it prints as they are) and
per_example.npz, and prints a markdown table of the test bounds, the
log-likelihood and the active units, then the paired differences of
log-likelihood between models on the same test images
(`keras_vae.evaluation.paired_difference`), whose standard errors do not
carry the spread between images.
"""

import json
import os
import sys

import numpy as np

from keras_vae.evaluation import format_mean_stderr as _mean_se
from keras_vae.evaluation import paired_difference

# (label, run directory), as `make results` names them.
RUNS = (
    ("VAE k=1", "vae-k1"),
    ("VAE k=50", "vae-k50"),
    ("IWAE k=50", "iwae-k50"),
    ("IWAE k=50, DReG", "iwae-k50-dreg"),
    ("2-layer VAE k=1", "vae2-k1"),
    ("2-layer IWAE k=50", "iwae2-k50"),
)
# (a, b): the paired difference a − b of log p(x), by label. The paper's
# orderings: each should be positive (DReG's at least not negative).
COMPARISONS = (
    ("IWAE k=50", "VAE k=50"),
    ("VAE k=50", "VAE k=1"),
    ("IWAE k=50", "VAE k=1"),
    ("IWAE k=50, DReG", "IWAE k=50"),
    ("2-layer IWAE k=50", "IWAE k=50"),
    ("2-layer IWAE k=50", "2-layer VAE k=1"),
    ("2-layer VAE k=1", "VAE k=1"),
    # Not an ordering of the paper's: the two changes side by side.
    ("2-layer IWAE k=50", "IWAE k=50, DReG"),
)


def _active_units(evaluation):
    """"a of D" per stochastic layer, first to top."""
    layers = evaluation.get("layers", [evaluation])
    return " + ".join(
        f"{layer['active_units']} of {layer['latent_dim']}" for layer in layers
    )


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    root = argv[0] if argv else os.path.join("runs", "results")
    per_example, rows = {}, []
    for label, name in RUNS:
        path = os.path.join(root, name, "metrics.json")
        if not os.path.isfile(path):
            raise SystemExit(f"results_table: {path} is missing; run "
                             "`make results`")
        with open(path) as f:
            evaluation = json.load(f)["evaluation"]
        each = np.load(os.path.join(root, name, "per_example.npz"))
        per_example[label] = each
        iwae = [_mean_se(evaluation["iwae"][str(k)]) for k in (1, 5, 50)]
        rows.append(
            f"| {label} | {_mean_se(evaluation['log_likelihood'])} | "
            f"{' | '.join(iwae)} | {_mean_se(evaluation['elbo'])} | "
            f"{_mean_se(evaluation['kl'])} | {_active_units(evaluation)} |"
        )
    n = len(per_example[RUNS[0][0]]["log_likelihood"])
    print(f"Test set: {n} images; mean ± standard error over images, nats.\n")
    print("| model | log p(x), k=5000 | IWAE k=1 | IWAE k=5 | IWAE k=50 "
          "| ELBO | KL | active units |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\nPaired differences of log p(x) on the same test images:\n")
    print("| comparison | difference (nats) |")
    print("|---|---|")
    for a, b in COMPARISONS:
        diff = paired_difference(per_example[a]["log_likelihood"],
                                 per_example[b]["log_likelihood"])
        print(f"| {a} − {b} | {_mean_se(diff)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
