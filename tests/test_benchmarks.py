"""The benchmark harness: its bookkeeping, and that it compares like with like.

No timing assertions: a fake clock drives the timing logic.
"""

import struct

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.ops import convert_to_numpy as to_numpy

import keras_vae
from benchmarks import end_to_end, fit_models, latent, memory, report, timing


class FakeClock:
    """`time.perf_counter` that only moves when a candidate runs."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", fake)
    return fake


@pytest.mark.backend_independent
def test_calls_per_sample_reaches_the_minimum(clock):
    def one_ms():
        clock.now += 1e-3

    calls = timing.calls_per_sample(one_ms, min_sample_s=0.05)
    assert calls >= 50
    assert timing.calls_per_sample(one_ms, min_sample_s=0.0) == 1
    assert timing.calls_per_sample(lambda: None, 1.0, max_calls=64) == 64


@pytest.mark.backend_independent
def test_interleaved_medians_rotates_and_reports_per_call(clock):
    order = []

    def candidate(name, durations):
        durations = iter(durations)

        def run():
            order.append(name)
            clock.now += next(durations)

        return run

    # Warm-up (one call) and calibration (one call) first, then 3 samples.
    cands = {
        "a": candidate("a", [9.0, 1.0, 3.0, 1.0, 2.0]),
        "b": candidate("b", [9.0, 5.0, 4.0, 6.0, 8.0]),
        "c": candidate("c", [9.0, 1.0, 7.0, 7.0, 7.0]),
    }
    result = timing.interleaved_medians(
        cands, repeats=3, min_sample_s=0.5, warmup=2
    )
    assert order[:6] == ["a", "a", "b", "b", "c", "c"]
    assert order[6:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert result["a"]["samples_s"] == [3.0, 1.0, 2.0]
    assert result["a"]["median_s"] == 2.0
    assert result["b"]["median_s"] == 6.0
    assert result["c"]["min_s"] == 7.0
    assert all(r["calls_per_sample"] == 1 for r in result.values())


@pytest.mark.backend_independent
def test_interleaved_medians_shuffled_varies_the_predecessors(
    clock, monkeypatch
):
    """With a shuffle seed every repetition runs each candidate once, in an
    order the seed fixes, and no candidate always follows the same one; the
    pause before each sample is not timed."""
    def pause(seconds):
        clock.now += seconds

    monkeypatch.setattr(timing.time, "sleep", pause)

    def orders(seed):
        order = []

        def candidate(name):
            def run():
                order.append(name)
                clock.now += 1.0

            return run

        names = "abcd"
        result = timing.interleaved_medians(
            {n: candidate(n) for n in names}, repeats=12, min_sample_s=0.5,
            shuffle_seed=seed, settle_s=5.0,
        )
        assert all(r["samples_s"] == [1.0] * 12 for r in result.values())
        timed = order[2 * len(names):]
        return [timed[i:i + 4] for i in range(0, len(timed), 4)]

    reps = orders(seed=3)
    assert all(sorted(rep) == list("abcd") for rep in reps)
    assert orders(seed=3) == reps
    assert orders(seed=4) != reps
    for name in "abcd":
        before = {rep[rep.index(name) - 1] for rep in reps
                  if rep.index(name) > 0}
        assert len(before) > 1, (name, reps)


@pytest.mark.backend_independent
def test_paired_ratio_cancels_load_shared_by_a_repetition():
    # Repetitions 2 and 3 ran under load that slowed both candidates 3x: the
    # ratio of medians would pair a loaded sample with a quiet one.
    slow = {"samples_s": [2.0, 6.0, 6.0, 2.0, 2.0]}
    fast = {"samples_s": [1.0, 3.0, 3.0, 1.0, 1.0]}
    assert timing.paired_ratio(slow, fast) == 2.0
    slow["samples_s"] = [2.0, 6.0, 6.0, 6.0, 2.0]
    fast["samples_s"] = [1.0, 1.5, 3.0, 3.0, 1.0]
    assert timing.paired_ratio(slow, fast) == 2.0


@pytest.mark.backend_independent
def test_summary_names_the_best_modes():
    def entry(*samples):
        return {"median_s": sorted(samples)[1], "samples_s": list(samples)}

    timings = {
        "fused/eager": entry(3.0, 3.0, 3.0),
        "fused/function": entry(1.0, 2.0, 1.0),
        "fused/xla": entry(2.0, 2.0, 2.0),
        "tf/eager": entry(9.0, 9.0, 9.0),
        "tf/function": entry(4.0, 8.0, 4.0),
        "tf/xla": entry(3.0, 6.0, 3.0),
        "tfp/eager": entry(9.0, 9.0, 9.0),
        "tfp/function": entry(5.0, 10.0, 5.0),
    }
    summary = latent.summarize(timings)
    assert summary["fused"] == {"mode": "function", "median_s": 1.0}
    assert summary["tf"]["mode"] == "xla"
    assert summary["tf"]["speedup_of_fused"] == 3.0
    assert summary["speedup_vs_tf_function"] == 4.0
    assert summary["tfp"]["speedup_of_fused"] == 5.0
    assert "rng" not in summary


def _inputs(batch=16, dim=5):
    mean, log_var, seed, _ = latent.make_inputs(batch, dim, 3)
    return mean, log_var, seed


@pytest.mark.tensorflow_only(
    "the latent benchmark times the TF op against TensorFlow and TFP code"
)
def test_tf_competitor_computes_what_the_op_computes():
    mean, log_var, seed = _inputs()
    fused = keras_vae.ops.reparameterize_kl(
        mean, log_var, 3, seed, implementation="fused"
    )
    written_in_tf = latent.tf_reparameterize_kl(mean, log_var, 3, seed)
    for got, want in zip(written_in_tf, fused):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.tensorflow_only(
    "the latent benchmark times the TF op against TensorFlow and TFP code"
)
def test_tfp_competitor_computes_the_same_quantities():
    mean, log_var, seed = _inputs()
    z, kl, log_ratio = latent.tfp_reparameterize_kl(mean, log_var, 3, seed)
    _, fused_kl, _ = keras_vae.ops.reparameterize_kl(mean, log_var, 3, seed)
    assert z.shape == (3, 16, 5) and log_ratio.shape == (3, 16)
    np.testing.assert_allclose(kl, fused_kl, rtol=1e-5)
    eps = (z - mean) * tf.exp(-0.5 * log_var)
    want = 0.5 * tf.reduce_sum(tf.square(z) - tf.square(eps) - log_var, -1)
    np.testing.assert_allclose(log_ratio, want, rtol=1e-4, atol=1e-4)


@pytest.mark.tensorflow_only(
    "the latent benchmark times the TF op against TensorFlow and TFP code"
)
def test_candidates_cover_every_mode_and_run():
    forward = latent.candidates(8, 4, 2, "forward")
    assert set(forward) == {
        "fused/eager",
        "fused/function",
        "fused/xla",
        "tf/eager",
        "tf/function",
        "tf/xla",
        "tfp/eager",
        "tfp/function",
        "floor/function",
        "floor/xla",
        "rng/eager",
        "rng/function",
        "rng/xla",
    }
    z, kl, log_ratio = forward["fused/function"]()
    assert z.shape == (2, 8, 4)
    # In XLA the candidate runs the same kernels: the same numbers.
    for got, want in zip(forward["fused/xla"](), (z, kl, log_ratio)):
        np.testing.assert_array_equal(got, want)
    backward = latent.candidates(8, 4, 2, "forward+backward")
    assert not any(name.startswith("rng/") for name in backward)
    grad_mean, grad_log_var = backward["tf/xla"]()
    assert grad_mean.shape == grad_log_var.shape == (8, 4)


@pytest.mark.tensorflow_only(
    "the memory benchmark reads TensorFlow's allocator statistics"
)
def test_fused_step_keeps_only_z_for_the_backward_pass():
    (row,) = memory.run([(256, 128, 8)], log=lambda _: None)
    kbd = row["kbd_bytes"]
    fused, unfused = row["candidates"]["fused"], row["candidates"]["tf"]
    assert 0.9 <= fused["latent_kept_bytes"] / kbd < 2.0
    assert unfused["latent_kept_bytes"] / kbd > 3.0


def _results():
    timings = {
        name: {"median_s": 1e-3}
        for name in [n for n, _ in report.LATENT_COLUMNS]
        + ["floor/function", "floor/xla"]
    }
    rows = []
    for size, ratio in (((128, 32, 1), 0.5), ((4096, 256, 16), 4.0)):
        for pass_name in latent.PASSES:
            summary = {
                "fused": {"mode": "function", "median_s": 1e-3},
                "tf": {"mode": "xla", "median_s": ratio * 1e-3,
                       "speedup_of_fused": ratio},
                "tfp": {"mode": "function", "median_s": 2e-3,
                        "speedup_of_fused": 2.0},
                "rng": {"mode": "function", "median_s": 5e-3,
                        "speedup_of_fused": 5.0},
                "speedup_vs_tf_function": ratio,
            }
            rows.append({"B": size[0], "D": size[1], "K": size[2],
                         "pass": pass_name, "timings": timings,
                         "summary": summary})
    return {
        "timestamp": "now",
        "config": {"command": "x", "repeats": 3, "min_sample_s": 0.01},
        "machine": {
            "cpu": "cpu", "usable_cores": 2, "logical_cores": 2,
            "cpu_flags": [], "platform": "p", "python": "3",
            "versions": {"tensorflow": "2"}, "keras_vae": "0",
            "build_info": {}, "git_commit": "abc",
        },
        "latent": rows,
        "memory": [
            {"B": 4096, "D": 256, "K": 16, "kbd_bytes": 2**26,
             "candidates": {
                 name: {"eager_kept_bytes": kept, "latent_kept_bytes": kept,
                        "eager_peak_bytes": 3 * kept,
                        "function_peak_bytes": 2 * kept}
                 for name, kept in (("fused", 2**26), ("tf", 8 * 2**26))
             }},
        ],
        "log_likelihood": [
            {"N": 100, "seconds": 50.0, "peak_rss_bytes": 1200 * 2**20,
             "rss_before_bytes": 900 * 2**20, "batch_size": 37,
             "num_samples": 5000},
        ],
        "end_to_end": [
            {"K": k, "batch_size": 8, "steps": 2,
             "summary": {"ratio_any": max(tf_ratio, jax_ratio),
                         "ratio_tf": tf_ratio,
                         "ratio_jax": jax_ratio},
             "candidates": {
                 "keras_vae.VAE (tensorflow)": {
                     "examples_per_s": 9.0, "train_step_peak_bytes": 2**20},
                 "plain Keras (jax)": {
                     "examples_per_s": 8.0, "train_step_peak_bytes": None},
             }}
            for k, tf_ratio, jax_ratio in ((1, 1.3, 0.9), (50, 1.1, 1.5))
        ],
    }


@pytest.mark.backend_independent
def test_targets_say_which_are_met():
    met = {name: ok for name, _, _, ok in report.targets(_results())}
    assert met["forward+backward 128×32×1 vs fastest TF mode"] is False
    assert met["forward+backward 4096×256×16 vs fastest TF mode"] is True
    assert met["forward 4096×256×16 vs stateless_normal alone"] is True
    assert met[
        "backward keeps nothing of size K×B×D besides z, 4096×256×16"
    ] is True
    tf_pair = "keras_vae.VAE vs plain Keras, both on TensorFlow"
    jax_pair = "keras_vae.VAE vs plain Keras, both on JAX"
    fastest = "fastest keras_vae.VAE vs fastest plain Keras, any backend"
    assert met[f"{tf_pair}, K=1"] is True
    assert met[f"{jax_pair}, K=1"] is False
    assert met[f"{tf_pair}, K=50"] is False
    assert met[f"{jax_pair}, K=50"] is True
    # The any-backend target names K=5 and K=50 only.
    assert f"{fastest}, K=1" not in met and met[f"{fastest}, K=50"] is True


@pytest.mark.backend_independent
def test_update_document_replaces_only_its_section(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nIntro.\n\n## GPU (CUDA)\n\nGPU table.\n")
    report.update_document(path, "first\n")
    report.update_document(path, report.markdown(_results()))
    text = path.read_text()
    assert text.count(report.BEGIN) == 1 and "first" not in text
    assert "Intro." in text and "## GPU (CUDA)\n\nGPU table." in text
    assert "| 128×32×1 | 4,096 |" in text and "**0.50×**" in text
    assert "| 64.0 MiB (1.00) | 512.0 MiB (8.00) |" in text
    assert "| 896.0 MiB |" in text  # tf.function peaks 1024 - 128 MiB
    assert "| 100 | 50 s | 500 ms | 1,200 MiB | 900 MiB | 37 |" in text
    # The generated block opens no "## " section, which would cut another.
    block = text[text.index(report.BEGIN):text.index(report.END)]
    assert "\n## " not in block


@pytest.mark.backend_independent
def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "speedup.png"
    report.plot(_results(), path)
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and width > 100
    assert height > 100


def test_plain_keras_vae_loss_is_the_negative_elbo():
    """The competitor trains on what keras_vae.VAE trains on: recomputed
    with TFP from the same noise (a seed generator in the same state)."""
    import tensorflow_probability as tfp

    tfd = tfp.distributions
    model = fit_models.PlainKerasVAE(num_samples=3)
    x = fit_models.images(4, 1)
    mean, log_var = model(x)
    loss = to_numpy(model.compute_loss(x, y_pred=(mean, log_var)))
    eps = keras.random.normal(
        (3, 4, fit_models.LATENT_DIM), seed=keras.random.SeedGenerator(1337)
    )
    mean, log_var, eps = (to_numpy(t) for t in (mean, log_var, eps))
    z = mean + np.exp(0.5 * log_var) * eps
    logits = to_numpy(
        model.decoder(z.reshape(-1, fit_models.LATENT_DIM))
    ).reshape(3, 4, -1)
    log_px = tf.reduce_sum(
        tfd.Bernoulli(logits=logits).log_prob(np.reshape(x, (1, 4, -1))), -1
    )
    kl = tf.reduce_sum(
        tfd.kl_divergence(tfd.Normal(mean, np.exp(0.5 * log_var)),
                          tfd.Normal(0.0, 1.0)), -1
    )
    elbo = tf.reduce_mean(log_px) - tf.reduce_mean(kl)
    np.testing.assert_allclose(loss, -elbo.numpy(), rtol=1e-5)


# Its workers choose their own backends, one process each.
@pytest.mark.backend_independent
def test_end_to_end_times_every_backend_in_one_run():
    rows = end_to_end.run({2: 2}, batch_size=16, repeats=2,
                          log=lambda _: None)
    (row,) = rows
    names = set(row["candidates"])
    assert "keras_vae.VAE, XLA (tensorflow)" in names
    assert "plain Keras (jax)" in names
    for name, cand in row["candidates"].items():
        assert cand["examples_per_s"] > 0 and len(cand["samples_s"]) == 2
        on_tf = name.endswith("(tensorflow)")
        assert (cand["train_step_peak_bytes"] is not None) == on_tf
    assert row["candidates"]["keras_vae.VAE, XLA (tensorflow)"]["jit_compile"]
    summary = row["summary"]
    assert summary["pair_jax"] == ["keras_vae.VAE (jax)", "plain Keras (jax)"]
    assert summary["pair_tf_vs_plain_jax"][1] == "plain Keras (jax)"
    assert summary["ratio_tf"] > 0


# The fresh process runs on TensorFlow whatever the caller's backend.
@pytest.mark.backend_independent
def test_log_likelihood_row_is_measured_in_a_fresh_process():
    from benchmarks import log_likelihood

    (row,) = log_likelihood.run([3], num_samples=20, log=lambda _: None)
    assert row["N"] == 3 and row["num_samples"] == 20 and row["seconds"] > 0
    assert row["peak_rss_bytes"] >= row["rss_before_bytes"] > 0
    assert row["batch_size"] >= 1


@pytest.mark.backend_independent
def test_end_to_end_summary_pairs_what_each_target_names():
    def entry(*samples):
        return {"median_s": sorted(samples)[len(samples) // 2],
                "samples_s": list(samples)}

    timings = {
        "keras_vae.VAE (tensorflow)": entry(4.0, 4.0, 4.0),
        "keras_vae.VAE, XLA (tensorflow)": entry(2.0, 2.0, 2.0),
        "keras_vae.VAE, reference op (tensorflow)": entry(1.0, 1.0, 1.0),
        "keras_vae.VAE, no NaN check (tensorflow)": entry(2.0, 2.0, 2.0),
        "plain Keras (tensorflow)": entry(3.0, 3.0, 3.0),
        "keras_vae.VAE (jax)": entry(1.5, 1.5, 1.5),
        "plain Keras (jax)": entry(1.2, 1.2, 1.2),
    }
    summary = end_to_end.summarize(timings)
    # The controls never count as keras-vae's fastest configuration.
    assert summary["pair_tf"] == ["keras_vae.VAE, XLA (tensorflow)",
                                  "plain Keras (tensorflow)"]
    assert summary["ratio_tf"] == 1.5
    assert summary["ratio_jax"] == pytest.approx(0.8)
    assert summary["ratio_tf_vs_plain_jax"] == pytest.approx(0.6)
    assert summary["pair_any"] == ["keras_vae.VAE (jax)", "plain Keras (jax)"]
    assert "ratio_torch" not in summary
    assert summary["nonfinite_check_cost"] == 1.0
