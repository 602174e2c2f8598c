"""The latent step alone: the fused op against TensorFlow and TFP.

Every candidate computes the same three outputs for inputs `[B, D]` and K
samples: `z [K, B, D]`, `kl [B]` and `log_ratio [K, B]`. "Forward" times
that; "forward+backward" adds the gradient of
`sum(z * w) + sum(kl) + sum(log_ratio)` with respect to `mean` and `log_var`
under a `tf.GradientTape`. Each computation runs in the modes it supports:
eager, `tf.function` and `tf.function(jit_compile=True)` ("xla"); inside
XLA the fused op is a custom call to the same kernels.
"""

import tensorflow as tf

import keras_vae
from benchmarks.timing import interleaved_medians, paired_ratio

# The four sizes the targets name, as (B, D, K).
TARGET_SIZES = ((128, 32, 1), (128, 32, 50), (1024, 64, 8), (4096, 256, 16))
# Extra points that fill in the speed-up-against-K*B*D curve; 128x50x50 is
# the latent step of the end-to-end model at K=50.
EXTRA_SIZES = (
    (128, 32, 8),
    (1024, 64, 1),
    (1024, 64, 50),
    (4096, 256, 1),
    (128, 50, 50),
)
PASSES = ("forward", "forward+backward")
MODES = ("eager", "function", "xla")
SEED = (1, 2)


def tf_reparameterize_kl(mean, log_var, num_samples, seed):
    """The op's computation as a TensorFlow user writes it.

    `alg="philox"` pins the generator: under XLA the default picks ThreeFry,
    which on CPU is tens of times slower, and that would flatter the op.
    """
    eps = tf.random.stateless_normal(
        [num_samples, *mean.shape], seed=seed, alg="philox"
    )
    z = mean + tf.exp(0.5 * log_var) * eps
    kl = 0.5 * tf.reduce_sum(
        tf.exp(log_var) + tf.square(mean) - 1.0 - log_var, axis=-1
    )
    log_ratio = 0.5 * tf.reduce_sum(
        tf.square(z) - tf.square(eps) - log_var, axis=-1
    )
    return z, kl, log_ratio


def tfp_reparameterize_kl(mean, log_var, num_samples, seed):
    """The same with TensorFlow Probability distributions."""
    import tensorflow_probability as tfp

    tfd = tfp.distributions
    posterior = tfd.Normal(loc=mean, scale=tf.exp(0.5 * log_var))
    prior = tfd.Normal(loc=0.0, scale=1.0)
    z = posterior.sample(num_samples, seed=seed)
    kl = tf.reduce_sum(tfd.kl_divergence(posterior, prior), axis=-1)
    log_ratio = tf.reduce_sum(
        posterior.log_prob(z) - prior.log_prob(z), axis=-1
    )
    return z, kl, log_ratio


def fused_reparameterize_kl(mean, log_var, num_samples, seed):
    return keras_vae.ops.reparameterize_kl(
        mean, log_var, num_samples, seed, implementation="fused"
    )


def floor_reparameterize_kl(mean, log_var, num_samples, seed):
    """Outputs of the right ranks from next to no work: the cost of the call.

    Timed like the others, it shows what a step costs with the latent
    computation taken out: dispatch, the loss and the tape's bookkeeping.
    """
    del num_samples, seed
    z = mean[None]
    return z, tf.reduce_sum(log_var, axis=-1), tf.reduce_sum(z, axis=-1)


# Computation name -> (function, the modes it runs in). TFP's samplers take
# no `alg`, so under XLA they get ThreeFry, which at 4096x256x16 takes
# seconds a call: TFP runs eager and in `tf.function` only.
COMPUTATIONS = {
    "fused": (fused_reparameterize_kl, MODES),
    "tf": (tf_reparameterize_kl, MODES),
    "tfp": (tfp_reparameterize_kl, ("eager", "function")),
    "floor": (floor_reparameterize_kl, ("function", "xla")),
}


def in_mode(fn, mode):
    if mode == "eager":
        return fn
    return tf.function(fn, jit_compile=(mode == "xla"), autograph=False)


def _forward(compute, mean, log_var, num_samples, seed):
    def forward():
        return compute(mean, log_var, num_samples, seed)

    return forward


def step_loss(z, kl, log_ratio, weight):
    """A scalar that every output feeds; `weight` [B, D] mixes z."""
    return (
        tf.reduce_sum(z * weight) + tf.reduce_sum(kl) + tf.reduce_sum(log_ratio)
    )


def forward_backward_step(compute, mean, log_var, num_samples, seed, weight):
    def forward_backward():
        with tf.GradientTape() as tape:
            tape.watch([mean, log_var])
            z, kl, log_ratio = compute(mean, log_var, num_samples, seed)
            loss = step_loss(z, kl, log_ratio, weight)
        return tape.gradient(loss, [mean, log_var])

    return forward_backward


def make_inputs(batch, dim, num_samples):
    """Deterministic inputs `mean`, `log_var`, seed and the loss weight."""
    gen = tf.random.Generator.from_seed(0)
    mean = gen.normal([batch, dim])
    log_var = 0.5 * gen.normal([batch, dim])
    weight = gen.normal([batch, dim])
    return mean, log_var, tf.constant(SEED, tf.int32), weight


def candidates(batch, dim, num_samples, pass_name):
    """dict "computation/mode" -> zero-argument callable for one size."""
    mean, log_var, seed, weight = make_inputs(batch, dim, num_samples)
    result = {}
    for comp_name, (compute, modes) in COMPUTATIONS.items():
        for mode in modes:
            if pass_name == "forward":
                fn = _forward(compute, mean, log_var, num_samples, seed)
            else:
                fn = forward_backward_step(
                    compute, mean, log_var, num_samples, seed, weight
                )
            result[f"{comp_name}/{mode}"] = in_mode(fn, mode)
    if pass_name == "forward":
        # The random-number reference: the noise of the same shape, alone.
        def rng():
            return tf.random.stateless_normal(
                [num_samples, batch, dim], seed=seed, alg="philox"
            )

        for mode in MODES:
            result[f"rng/{mode}"] = in_mode(rng, mode)
    return result


def best(timings, computation):
    """The mode of `computation` with the lowest median time."""
    modes = [
        name.split("/")[1]
        for name in timings
        if name.split("/")[0] == computation
    ]
    return min(
        modes, key=lambda m: timings[f"{computation}/{m}"]["median_s"]
    )


def summarize(timings):
    """Best mode per computation and the fused op's speed-ups.

    A speed-up is the median over repetitions of the ratio of the two
    candidates' samples in the same repetition (`paired_ratio`).
    """
    fused_mode = best(timings, "fused")
    fused = timings[f"fused/{fused_mode}"]
    summary = {"fused": {"mode": fused_mode, "median_s": fused["median_s"]}}
    others = ["tf", "tfp"] + (["rng"] if "rng/eager" in timings else [])
    for comp in others:
        mode = best(timings, comp)
        summary[comp] = {
            "mode": mode,
            "median_s": timings[f"{comp}/{mode}"]["median_s"],
            "speedup_of_fused": paired_ratio(timings[f"{comp}/{mode}"], fused),
        }
    # Like for like: both in tf.function, no XLA on either side.
    summary["speedup_vs_tf_function"] = paired_ratio(
        timings["tf/function"], timings["fused/function"]
    )
    return summary


def run(sizes, repeats, min_sample_s, log=print):
    """Times every candidate at every size and pass.

    Returns:
        list of {"B", "D", "K", "pass", "timings", "summary"}.
    """
    rows = []
    for batch, dim, num_samples in sizes:
        for pass_name in PASSES:
            cands = candidates(batch, dim, num_samples, pass_name)
            timings = interleaved_medians(cands, repeats, min_sample_s)
            summary = summarize(timings)
            rows.append(
                {
                    "B": batch,
                    "D": dim,
                    "K": num_samples,
                    "pass": pass_name,
                    "timings": timings,
                    "summary": summary,
                }
            )
            log(
                f"{batch}x{dim}x{num_samples} {pass_name}: fused "
                f"{summary['fused']['median_s'] * 1e3:.3f} ms "
                f"({summary['fused']['mode']}), best TF "
                f"{summary['tf']['median_s'] * 1e3:.3f} ms "
                f"({summary['tf']['mode']}), speed-up "
                f"{summary['tf']['speedup_of_fused']:.2f}x"
            )
    return rows
