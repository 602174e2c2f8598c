"""The `keras-vae` command line: train, evaluate, sample, bench.

`python -m keras_vae --help` (or `keras-vae --help`) lists the subcommands.
"""

import argparse
import json
import os
import sys

# Heavy imports (TensorFlow, Keras, matplotlib) happen inside the commands,
# so that `--help` and argument errors answer at once.

METRICS_FILE = "metrics.json"
MODEL_FILE = "model.keras"
LR_SCHEDULES = ("constant", "cosine", "exponential")


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer: {text}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text}")
    return value


def positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text}")
    return value


def non_negative_float(text):
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text}")
    return value


def fraction(text):
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1): {text}")
    return value


def _add_data_arguments(parser, defaults_from_run=False):
    from keras_vae.datasets import BINARIZATIONS, NAMES

    default = None if defaults_from_run else "digits"
    note = " (default: the run's)" if defaults_from_run else ""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset", choices=NAMES, default=default,
        help=f"dataset to use{note or ' (default: digits)'}",
    )
    group.add_argument(
        "--data-dir",
        help="directory searched first for the MNIST/Fashion-MNIST IDX files",
    )
    group.add_argument("--npz", help="the .npz file for --dataset npz")
    group.add_argument(
        "--binarize", choices=BINARIZATIONS,
        default=None if defaults_from_run else "dynamic",
        help="'dynamic' resamples training pixels every epoch (Burda et al. "
        f"2015); test pixels are binarized once{note or ' (default: dynamic)'}",
    )
    group.add_argument(
        "--no-scale", dest="scale", action="store_false", default=None,
        help="do not scale pixel values to [0, 1]",
    )
    group.add_argument(
        "--validation-fraction", type=fraction,
        default=None if defaults_from_run else 0.1,
        help="fraction of the training split held out for validation"
        f"{note or ' (default: 0.1)'}",
    )
    group.add_argument(
        "--no-download", dest="download", action="store_false",
        help="never download missing MNIST files",
    )


def build_parser():
    from keras_vae.presets import PRESETS

    parser = argparse.ArgumentParser(
        prog="keras-vae",
        description="Train, evaluate and sample variational autoencoders.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train", help="train a VAE and write a run directory",
        description="Train a VAE; writes model.keras, history.csv, "
        "metrics.json, samples.png, reconstructions.png (and latent.png for "
        "a 2-D latent) into --output.",
    )
    _add_data_arguments(train)
    model = train.add_argument_group("model")
    model.add_argument("--preset", choices=PRESETS, default="mlp",
                       help="architecture (default: mlp)")
    model.add_argument("--latent-dim", type=positive_int,
                       help="latent dimension (default: 50 for mlp, 16 for "
                       "conv)")
    model.add_argument("--objective", choices=("elbo", "iwae"),
                       default="elbo", help="training bound (default: elbo)")
    model.add_argument("-k", "--num-samples", type=positive_int, default=1,
                       help="importance samples K per input (default: 1)")
    model.add_argument("--gradient-estimator",
                       choices=("standard", "stl", "dreg"),
                       default="standard",
                       help="gradient estimator (default: standard)")
    model.add_argument("--beta", type=non_negative_float, default=1.0,
                       help="weight of the KL term (default: 1)")
    model.add_argument("--warmup-epochs", type=non_negative_int, default=0,
                       help="raise the KL weight linearly from 0 to --beta "
                       "over this many epochs (default: 0, no warm-up)")
    model.add_argument("--free-bits", type=non_negative_float, default=0.0,
                       help="free bits (nats) per latent dimension")
    fit = train.add_argument_group("optimization")
    fit.add_argument("--epochs", type=positive_int, default=10)
    fit.add_argument("--batch-size", type=positive_int, default=100)
    fit.add_argument("--learning-rate", type=positive_float, default=1e-3,
                     help="initial Adam learning rate (default: 1e-3)")
    fit.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                     default="constant",
                     help="constant; cosine decay to 0 over the run; or "
                     "exponential, multiplying by --lr-decay every epoch")
    fit.add_argument("--lr-decay", type=positive_float, default=0.95,
                     help="per-epoch factor of the exponential schedule")
    fit.add_argument("--seed", type=int, default=0)
    output = train.add_argument_group("output")
    output.add_argument("-o", "--output", required=True,
                        help="run directory to write")
    output.add_argument("--tensorboard", action="store_true",
                        help="also write TensorBoard logs to OUTPUT/logs")
    output.add_argument("--reconstructions", type=positive_int, default=4,
                        help="reconstructions shown per input (default: 4)")
    output.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                        help="Keras verbosity: 0 silent, 1 progress bar, "
                        "2 one line per epoch")

    evaluate = commands.add_parser(
        "evaluate", help="evaluate a saved model on a dataset split",
        description="ELBO, IWAE bounds, log-likelihood (k=5000 by default, "
        "Burda et al. 2015), KL and active units, as mean and standard "
        "error over the examples. Writes JSON.",
    )
    evaluate.add_argument("model", help="a run directory or a .keras file")
    _add_data_arguments(evaluate, defaults_from_run=True)
    evaluate.add_argument("--split", choices=("test", "validation", "train"),
                          default="test")
    evaluate.add_argument("--limit", type=positive_int,
                          help="evaluate only the first N examples")
    evaluate.add_argument("--iwae-k", type=positive_int, nargs="+",
                          default=[1, 5, 50],
                          help="K of the IWAE bounds (default: 1 5 50)")
    evaluate.add_argument("--elbo-samples", type=positive_int, default=1,
                          help="samples per example of the ELBO estimate")
    evaluate.add_argument("--ll-samples", type=positive_int, default=5000,
                          help="importance samples of the log-likelihood "
                          "estimate (default: 5000)")
    evaluate.add_argument("--batch-size", type=positive_int, default=100)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("-o", "--output",
                          help="JSON file to write; default: the run's "
                          "metrics.json (under 'evaluation') for a run "
                          "directory, else standard output")
    evaluate.add_argument("--verbose", type=int, choices=(0, 1), default=1)
    evaluate.add_argument("--per-example",
                          help="also save each example's values (.npz), for "
                          "paired comparisons between models")

    sample = commands.add_parser("sample", help="images from a saved model")
    sample.add_argument("model", help="a run directory or a .keras file")
    sample.add_argument("-n", "--num", type=positive_int, default=64)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--draw", action="store_true",
                        help="draw pixels from p(x|z) rather than show its "
                        "mean")
    sample.add_argument("-o", "--output", default="samples.png",
                        help="PNG grid to write (default: samples.png)")
    sample.add_argument("--npy", help="also save the images as a .npy array")

    bench = commands.add_parser(
        "bench", help="run the benchmark harness (from a source checkout)",
        add_help=False,
    )
    bench.add_argument("args", nargs=argparse.REMAINDER,
                       help="arguments of the harness")
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        # Everything after `bench` belongs to the harness, options included.
        return bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.command == "train":
        _check_data_arguments(parser, args)
    command = {"train": train, "evaluate": evaluate, "sample": sample}
    try:
        return command[args.command](args)
    except FileNotFoundError as error:
        # Missing data: the message lists where the files were looked for.
        print(f"error: {error}", file=sys.stderr)
        return 1


def _check_data_arguments(parser, args):
    if args.dataset == "npz" and not args.npz:
        parser.error("--dataset npz needs --npz FILE")
    if args.npz and args.dataset != "npz":
        parser.error("--npz is only for --dataset npz")


# What the data options mean when neither the command line nor a run sets them.
DATA_DEFAULTS = {"dataset": "digits", "binarize": "dynamic", "scale": True,
                 "validation_fraction": 0.1}


def _data_config(args, fallback=None):
    """The data options: those given, else `fallback`'s (a run's), else the
    defaults."""
    given = {
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "npz": args.npz,
        "binarize": args.binarize,
        "scale": args.scale,
        "validation_fraction": args.validation_fraction,
    }
    fallback = fallback or {}
    return {
        key: fallback.get(key, DATA_DEFAULTS.get(key)) if value is None
        else value
        for key, value in given.items()
    }


def _load_data(config, batch_size, seed, download):
    from keras_vae import datasets

    return datasets.load(
        config["dataset"],
        batch_size=batch_size,
        binarize=config["binarize"],
        scale=config["scale"],
        validation_fraction=config["validation_fraction"],
        seed=seed,
        data_dir=config["data_dir"],
        path=config["npz"],
        download=download,
    )


def train(args):
    import keras
    import numpy as np

    from keras_vae import VAE, plotting, presets

    os.makedirs(args.output, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    data_config = _data_config(args)
    data = _load_data(data_config, args.batch_size, args.seed, args.download)
    encoder, decoder = presets.build(
        args.preset, data.image_shape, args.latent_dim,
        train_mean=data.train_mean,
    )
    steps_per_epoch = int(data.train.cardinality())
    beta = args.beta
    if args.warmup_epochs:
        # The KL weight rises linearly from 0 to --beta over the warm-up.
        beta = keras.optimizers.schedules.PolynomialDecay(
            0.0, args.warmup_epochs * steps_per_epoch, end_learning_rate=beta)
    model = VAE(
        encoder,
        decoder,
        likelihood="bernoulli",
        num_samples=args.num_samples,
        objective=args.objective,
        gradient_estimator=args.gradient_estimator,
        beta=beta,
        free_bits=args.free_bits,
    )
    model.compile(optimizer=keras.optimizers.Adam(
        _learning_rate(args, steps_per_epoch)))
    fit_callbacks = [
        keras.callbacks.CSVLogger(os.path.join(args.output, "history.csv")),
    ]
    if args.tensorboard:
        fit_callbacks.append(keras.callbacks.TensorBoard(
            os.path.join(args.output, "logs")))
    history = model.fit(
        data.train,
        validation_data=data.validation,
        epochs=args.epochs,
        callbacks=fit_callbacks,
        verbose=args.verbose,
    )
    model.save(os.path.join(args.output, MODEL_FILE))

    final = {name: float(values[-1])
             for name, values in history.history.items()}
    config = {k: v for k, v in vars(args).items() if k != "command"}
    config.update(data_config, latent_dim=int(encoder.outputs[0].shape[-1]))
    _write_json(os.path.join(args.output, METRICS_FILE),
                {"config": config, "final_epoch": final})

    plotting.save_grid(
        os.path.join(args.output, "samples.png"),
        np.asarray(model.sample(64, seed=args.seed)),
        columns=8, title="decoded draws from the prior (means of p(x|z))",
    )
    inputs = data.arrays["test"][:8]
    plotting.save_reconstructions(
        os.path.join(args.output, "reconstructions.png"),
        inputs, np.asarray(model.reconstruct(inputs,
                                             num_samples=args.reconstructions)),
        title="test inputs and reconstructions from z ~ q(z|x)",
    )
    if config["latent_dim"] == 2:
        means, _ = model.encode(data.arrays["test"])
        plotting.save_latent_scatter(
            os.path.join(args.output, "latent.png"), np.asarray(means),
            data.arrays["test_labels"],
            title="posterior means of the test set",
        )
    print(f"wrote {args.output}")
    return 0


def _learning_rate(args, steps_per_epoch):
    import keras

    total_steps = args.epochs * steps_per_epoch
    if args.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            args.learning_rate, decay_steps=total_steps)
    if args.lr_schedule == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(
            args.learning_rate, decay_steps=steps_per_epoch,
            decay_rate=args.lr_decay)
    return args.learning_rate


def _resolve_model(path):
    """(model file, run directory or None) for a run directory or a file."""
    if os.path.isdir(path):
        model_file = os.path.join(path, MODEL_FILE)
        if not os.path.isfile(model_file):
            sys.exit(f"error: {path} holds no {MODEL_FILE}")
        return model_file, path
    if not os.path.isfile(path):
        sys.exit(f"error: no such model file or run directory: {path}")
    return path, None


def _load_model(model_file):
    import keras

    import keras_vae  # noqa: F401 - registers the serializable classes

    return keras.saving.load_model(model_file)


def evaluate(args):
    model_file, run_dir = _resolve_model(args.model)
    run_config = {}
    metrics_path = None
    if run_dir is not None:
        metrics_path = os.path.join(run_dir, METRICS_FILE)
        if os.path.isfile(metrics_path):
            with open(metrics_path) as f:
                run_config = json.load(f).get("config", {})
    data_config = _data_config(args, fallback=run_config)
    if data_config["dataset"] == "npz" and not data_config["npz"]:
        sys.exit("error: --dataset npz needs --npz FILE")
    data = _load_data(data_config, args.batch_size,
                      run_config.get("seed", 0), args.download)
    x = data.arrays[args.split]
    if x is None:
        sys.exit(f"error: this dataset has no {args.split} split "
                 "(validation fraction 0)")
    if args.limit is not None:
        x = x[: args.limit]

    model = _load_model(model_file)
    results = evaluate_arrays(
        model, x,
        iwae_ks=args.iwae_k,
        elbo_samples=args.elbo_samples,
        ll_samples=args.ll_samples,
        batch_size=args.batch_size,
        seed=args.seed,
        verbose=args.verbose,
    )
    per_example = results.pop("per_example")
    if args.per_example:
        import numpy as np

        np.savez(args.per_example, **per_example)
    results = {
        "model": model_file,
        "dataset": data_config["dataset"],
        "binarize": data_config["binarize"],
        "split": args.split,
        "limit": args.limit,
        **results,
    }
    summary = [f"{name}: {results[name]['mean']:.3f} "
               f"± {results[name]['stderr']:.3f}"
               for name in ("elbo", "log_likelihood", "kl")]
    summary += [f"iwae k={k}: {v['mean']:.3f} ± {v['stderr']:.3f}"
                for k, v in results["iwae"].items()]
    summary.append(f"active units: {results['active_units']} of "
                   f"{results['latent_dim']}")
    print("\n".join(summary))
    if args.output:
        _write_json(args.output, results)
    elif metrics_path is not None:
        content = {}
        if os.path.isfile(metrics_path):
            with open(metrics_path) as f:
                content = json.load(f)
        content["evaluation"] = results
        _write_json(metrics_path, content)
    else:
        json.dump(results, sys.stdout, indent=2)
        print()
    return 0


def evaluate_arrays(model, x, iwae_ks=(1, 5, 50), elbo_samples=1,
                    ll_samples=5000, batch_size=100, seed=0, verbose=1):
    """Evaluates `model` on the examples `x`, one batch at a time.

    Returns a dict of per-example means and standard errors of the ELBO, the
    IWAE bounds at each K, the log-likelihood estimate (the IWAE bound at
    `ll_samples`, Burda et al. 2015) and the KL, and the number of active
    units: latent dimensions whose posterior mean varies over `x` with
    variance above 0.01 (Burda et al. 2015, section 5.2). `"per_example"`
    holds each example's values, as NumPy arrays. `seed` makes the Monte
    Carlo estimates reproducible.
    """
    import keras
    import numpy as np

    from keras_vae import bounds

    columns = {"elbo": [], "log_likelihood": [], "kl": []}
    columns.update({f"iwae_{k}": [] for k in iwae_ks})
    means = []
    seeds = np.random.default_rng(seed)

    def next_seed():
        return int(seeds.integers(2**31))

    progress = keras.utils.Progbar(len(x), verbose=verbose,
                                   unit_name="example")
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size]
        mean, log_var = model.encode(batch)
        means.append(np.asarray(mean))
        columns["kl"].append(
            np.sum(np.asarray(bounds.kl_per_dimension(mean, log_var)), axis=-1))
        columns["elbo"].append(
            model.elbo(batch, num_samples=elbo_samples, seed=next_seed()))
        for k in iwae_ks:
            columns[f"iwae_{k}"].append(
                model.iwae_bound(batch, num_samples=k, seed=next_seed()))
        # One progress bar, over examples: none of its own per chunk.
        columns["log_likelihood"].append(model.log_likelihood(
            batch, num_samples=ll_samples, batch_size=batch_size,
            seed=next_seed(), verbose=0))
        progress.add(len(batch))

    per_example = {
        name: np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1)
                              for v in values])
        for name, values in columns.items()
    }

    def summary(name):
        values = per_example[name]
        return {"mean": float(values.mean()),
                "stderr": float(values.std(ddof=1) / np.sqrt(len(values)))
                if len(values) > 1 else float("nan")}

    posterior_mean_variance = np.concatenate(means).var(axis=0)
    return {
        "per_example": per_example,
        "num_examples": int(len(x)),
        "elbo": {**summary("elbo"), "num_samples": elbo_samples},
        "iwae": {str(k): summary(f"iwae_{k}") for k in iwae_ks},
        "log_likelihood": {**summary("log_likelihood"),
                           "num_samples": ll_samples},
        "kl": summary("kl"),
        "active_units": int(np.sum(posterior_mean_variance > 0.01)),
        "latent_dim": int(len(posterior_mean_variance)),
        "posterior_mean_variance": posterior_mean_variance.tolist(),
    }


def sample(args):
    import numpy as np

    from keras_vae import plotting

    model_file, _ = _resolve_model(args.model)
    model = _load_model(model_file)
    images = np.asarray(model.sample(args.num, seed=args.seed, draw=args.draw))
    columns = int(np.ceil(np.sqrt(args.num)))
    plotting.save_grid(args.output, images, columns=columns)
    if args.npy:
        np.save(args.npy, images)
    print(f"wrote {args.output}")
    return 0


def bench(argv):
    try:
        from benchmarks.run import main as run_benchmarks
    except ImportError as error:
        print(
            "error: the benchmark harness (benchmarks/run.py) ships with the "
            "source checkout, not the installed package; run `keras-vae "
            f"bench` or `make bench` from the repository root ({error})",
            file=sys.stderr,
        )
        return 2
    return run_benchmarks(argv)


def _write_json(path, content):
    with open(path, "w") as f:
        json.dump(content, f, indent=2)
        f.write("\n")
