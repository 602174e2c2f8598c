"""The `keras-vae` command line: train, evaluate, sample, traverse,
interpolate, bench.

`python -m keras_vae --help` (or `keras-vae --help`) lists the subcommands.
User errors (bad arguments, a missing or damaged model, data that does not
fit the model) print one `error:` line on standard error and exit with
status 2.
"""

import argparse
import json
import os
import sys

from keras_vae import _extras

# Heavy imports (TensorFlow, Keras, matplotlib) happen inside the commands,
# and the package imports lazily, so that `--help` and argument errors
# answer at once without importing a framework.

METRICS_FILE = "metrics.json"
MODEL_FILE = "model.keras"
LR_SCHEDULES = ("constant", "cosine", "exponential")
SPLITS = ("test", "validation", "train")
# The commands that write PNG grids, with matplotlib (the `plots` extra).
_PLOTTING_COMMANDS = ("train", "sample", "traverse", "interpolate")


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


class UsageError(Exception):
    """A mistake of the user's, reported in one line with exit status 2."""


class _HelpFormatter(argparse.HelpFormatter):
    """Appends each option's default to its help, unless the help names it
    or there is none to show (flags, unset options)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            "default" not in text
            and action.default not in (None, argparse.SUPPRESS)
            and action.option_strings
            and action.nargs != 0
        ):
            default = action.default
            if isinstance(default, (list, tuple)):
                default = " ".join(str(v) for v in default)
            text += f" (default: {default})"
        return text


def _add_data_arguments(parser, defaults_from_run=False):
    from keras_vae.data_files import BINARIZATIONS, NAMES

    default = None if defaults_from_run else "digits"
    note = " (default: the run's)" if defaults_from_run else ""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset", choices=NAMES, default=default,
        help=f"dataset to use{note}",
    )
    group.add_argument(
        "--data-dir",
        help="directory searched first for the MNIST/Fashion-MNIST IDX files "
        "(default: only the Keras cache and the system directories)",
    )
    group.add_argument("--npz", help="the .npz file for --dataset npz "
                       "(default: none)")
    group.add_argument(
        "--binarize", choices=BINARIZATIONS,
        default=None if defaults_from_run else "dynamic",
        help="'dynamic' resamples training pixels every epoch (Burda et al. "
        f"2015); test pixels are binarized once{note}",
    )
    group.add_argument(
        "--no-scale", dest="scale", action="store_false", default=None,
        help="do not scale pixel values to [0, 1] (default: scale them)",
    )
    group.add_argument(
        "--validation-fraction", type=fraction,
        default=None if defaults_from_run else 0.1,
        help="fraction of the training split held out for validation"
        f"{note}",
    )
    group.add_argument(
        "--no-download", dest="download", action="store_false",
        help="never download missing MNIST files (default: download them "
        "when found nowhere)",
    )


def build_parser():
    from keras_vae.checks import GRADIENT_ESTIMATORS, OBJECTIVES
    from keras_vae.presets import DEFAULT_LATENT_DIMS, PRESETS

    parser = argparse.ArgumentParser(
        prog="keras-vae",
        description="Train, evaluate and sample variational autoencoders.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def add_command(name, **kwargs):
        return commands.add_parser(
            name, formatter_class=_HelpFormatter, **kwargs)

    train = add_command(
        "train", help="train a VAE and write a run directory",
        description="Train a VAE; writes model.keras, history.csv, "
        "metrics.json, samples.png, reconstructions.png (and latent.png for "
        "a 2-D latent) into --output.",
    )
    _add_data_arguments(train)
    model = train.add_argument_group("model")
    latent_defaults = ", ".join(
        f"{v} for {k}" for k, v in DEFAULT_LATENT_DIMS.items())
    model.add_argument("--preset", choices=PRESETS, default="mlp",
                       help="architecture: 'mlp', Burda et al.'s one "
                       "stochastic layer; 'mlp2', their two; 'conv'")
    model.add_argument("--latent-dim", type=positive_int,
                       help="latent dimension, the top layer's for mlp2, "
                       f"whose first has twice as many (default: "
                       f"{latent_defaults})")
    model.add_argument("--objective", choices=OBJECTIVES,
                       default="elbo", help="training bound")
    model.add_argument("-k", "--num-samples", type=positive_int, default=1,
                       help="importance samples K per input")
    model.add_argument("--gradient-estimator",
                       choices=GRADIENT_ESTIMATORS,
                       default="standard",
                       help="gradient estimator ('dreg' needs --objective "
                       "iwae)")
    model.add_argument("--beta", type=non_negative_float, default=1.0,
                       help="weight of the KL term")
    model.add_argument("--warmup-epochs", type=non_negative_int, default=0,
                       help="raise the KL weight linearly from 0 to --beta "
                       "over this many epochs (0: no warm-up)")
    model.add_argument("--free-bits", type=non_negative_float, default=0.0,
                       help="free bits (nats) per latent dimension")
    model.add_argument("--conditional", action="store_true",
                       help="train a class-conditional VAE: the encoder and "
                       "decoder see each image's label, and samples.png "
                       "shows one row per class")
    fit = train.add_argument_group("optimization")
    fit.add_argument("--epochs", type=positive_int, default=10,
                     help="passes over the training set")
    fit.add_argument("--batch-size", type=positive_int, default=100,
                     help="examples per training step")
    fit.add_argument("--limit", type=positive_int,
                     help="train on the first N training examples only "
                     "(default: all)")
    fit.add_argument("--learning-rate", type=positive_float, default=1e-3,
                     help="initial Adam learning rate")
    fit.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                     default="constant",
                     help="constant; cosine decay to 0 over the run; or "
                     "exponential, multiplying by --lr-decay every epoch")
    fit.add_argument("--lr-decay", type=positive_float, default=0.95,
                     help="per-epoch factor of the exponential schedule")
    fit.add_argument("--seed", type=int, default=0,
                     help="seed of the weights, the data order and the noise")
    output = train.add_argument_group("output")
    output.add_argument("-o", "--output", required=True,
                        help="run directory to write")
    output.add_argument("--tensorboard", action="store_true",
                        help="also write TensorBoard logs to OUTPUT/logs")
    output.add_argument("--plot-every", type=non_negative_int, default=0,
                        help="write grids of prior samples and "
                        "reconstructions every N epochs to OUTPUT/images "
                        "(and to TensorBoard with --tensorboard); 0: only "
                        "at the end")
    output.add_argument("--reconstructions", type=positive_int, default=4,
                        help="reconstructions shown per input")
    output.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                        help="Keras verbosity: 0 silent, 1 progress bar, "
                        "2 one line per epoch")

    evaluate = add_command(
        "evaluate", help="evaluate a saved model on a dataset split",
        description="ELBO, IWAE bounds, log-likelihood (k=5000 by default, "
        "Burda et al. 2015), KL and active units, as mean and standard "
        "error over the examples. Writes JSON.",
    )
    evaluate.add_argument("model", help="a run directory or a .keras file")
    _add_data_arguments(evaluate, defaults_from_run=True)
    evaluate.add_argument("--split", choices=SPLITS, default="test",
                          help="the split to evaluate")
    evaluate.add_argument("--limit", type=positive_int,
                          help="evaluate only the first N examples "
                          "(default: all)")
    evaluate.add_argument("--iwae-k", type=positive_int, nargs="+",
                          default=[1, 5, 50],
                          help="K of the IWAE bounds")
    evaluate.add_argument("--elbo-samples", type=positive_int, default=1,
                          help="samples per example of the ELBO estimate")
    evaluate.add_argument("--ll-samples", type=positive_int, default=5000,
                          help="importance samples of the log-likelihood "
                          "estimate")
    evaluate.add_argument("--batch-size", type=positive_int, default=100,
                          help="examples per batch")
    evaluate.add_argument("--seed", type=int, default=0,
                          help="seed of the Monte Carlo estimates")
    evaluate.add_argument("-o", "--output",
                          help="JSON file to write (default: the run's "
                          "metrics.json, under 'evaluation', for a run "
                          "directory, else standard output)")
    evaluate.add_argument("--verbose", type=int, choices=(0, 1), default=1,
                          help="1 shows a progress bar")
    evaluate.add_argument("--per-example",
                          help="also save each example's values (.npz), for "
                          "paired comparisons between models (default: no)")

    sample = add_command(
        "sample", help="images from a saved model",
        description="Decodes draws from the prior into a titled PNG grid; "
        "for a conditional model, one row per class.")
    sample.add_argument("model", help="a run directory or a .keras file")
    sample.add_argument("-n", "--num", type=positive_int, default=64,
                        help="number of images (conditional models: split "
                        "evenly over the classes, at least one each)")
    sample.add_argument("--seed", type=int,
                        help="seed of the draws (default: a fresh one, "
                        "printed and shown in the title)")
    sample.add_argument("--draw", action="store_true",
                        help="draw pixels from p(x|z) rather than show its "
                        "mean")
    sample.add_argument("-o", "--output", default="samples.png",
                        help="PNG grid to write")
    sample.add_argument("--npy", help="also save the images as a .npy array "
                        "(default: no)")

    traverse = add_command(
        "traverse", help="latent traversals of a saved model",
        description="Sweeps the most active latent dimensions one at a "
        "time around a test image's posterior mean, the others fixed; one "
        "row per dimension.")
    traverse.add_argument("model", help="a run directory or a .keras file")
    _add_data_arguments(traverse, defaults_from_run=True)
    traverse.add_argument("--index", type=non_negative_int, default=0,
                          help="the test image whose code is the centre")
    traverse.add_argument("--dims", type=positive_int, default=8,
                          help="how many of the most active dimensions")
    traverse.add_argument("--steps", type=positive_int, default=9,
                          help="values per dimension")
    traverse.add_argument("--span", type=positive_float, default=3.0,
                          help="sweep from -SPAN to +SPAN prior standard "
                          "deviations")
    traverse.add_argument("-o", "--output", default="traversal.png",
                          help="PNG grid to write")

    interpolate = add_command(
        "interpolate", help="interpolations between two test images",
        description="Decodes points on the line between two test images' "
        "posterior means.")
    interpolate.add_argument("model",
                             help="a run directory or a .keras file")
    _add_data_arguments(interpolate, defaults_from_run=True)
    interpolate.add_argument("--pair", type=non_negative_int, nargs=2,
                             default=[0, 1], metavar=("A", "B"),
                             help="indices of the two test images")
    interpolate.add_argument("--steps", type=positive_int, default=10,
                             help="points on the line, ends included")
    interpolate.add_argument("-o", "--output", default="interpolation.png",
                             help="PNG grid to write")

    bench = add_command(
        "bench", help="run the benchmark harness (from a source checkout)",
        add_help=False,
    )
    bench.add_argument("args", nargs=argparse.REMAINDER,
                       help="arguments of the harness (see `keras-vae bench "
                       "--help` in a checkout)")
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # Before TensorFlow is imported, unless the user chose: level 3 also
    # hides the error-level start-up lines of a machine without a GPU
    # ("failed call to cuInit"); failures that matter raise in Python.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if argv[:1] == ["bench"]:
        # Everything after `bench` belongs to the harness, options included.
        return bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        _check_data_arguments(parser, args)
    command = {"train": train, "evaluate": evaluate, "sample": sample,
               "traverse": traverse, "interpolate": interpolate}
    try:
        if args.command in _PLOTTING_COMMANDS:
            # Asked first: train writes its grids only after training.
            _extras.require("plots", f"keras-vae {args.command}")
        return command[args.command](args)
    except (UsageError, ValueError, FileNotFoundError) as error:
        # The library raises ValueError for arguments and data it cannot
        # use, FileNotFoundError for missing files (the message of missing
        # data lists where they were looked for): the user's to fix.
        print(f"keras-vae {args.command}: error: {error}", file=sys.stderr)
        return 2
    except ImportError as error:
        # An optional dependency that is not installed: name its extra.
        missing = error if isinstance(error, _extras.MissingExtraError) else (
            _extras.MissingExtraError.from_error(error, "this command"))
        if missing is None:
            raise
        print(f"keras-vae {args.command}: error: {missing}", file=sys.stderr)
        return 2


def _check_data_arguments(parser, args):
    if args.dataset == "npz" and not args.npz:
        parser.error("--dataset npz needs --npz FILE")
    if args.npz and args.dataset != "npz":
        parser.error("--npz is only for --dataset npz")
    if args.conditional and args.plot_every:
        parser.error("--plot-every does not go with --conditional")


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


def _load_data(config, batch_size, seed, download, limit=None,
               labels=False):
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
        limit=limit,
        labels=labels,
    )


def train(args):
    import keras

    from keras_vae import callbacks, plotting

    os.makedirs(args.output, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    data_config = _data_config(args)
    data = _load_data(data_config, args.batch_size, args.seed, args.download,
                      limit=args.limit, labels=args.conditional)
    steps_per_epoch = -(-len(data.arrays["train"]) // args.batch_size)
    beta = args.beta
    if args.warmup_epochs:
        # The KL weight rises linearly from 0 to --beta over the warm-up.
        beta = keras.optimizers.schedules.PolynomialDecay(
            0.0, args.warmup_epochs * steps_per_epoch, end_learning_rate=beta)
    model = _build_model(args, data, beta)
    model.compile(optimizer=keras.optimizers.Adam(
        _learning_rate(args, steps_per_epoch)))
    fit_callbacks = [
        keras.callbacks.CSVLogger(os.path.join(args.output, "history.csv")),
    ]
    log_dir = os.path.join(args.output, "logs")
    if args.tensorboard:
        fit_callbacks.append(keras.callbacks.TensorBoard(log_dir))
    if args.plot_every:
        fit_callbacks.append(callbacks.ImageGrids(
            data.arrays["test"][:8], os.path.join(args.output, "images"),
            log_dir=log_dir if args.tensorboard else None,
            every=args.plot_every, seed=args.seed))
    history = model.fit(
        data.train,
        validation_data=data.validation,
        epochs=args.epochs,
        callbacks=fit_callbacks,
        verbose=args.verbose,
        # The pipeline shuffles; Keras would warn that it ignores shuffle.
        shuffle=False,
    )
    model.save(os.path.join(args.output, MODEL_FILE))

    final = {name: float(values[-1])
             for name, values in history.history.items()}
    config = {k: v for k, v in vars(args).items() if k != "command"}
    config.update(data_config, latent_dim=int(model.latent_dim))
    if args.conditional:
        config["class_names"] = _class_names(model, data.class_names)
    _write_json(os.path.join(args.output, METRICS_FILE),
                {"config": config, "final_epoch": final})

    samples_path = os.path.join(args.output, "samples.png")
    if args.conditional:
        _save_class_samples(samples_path, model, config["class_names"],
                            per_class=8, seed=args.seed)
    else:
        plotting.save_grid(
            samples_path,
            _numpy(model.sample(64, seed=args.seed)),
            columns=8, title="decoded draws from the prior (means of p(x|z))",
        )
    inputs = data.arrays["test"][:8]
    labels = data.arrays["test_labels"]
    plotting.save_reconstructions(
        os.path.join(args.output, "reconstructions.png"),
        inputs, _numpy(model.reconstruct(
            inputs, num_samples=args.reconstructions,
            **_condition(model, labels[:8]))),
        title="test inputs and reconstructions from z ~ q(z|x)",
    )
    if config["latent_dim"] == 2:
        means, _ = model.encode(data.arrays["test"],
                                **_condition(model, labels))
        plotting.save_latent_scatter(
            os.path.join(args.output, "latent.png"), _numpy(means),
            data.arrays["test_labels"],
            title="posterior means of the test set",
            class_names=data.class_names,
        )
    print(f"wrote {args.output}")
    return 0


def _build_model(args, data, beta):
    """The model of `args.preset`: a `ConditionalVAE` with --conditional,
    a `HierarchicalVAE` for the presets with several stochastic layers."""
    from keras_vae import VAE, presets

    options = dict(
        likelihood="bernoulli",
        num_samples=args.num_samples,
        objective=args.objective,
        gradient_estimator=args.gradient_estimator,
        beta=beta,
        free_bits=args.free_bits,
    )
    if args.conditional:
        if args.preset in presets.HIERARCHICAL_PRESETS:
            raise UsageError(f"--conditional has no {args.preset} preset: "
                             "use mlp or conv")
        return _conditional_model(args, data, options)
    if args.preset in presets.HIERARCHICAL_PRESETS:
        from keras_vae import HierarchicalVAE

        encoders, decoder, priors = presets.build_hierarchical(
            data.image_shape, args.latent_dim, train_mean=data.train_mean)
        return HierarchicalVAE(encoders, decoder, priors, **options)
    encoder, decoder = presets.build(
        args.preset, data.image_shape, args.latent_dim,
        train_mean=data.train_mean,
    )
    return VAE(encoder, decoder, **options)


def _conditional_model(args, data, vae_options):
    """The class-conditional VAE of the preset, for the data's labels."""
    from keras_vae import ConditionalVAE, presets

    num_classes = max(len(data.class_names),
                      int(data.arrays["train_labels"].max()) + 1)
    encoder, decoder = presets.build_conditional(
        args.preset, data.image_shape, num_classes, args.latent_dim,
        train_mean=data.train_mean,
    )
    return ConditionalVAE(encoder, decoder, num_classes=num_classes,
                          **vae_options)


def _is_conditional(model):
    from keras_vae import ConditionalVAE

    return isinstance(model, ConditionalVAE)


def _condition(model, labels):
    """The keyword arguments that give a conditional model its labels."""
    return {"condition": labels} if _is_conditional(model) else {}


def _class_names(model, names=None):
    """A name per class of a conditional model: the dataset's, or the
    label numbers."""
    names = list(names or ())
    if len(names) != model.num_classes:
        names = [str(c) for c in range(model.num_classes)]
    return names


def _save_class_samples(path, model, class_names, per_class, seed,
                        draw=False):
    """Samples of a conditional model, one row per class, as a PNG grid;
    returns them, `[classes * per_class, *event]`."""
    import numpy as np

    from keras_vae import plotting

    labels = np.repeat(np.arange(len(class_names)), per_class)
    images = _numpy(
        model.sample(len(labels), condition=labels, seed=seed, draw=draw))
    what = "draws from p(x|z, c)" if draw else "means of p(x|z, c)"
    plotting.save_class_grid(
        path, images.reshape((len(class_names), per_class) + images.shape[1:]),
        class_names,
        title=f"samples given each class, one row per class ({what}), "
        f"seed {seed}",
    )
    return images


def _refuse_conditional(model, command):
    if _is_conditional(model):
        raise UsageError(f"{command} needs an unconditional model; this one "
                         "is conditional (trained with --conditional)")


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
            raise UsageError(f"{path} holds no {MODEL_FILE}")
        return model_file, path
    if not os.path.isfile(path):
        raise UsageError(f"no such model file or run directory: {path}")
    return path, None


def _load_model(model_file):
    from keras_vae.saving import load_model

    return load_model(model_file)


def _run_config(run_dir):
    """The training options a run directory recorded, or {}."""
    if run_dir is None:
        return {}
    metrics_path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.isfile(metrics_path):
        return {}
    with open(metrics_path) as f:
        return json.load(f).get("config", {})


def _model_and_split(args, split="test", batch_size=100):
    """The model of `args.model`, and the examples of its run's `split`
    and their labels."""
    model_file, run_dir = _resolve_model(args.model)
    run_config = _run_config(run_dir)
    data_config = _data_config(args, fallback=run_config)
    if data_config["dataset"] == "npz" and not data_config["npz"]:
        raise UsageError("--dataset npz needs --npz FILE")
    data = _load_data(data_config, batch_size, run_config.get("seed", 0),
                      args.download)
    x = data.arrays[split]
    if x is None:
        raise UsageError(f"this dataset has no {split} split "
                         "(validation fraction 0)")
    labels = data.arrays[f"{split}_labels"]
    return (model_file, run_dir, _load_model(model_file), x, data_config,
            labels)


def evaluate(args):
    from keras_vae.evaluation import evaluate_arrays

    model_file, run_dir, model, x, data_config, labels = _model_and_split(
        args, args.split, args.batch_size)
    metrics_path = (None if run_dir is None
                    else os.path.join(run_dir, METRICS_FILE))
    if args.limit is not None:
        x, labels = x[: args.limit], labels[: args.limit]
    # A conditional model is given each example's label: log p(x|c).
    given = _condition(model, labels)
    model.check_data(x, **given)

    results = evaluate_arrays(
        model, x,
        iwae_ks=args.iwae_k,
        elbo_samples=args.elbo_samples,
        ll_samples=args.ll_samples,
        batch_size=args.batch_size,
        seed=args.seed,
        verbose=args.verbose,
        **given,
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
    summary.append("active units: " + ", ".join(
        f"{layer['active_units']} of {layer['latent_dim']}"
        for layer in results["layers"]))
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


def sample(args):
    import numpy as np

    from keras_vae import plotting

    model_file, run_dir = _resolve_model(args.model)
    model = _load_model(model_file)
    seed = args.seed
    if seed is None:
        seed = int(np.random.default_rng().integers(2**31))
    if _is_conditional(model):
        names = _class_names(model, _run_config(run_dir).get("class_names"))
        images = _save_class_samples(
            args.output, model, names, per_class=-(-args.num // len(names)),
            seed=seed, draw=args.draw)
    else:
        images = _numpy(model.sample(args.num, seed=seed, draw=args.draw))
        columns = int(np.ceil(np.sqrt(args.num)))
        what = "draws from p(x|z)" if args.draw else "means of p(x|z)"
        plotting.save_grid(
            args.output, images, columns=columns,
            title=f"{args.num} samples from the prior ({what}), seed {seed}")
    if args.npy:
        np.save(args.npy, images)
    print(f"wrote {args.output} (seed {seed})")
    return 0


def traverse(args):
    from keras_vae import plotting

    _, _, model, x, _, _ = _model_and_split(args)
    _refuse_conditional(model, args.command)
    if args.index >= len(x):
        raise UsageError(f"--index {args.index} is past the test split's "
                         f"{len(x)} images")
    model.check_data(x)
    images, dims = plotting.latent_traversal(
        model, x, num_dims=args.dims, steps=args.steps, span=args.span,
        center=args.index)
    plotting.save_traversal(
        args.output, images, dims,
        title=f"test image {args.index}: rows sweep latent dimensions "
        f"{', '.join(str(int(d)) for d in dims)} (most active first) from "
        f"-{args.span:g} to +{args.span:g}")
    print(f"wrote {args.output}")
    return 0


def interpolate(args):
    import numpy as np

    from keras_vae import plotting

    _, _, model, x, _, _ = _model_and_split(args)
    _refuse_conditional(model, args.command)
    a, b = args.pair
    if max(a, b) >= len(x):
        raise UsageError(f"--pair {a} {b}: the test split has {len(x)} "
                         "images")
    model.check_data(x[[a, b]])
    images = plotting.latent_interpolation(model, x[a], x[b], args.steps)
    plotting.save_grid(
        args.output, np.concatenate([x[[a]], images, x[[b]]]),
        columns=args.steps + 2,
        title=f"test images {a} and {b} (ends) and decoded points between "
        "their posterior means")
    print(f"wrote {args.output}")
    return 0


def find_harness(start=None):
    """The source checkout holding `benchmarks/run.py`, or None.

    Looked for in the current directory and its parents, then beside the
    package (an editable install or a checkout on `sys.path`): the harness
    is not part of the installed package.
    """
    candidates = []
    directory = os.path.abspath(start or os.getcwd())
    while True:
        candidates.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    package_dir = os.path.dirname(os.path.abspath(__file__))
    candidates.append(os.path.dirname(package_dir))
    for root in candidates:
        if os.path.isfile(os.path.join(root, "benchmarks", "run.py")):
            return root
    return None


def bench(argv):
    if "benchmarks.run" not in sys.modules:
        root = find_harness()
        if root is None:
            print(
                "keras-vae bench: error: the benchmark harness "
                "(benchmarks/run.py) ships with the source checkout, not "
                "the installed package; run `keras-vae bench` inside a "
                "checkout of keras-vae",
                file=sys.stderr,
            )
            return 2
        if root not in sys.path:
            sys.path.insert(0, root)
    from benchmarks.run import main as run_benchmarks

    return run_benchmarks(argv)


def _numpy(x):
    """A model's output as a NumPy array, from any backend's tensor (one on
    a GPU, or one that PyTorch tracks for gradients, included)."""
    import keras

    return keras.ops.convert_to_numpy(x)


def _write_json(path, content):
    with open(path, "w") as f:
        json.dump(content, f, indent=2)
        f.write("\n")
