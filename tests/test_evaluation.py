"""The evaluation protocol's summaries, and the results table built on them."""

import json

import numpy as np
import pytest

from benchmarks import results_table
from keras_vae import evaluation

pytestmark = pytest.mark.backend_independent


def test_mean_stderr_and_paired_difference():
    values = np.array([1.0, 2.0, 4.0, 7.0])
    summary = evaluation.mean_stderr(values)
    assert summary["mean"] == pytest.approx(3.5)
    # sample standard deviation / sqrt(n), by hand: var = 7 (ddof=1)
    assert summary["stderr"] == pytest.approx(np.sqrt(7.0 / 4.0))
    assert np.isnan(evaluation.mean_stderr([1.0])["stderr"])
    diff = evaluation.paired_difference(values + 0.5, values)
    assert diff == {"mean": pytest.approx(0.5), "stderr": pytest.approx(0.0)}
    assert evaluation.format_mean_stderr(summary) == "3.50 ± 1.32"


def test_results_table_prints_the_evaluations_own_summaries(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i, (_, name) in enumerate(results_table.RUNS):
        run = tmp_path / name
        run.mkdir()
        each = {k: rng.normal(size=5) for k in
                ("log_likelihood", "elbo", "kl", "iwae_1", "iwae_5",
                 "iwae_50")}
        np.savez(run / "per_example.npz", **each)
        # Summaries that the arrays would not give: the table must print
        # these, not re-derive them.
        fake = {"mean": 100.0 + i, "stderr": 0.25}
        content = {
            "log_likelihood": fake, "elbo": fake, "kl": fake,
            "iwae": {k: fake for k in ("1", "5", "50")},
            "active_units": 3, "latent_dim": 5}
        if name.startswith(("vae2", "iwae2")):
            content["layers"] = [{"active_units": 3, "latent_dim": 5},
                                 {"active_units": 1, "latent_dim": 2}]
        (run / "metrics.json").write_text(json.dumps({"evaluation": content}))
    assert results_table.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| VAE k=1 | 100.00 ± 0.25 |" in out
    assert "| IWAE k=50 | 102.00 ± 0.25 |" in out
    assert "| 3 of 5 |" in out and "| 3 of 5 + 1 of 2 |" in out
    # The paired differences are computed from the per-example arrays.
    two_layer = np.load(tmp_path / "iwae2-k50" / "per_example.npz")
    one_layer = np.load(tmp_path / "iwae-k50" / "per_example.npz")
    diff = evaluation.paired_difference(two_layer["log_likelihood"],
                                        one_layer["log_likelihood"])
    assert (f"| 2-layer IWAE k=50 − IWAE k=50 | "
            f"{evaluation.format_mean_stderr(diff)} |") in out


def test_results_table_names_a_missing_run(tmp_path):
    with pytest.raises(SystemExit, match="vae-k1"):
        results_table.main([str(tmp_path)])
