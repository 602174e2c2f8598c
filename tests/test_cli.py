import csv
import json
import sys
import types

import numpy as np
import pytest

from keras_vae import cli, datasets

TINY = ["--dataset", "digits", "--batch-size", "256", "--verbose", "0"]


def read_png(path):
    import matplotlib.image

    return matplotlib.image.imread(path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One tiny training run (2-D latent, IWAE k=3) shared by the tests."""
    output = tmp_path_factory.mktemp("run") / "tiny"
    code = cli.main(["train", *TINY, "--epochs", "2", "--latent-dim", "2",
                     "--objective", "iwae", "-k", "3", "--warmup-epochs",
                     "1", "--lr-schedule", "cosine", "--reconstructions",
                     "3", "--tensorboard", "--output", str(output)])
    assert code == 0
    return output


def test_train_writes_the_run_directory(run_dir):
    for name in ("model.keras", "history.csv", "metrics.json", "samples.png",
                 "reconstructions.png", "latent.png"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "logs").iterdir())
    with open(run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert "val_loss" in rows[0] and "kl" in rows[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["config"]["latent_dim"] == 2
    assert metrics["config"]["num_samples"] == 3
    assert metrics["config"]["dataset"] == "digits"
    assert metrics["final_epoch"]["loss"] == pytest.approx(
        float(rows[-1]["loss"]), rel=1e-5)
    # 8 inputs x (1 + 3 reconstructions) cells: wider than tall, 4 columns.
    recon = read_png(run_dir / "reconstructions.png")
    assert recon.ndim == 3 and recon.shape[0] > recon.shape[1]
    assert read_png(run_dir / "samples.png").ndim == 3


def test_train_model_loads_with_its_objective(run_dir):
    import keras

    model = keras.saving.load_model(run_dir / "model.keras")
    assert model.num_samples == 3
    mean, log_var = model.encode(np.zeros((4, 8, 8, 1), np.float32))
    assert tuple(mean.shape) == (4, 2) and tuple(log_var.shape) == (4, 2)


def test_evaluate_merges_into_metrics_json(run_dir, capsys):
    code = cli.main(["evaluate", str(run_dir), "--limit", "60",
                     "--ll-samples", "40", "--iwae-k", "1", "8",
                     "--elbo-samples", "4", "--batch-size", "32",
                     "--verbose", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "log_likelihood" in printed and "active units" in printed
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "config" in metrics  # the training part is kept
    result = metrics["evaluation"]
    assert result["split"] == "test" and result["num_examples"] == 60
    assert result["dataset"] == "digits"
    assert set(result["iwae"]) == {"1", "8"}
    assert result["log_likelihood"]["num_samples"] == 40
    # The bounds tighten with K (by far more than their noise here).
    assert result["log_likelihood"]["mean"] > result["iwae"]["1"]["mean"]
    assert result["log_likelihood"]["mean"] > result["elbo"]["mean"]
    for name in ("elbo", "log_likelihood", "kl"):
        assert result[name]["stderr"] > 0
    assert result["kl"]["mean"] > 0
    variances = np.array(result["posterior_mean_variance"])
    assert result["latent_dim"] == 2 == len(variances)
    assert result["active_units"] == int(np.sum(variances > 0.01))


def test_evaluate_arrays_against_the_model_methods(run_dir):
    import keras

    from keras_vae import bounds

    model = keras.saving.load_model(run_dir / "model.keras")
    x = datasets.load("digits").arrays["test"][:30]
    result = cli.evaluate_arrays(model, x, iwae_ks=(2,), ll_samples=10,
                                 batch_size=7, verbose=0)
    mean, log_var = model.encode(x)
    kl = np.sum(np.asarray(bounds.kl_per_dimension(mean, log_var)), axis=-1)
    assert result["kl"]["mean"] == pytest.approx(kl.mean(), rel=1e-5)
    assert result["kl"]["stderr"] == pytest.approx(
        kl.std(ddof=1) / np.sqrt(30), rel=1e-4)
    means = np.asarray(mean)
    np.testing.assert_allclose(result["posterior_mean_variance"],
                               means.var(axis=0), rtol=1e-5)
    # The seed fixes the Monte Carlo estimates, and only the seed does.
    again = cli.evaluate_arrays(model, x, iwae_ks=(2,), ll_samples=10,
                                batch_size=7, verbose=0)
    other = cli.evaluate_arrays(model, x, iwae_ks=(2,), ll_samples=10,
                                batch_size=7, seed=1, verbose=0)
    for name in ("elbo", "iwae_2", "log_likelihood"):
        np.testing.assert_array_equal(result["per_example"][name],
                                      again["per_example"][name])
        assert not np.array_equal(result["per_example"][name],
                                  other["per_example"][name])


def test_evaluate_output_file_and_split(run_dir, tmp_path):
    out, npz = tmp_path / "eval.json", tmp_path / "each.npz"
    assert cli.main(["evaluate", str(run_dir / "model.keras"), "--dataset",
                     "digits", "--split", "validation", "--limit", "10",
                     "--ll-samples", "5", "--iwae-k", "2", "--verbose", "0",
                     "--output", str(out), "--per-example", str(npz)]) == 0
    result = json.loads(out.read_text())
    assert result["split"] == "validation" and result["num_examples"] == 10
    each = np.load(npz)
    assert set(each.files) == {"elbo", "log_likelihood", "kl", "iwae_2"}
    for name in ("elbo", "log_likelihood", "kl"):
        assert each[name].shape == (10,)
        assert each[name].mean() == pytest.approx(result[name]["mean"])


def test_sample_writes_images(run_dir, tmp_path):
    png, npy = tmp_path / "s.png", tmp_path / "s.npy"
    assert cli.main(["sample", str(run_dir), "-n", "10", "--seed", "3",
                     "--output", str(png), "--npy", str(npy)]) == 0
    images = np.load(npy)
    assert images.shape == (10, 8, 8, 1)
    assert images.min() >= 0 and images.max() <= 1
    assert len(np.unique(images)) > 2  # means of p(x|z), not draws
    assert read_png(png).ndim == 3
    assert cli.main(["sample", str(run_dir), "-n", "5", "--draw",
                     "--output", str(png), "--npy", str(npy)]) == 0
    assert set(np.unique(np.load(npy))) <= {0.0, 1.0}


def test_module_entry_point_help():
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "keras_vae", "--help"],
        capture_output=True, text=True, check=True)
    for command in ("train", "evaluate", "sample", "bench"):
        assert command in result.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "-o", "x", "-k", "0"], "must be a positive integer: 0"),
        (["train", "-o", "x", "--dataset", "cifar"], "invalid choice"),
        (["train", "-o", "x", "--objective", "vi"], "invalid choice"),
        (["train", "-o", "x", "--beta", "-1"], "must be >= 0"),
        (["train", "-o", "x", "--validation-fraction", "1"], "[0, 1)"),
        (["train", "-o", "x", "--dataset", "npz"], "needs --npz FILE"),
        (["train"], "required: -o/--output"),
        (["evaluate", "run", "--iwae-k", "0"], "must be a positive integer"),
    ],
)
def test_bad_arguments_are_rejected_clearly(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no such model file"):
        cli.main(["sample", str(tmp_path / "nothing")])
    with pytest.raises(SystemExit, match="holds no model.keras"):
        cli.main(["evaluate", str(tmp_path)])


def test_missing_data_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(datasets, "SYSTEM_DATA_DIRS",
                        {"fashion_mnist": str(tmp_path / "system"),
                         "mnist": str(tmp_path / "system")})
    code = cli.main(["train", "--dataset", "fashion_mnist", "--data-dir",
                     str(tmp_path / "mine"), "--no-download",
                     "--output", str(tmp_path / "run")])
    assert code == 1
    err = capsys.readouterr().err
    for directory in datasets.search_dirs("fashion_mnist",
                                          tmp_path / "mine"):
        assert directory in err
    assert "Traceback" not in err


def test_bench_runs_the_harness_or_explains(monkeypatch, capsys):
    calls = []
    harness = types.ModuleType("benchmarks.run")
    harness.main = lambda argv=None: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "benchmarks.run", harness)
    assert cli.main(["bench", "--quick"]) == 0
    assert calls == [["--quick"]]
    monkeypatch.setitem(sys.modules, "benchmarks.run", None)
    assert cli.main(["bench"]) == 2
    assert "source checkout" in capsys.readouterr().err
