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

RUNS = (("VAE k=1", "vae-k1"), ("VAE k=50", "vae-k50"), ("IWAE k=50", "iwae-k50"))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    root = argv[0] if argv else os.path.join("runs", "results")
    per_example, rows = {}, []
    for label, name in RUNS:
        with open(os.path.join(root, name, "metrics.json")) as f:
            evaluation = json.load(f)["evaluation"]
        each = np.load(os.path.join(root, name, "per_example.npz"))
        per_example[label] = each
        iwae = [_mean_se(evaluation["iwae"][str(k)]) for k in (1, 5, 50)]
        rows.append(
            f"| {label} | {_mean_se(evaluation['log_likelihood'])} | "
            f"{' | '.join(iwae)} | {_mean_se(evaluation['elbo'])} | "
            f"{_mean_se(evaluation['kl'])} | {evaluation['active_units']} of "
            f"{evaluation['latent_dim']} |"
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
    labels = [label for label, _ in RUNS]
    for a, b in ((2, 1), (1, 0), (2, 0)):
        diff = paired_difference(per_example[labels[a]]["log_likelihood"],
                                 per_example[labels[b]]["log_likelihood"])
        print(f"| {labels[a]} − {labels[b]} | {_mean_se(diff)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
