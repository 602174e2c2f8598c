import csv
import json
import sys
import types

import keras
import numpy as np
import pytest

from keras_vae import cli, data_files, datasets, evaluation

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
                     "3", "--tensorboard", "--plot-every", "1",
                     "--output", str(output)])
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
    result = evaluation.evaluate_arrays(model, x, iwae_ks=(2,), ll_samples=10,
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
    again = evaluation.evaluate_arrays(model, x, iwae_ks=(2,), ll_samples=10,
                                batch_size=7, verbose=0)
    other = evaluation.evaluate_arrays(model, x, iwae_ks=(2,), ll_samples=10,
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


def _one_line_error(capsys, code, message):
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("keras-vae ") and message in err.splitlines()[0]


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    _one_line_error(capsys, cli.main(["sample", str(tmp_path / "nothing")]),
                    "no such model file")
    _one_line_error(capsys, cli.main(["evaluate", str(tmp_path)]),
                    "holds no model.keras")


def test_user_errors_are_one_line_with_status_2(run_dir, tmp_path, capsys):
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes((run_dir / "model.keras").read_bytes()[:2000])
    _one_line_error(capsys, cli.main(["sample", str(truncated)]),
                    "truncated or corrupt")
    _one_line_error(capsys, cli.main(
        ["train", *TINY, "--objective", "elbo", "--gradient-estimator",
         "dreg", "-o", str(tmp_path / "dreg")]), 'needs objective="iwae"')
    # An 8x8 digits model on 28x28 images.
    x = np.random.default_rng(0).uniform(size=(30, 28, 28)).astype("float32")
    np.savez(tmp_path / "big.npz", x=x)
    _one_line_error(capsys, cli.main(
        ["evaluate", str(run_dir / "model.keras"), "--dataset", "npz",
         "--npz", str(tmp_path / "big.npz"), "--ll-samples", "2",
         "--verbose", "0", "-o", str(tmp_path / "e.json")]),
        "(28, 28, 1)")


def test_help_imports_no_framework():
    import subprocess

    code = ("import sys\n"
            "from keras_vae.cli import main\n"
            "for argv in (['--help'], ['train', '--help']):\n"
            "    try:\n"
            "        main(argv)\n"
            "    except SystemExit:\n"
            "        pass\n"
            "heavy = [m for m in ('tensorflow', 'keras', 'matplotlib')\n"
            "         if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    result = subprocess.run([sys.executable, "-c", code],
                            capture_output=True, text=True, check=True)
    assert "HEAVY []" in result.stdout
    assert "usage: keras-vae train" in result.stdout


def test_every_option_says_what_it_does_and_its_default():
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions
                      if isinstance(a, __import__("argparse")._SubParsersAction))
    for name, command in subparsers.choices.items():
        text = command.format_help()
        for action in command._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, (name, action.option_strings)
            # Flags and required options have no default to show.
            if action.nargs != 0 and not action.required:
                formatted = command._get_formatter()._get_help_string(action)
                assert "default" in formatted, (name, action.option_strings)
        assert "--seed" in text or name not in ("train", "sample", "evaluate")


def test_train_writes_grids_during_training_and_warns_of_nothing(run_dir):
    images = sorted(p.name for p in (run_dir / "images").iterdir())
    assert images == ["reconstructions-epoch1.png", "reconstructions-epoch2.png",
                      "samples-epoch1.png", "samples-epoch2.png"]
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(
        str(run_dir / "logs" / "images"), size_guidance={"tensors": 0})
    events.Reload()
    assert {"samples", "reconstructions"} <= set(events.Tags()["tensors"])
    assert [e.step for e in events.Tensors("samples")] == [1, 2]


def test_train_limit_and_class_names(tmp_path, monkeypatch, recwarn):
    from keras_vae import plotting

    seen = {}
    monkeypatch.setattr(plotting, "save_latent_scatter",
                        lambda *a, **k: seen.update(k))
    out = tmp_path / "limited"
    assert cli.main(["train", *TINY, "--limit", "50", "--epochs", "1",
                     "--latent-dim", "2", "--output", str(out)]) == 0
    with open(out / "history.csv") as f:
        assert len(list(csv.DictReader(f))) == 1
    assert not list(out.glob("*.npz"))
    assert seen["class_names"] == tuple(str(d) for d in range(10))
    assert not [w for w in recwarn if "shuffle" in str(w.message)]
    assert datasets.load("digits", limit=50).arrays["train"].shape[0] == 50
    assert data_files.CLASS_NAMES["fashion_mnist"][9] == "Ankle boot"


def test_sample_titles_its_grid_and_seeds(run_dir, tmp_path, capsys):
    from keras_vae import plotting

    titles = []
    original = plotting.save_grid

    def recording(path, images, columns, title=None, **kwargs):
        titles.append(title)
        return original(path, images, columns, title=title, **kwargs)

    npys = [tmp_path / f"{i}.npy" for i in range(3)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plotting, "save_grid", recording)
        for npy, seed in zip(npys, (["--seed", "5"], ["--seed", "5"], [])):
            assert cli.main(["sample", str(run_dir), "-n", "4", *seed,
                             "-o", str(tmp_path / "s.png"),
                             "--npy", str(npy)]) == 0
    assert titles[0] == "4 samples from the prior (means of p(x|z)), seed 5"
    np.testing.assert_array_equal(np.load(npys[0]), np.load(npys[1]))
    # No --seed: not the images of samples.png (seed 0) nor of seed 5.
    assert not np.array_equal(np.load(npys[2]), np.load(npys[0]))
    assert "seed" in titles[2] and "seed 0)" not in titles[2]


def test_traverse_and_interpolate_write_grids(run_dir, tmp_path):
    import keras_vae

    out = tmp_path / "t.png"
    assert cli.main(["traverse", str(run_dir), "--dims", "2", "--steps",
                     "5", "-o", str(out)]) == 0
    assert read_png(out).ndim == 3
    out = tmp_path / "i.png"
    assert cli.main(["interpolate", str(run_dir), "--pair", "3", "4",
                     "--steps", "6", "-o", str(out)]) == 0
    assert read_png(out).ndim == 3
    model = keras_vae.load_model(run_dir / "model.keras")
    x = datasets.load("digits").arrays["test"]
    images, dims = keras_vae.plotting.latent_traversal(
        model, x, num_dims=2, steps=5, span=2.0, center=3)
    assert images.shape == (2, 5, 8, 8, 1)
    means = np.asarray(model.encode(x)[0])
    np.testing.assert_array_equal(dims, np.argsort(-means.var(axis=0))[:2])
    # Row 0, column 3: the centre's code with dims[0] set to +1.
    code = means[3:4].copy()
    code[0, dims[0]] = 1.0
    want = keras.ops.convert_to_numpy(
        model.likelihood.mean(model.decode(code)))[0]
    np.testing.assert_allclose(images[0, 3], want, atol=1e-5)
    line = keras_vae.plotting.latent_interpolation(model, x[3], x[4], 6)
    assert line.shape == (6, 8, 8, 1)
    ends = keras.ops.convert_to_numpy(
        model.likelihood.mean(model.decode(means[3:5])))
    np.testing.assert_allclose(line[[0, -1]], ends, atol=1e-5)


def test_missing_data_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(data_files, "SYSTEM_DATA_DIRS",
                        {"fashion_mnist": str(tmp_path / "system"),
                         "mnist": str(tmp_path / "system")})
    code = cli.main(["train", "--dataset", "fashion_mnist", "--data-dir",
                     str(tmp_path / "mine"), "--no-download",
                     "--output", str(tmp_path / "run")])
    assert code == 2
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
    # Outside a checkout: said, with status 2.
    monkeypatch.delitem(sys.modules, "benchmarks.run")
    monkeypatch.setattr(cli, "find_harness", lambda: None)
    assert cli.main(["bench"]) == 2
    assert "source checkout" in capsys.readouterr().err


def test_bench_finds_the_checkout_from_anywhere_inside_it(tmp_path):
    import pathlib

    root = pathlib.Path(cli.__file__).resolve().parents[1]
    assert cli.find_harness(root / "keras_vae") == str(root)
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "run.py").write_text("")
    assert cli.find_harness(tmp_path / "benchmarks") == str(tmp_path)
