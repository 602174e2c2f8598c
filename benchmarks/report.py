"""Turns a results dict into markdown, BENCHMARKS.md's section and a plot."""

import re

BEGIN = "<!-- benchmarks:begin (written by `make bench`) -->"
END = "<!-- benchmarks:end -->"
TARGET_RATIO = 3.0
MIB = 2.0**20

LATENT_COLUMNS = (
    ("fused/eager", "fused eager"),
    ("fused/function", "fused tf.function"),
    ("fused/xla", "fused XLA"),
    ("tf/eager", "TF eager"),
    ("tf/function", "TF tf.function"),
    ("tf/xla", "TF XLA"),
    ("tfp/eager", "TFP eager"),
    ("tfp/function", "TFP tf.function"),
)


def _size(row):
    return f"{row['B']}×{row['D']}×{row['K']}"


def _kbd(row):
    return row["K"] * row["B"] * row["D"]


def _time(seconds):
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def _table(header, rows):
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _latent_table(rows, pass_name):
    rows = [r for r in rows if r["pass"] == pass_name]
    forward = pass_name == "forward"
    header = ["B×D×K", "K·B·D"] + [title for _, title in LATENT_COLUMNS]
    if forward:
        header += ["RNG alone (best)"]
    header += ["floor: tf.function / XLA"]
    header += [
        "speed-up vs best TF",
        "vs TF tf.function",
        "vs best TFP",
    ]
    if forward:
        header += ["vs RNG alone"]
    body = []
    for row in rows:
        t, s = row["timings"], row["summary"]
        cells = [_size(row), f"{_kbd(row):,}"]
        cells += [_time(t[name]["median_s"]) for name, _ in LATENT_COLUMNS]
        if forward:
            cells.append(f"{_time(s['rng']['median_s'])} ({s['rng']['mode']})")
        cells.append(
            f"{_time(t['floor/function']['median_s'])} / "
            f"{_time(t['floor/xla']['median_s'])}"
        )
        cells += [
            f"**{s['tf']['speedup_of_fused']:.2f}×** "
            f"({s['fused']['mode']} vs {s['tf']['mode']})",
            f"{s['speedup_vs_tf_function']:.2f}×",
            f"{s['tfp']['speedup_of_fused']:.2f}×",
        ]
        if forward:
            cells.append(f"{s['rng']['speedup_of_fused']:.2f}×")
        body.append(cells)
    return _table(header, body)


def _bytes(n, kbd_bytes):
    return f"{n / MIB:.1f} MiB ({n / kbd_bytes:.2f})"


def _memory_table(rows):
    header = [
        "B×D×K",
        "one [K,B,D] tensor",
        "kept by latent step: fused",
        "unfused TF",
        "peak, eager: fused",
        "unfused TF",
        "peak, tf.function: fused",
        "unfused TF",
        "saved (tf.function peak)",
    ]
    body = []
    for row in rows:
        kbd, f, u = row["kbd_bytes"], *(
            row["candidates"][n] for n in ("fused", "tf")
        )
        saved = u["function_peak_bytes"] - f["function_peak_bytes"]
        body.append(
            [
                _size(row),
                f"{kbd / MIB:.1f} MiB",
                _bytes(f["latent_kept_bytes"], kbd),
                _bytes(u["latent_kept_bytes"], kbd),
                _bytes(f["eager_peak_bytes"], kbd),
                _bytes(u["eager_peak_bytes"], kbd),
                _bytes(f["function_peak_bytes"], kbd),
                _bytes(u["function_peak_bytes"], kbd),
                f"{saved / MIB:.1f} MiB",
            ]
        )
    return _table(header, body)


# The end-to-end targets: (summary key, what is compared, the ratio
# required, the K it applies to; None: every K).
E2E_TARGETS = (
    ("tf", "keras_vae.VAE vs plain Keras, both on TensorFlow", 1.2, None),
    ("tf_vs_plain_jax", "keras_vae.VAE on TensorFlow vs plain Keras on JAX",
     1.0, None),
    ("jax", "keras_vae.VAE vs plain Keras, both on JAX", 1.0, None),
    ("torch", "keras_vae.VAE vs plain Keras, both on PyTorch", 1.0, None),
    ("any", "fastest keras_vae.VAE vs fastest plain Keras, any backend", 1.2,
     (5, 50)),
)


def _ratio_cell(summary, key):
    ratio = summary.get(f"ratio_{key}")
    return "n/a" if ratio is None else f"**{ratio:.2f}×**"


def _end_to_end_table(rows):
    names = list(rows[0]["candidates"])
    header = ["K", "steps per call"]
    header += [f"{n} (examples/s)" for n in names]
    header += [title for _, title, _, _ in E2E_TARGETS]
    header += ["cost of the NaN check (paired)"]
    body = []
    for row in rows:
        cells = [row["K"], row["steps"]]
        cells += [
            f"{row['candidates'][n]['examples_per_s']:,.0f}" for n in names
        ]
        cells += [_ratio_cell(row["summary"], key)
                  for key, _, _, _ in E2E_TARGETS]
        cost = row["summary"].get("nonfinite_check_cost")
        cells.append("" if cost is None else f"{100 * cost:+.1f}%")
        body.append(cells)
    return _table(header, body)


def _end_to_end_memory_table(rows):
    names = [
        n for n in rows[0]["candidates"]
        if rows[0]["candidates"][n].get("train_step_peak_bytes") is not None
    ]
    header = ["K"] + [f"{n} (MiB)" for n in names]
    body = [
        [row["K"]]
        + [
            f"{row['candidates'][n]['train_step_peak_bytes'] / MIB:.1f}"
            for n in names
        ]
        for row in rows
    ]
    return _table(header, body)


def _log_likelihood_table(rows):
    return _table(
        ["N", "time", "time per example", "peak RSS", "RSS before the call",
         "batch"],
        [
            (
                f"{r['N']:,}",
                _time(r["seconds"]),
                _time(r["seconds"] / r["N"]),
                f"{r['peak_rss_bytes'] / MIB:,.0f} MiB",
                f"{r['rss_before_bytes'] / MIB:,.0f} MiB",
                r["batch_size"],
            )
            for r in rows
        ],
    )


def _find(rows, size, pass_name):
    for row in rows:
        if (row["B"], row["D"], row["K"]) == size and row["pass"] == pass_name:
            return row
    return None


def targets(results):
    """[(target, required, measured, met)] for the targets measured."""
    out = []
    latent = results.get("latent", [])
    for size in ((128, 32, 1), (128, 32, 50), (1024, 64, 8), (4096, 256, 16)):
        row = _find(latent, size, "forward+backward")
        if row:
            ratio = row["summary"]["tf"]["speedup_of_fused"]
            out.append(
                (
                    f"forward+backward {_size(row)} vs fastest TF mode",
                    f"≥ {TARGET_RATIO:g}×",
                    f"{ratio:.2f}×",
                    ratio >= TARGET_RATIO,
                )
            )
    row = _find(latent, (4096, 256, 16), "forward")
    if row:
        ratio = row["summary"]["rng"]["speedup_of_fused"]
        out.append(
            (
                "forward 4096×256×16 vs stateless_normal alone",
                f"≥ {TARGET_RATIO:g}×",
                f"{ratio:.2f}×",
                ratio >= TARGET_RATIO,
            )
        )
    for row in results.get("memory", []):
        kept = row["candidates"]["fused"]["latent_kept_bytes"] / row["kbd_bytes"]
        out.append(
            (
                f"backward keeps nothing of size K×B×D besides z, {_size(row)}",
                "< 2 [K,B,D] tensors",
                f"{kept:.2f}",
                kept < 2.0,
            )
        )
    for row in results.get("end_to_end", []):
        for key, title, required, ks in E2E_TARGETS:
            ratio = row["summary"].get(f"ratio_{key}")
            if ratio is None or (ks is not None and row["K"] not in ks):
                continue
            out.append(
                (
                    f"{title}, K={row['K']}",
                    f"≥ {required:g}×",
                    f"{ratio:.2f}×",
                    ratio >= required,
                )
            )
    return out


def _machine(m):
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    build = m["build_info"]
    return "\n".join(
        [
            f"- CPU: {m['cpu']}, {m['usable_cores']} usable of "
            f"{m['logical_cores']} logical cores; flags: "
            f"{', '.join(m['cpu_flags']) or 'none of note'}",
            f"- {m['platform']}, Python {m['python']}, {versions}",
            f"- keras-vae {m['keras_vae']} at commit {m['git_commit']}; "
            f"op built for CPU: {build.get('cpu')}, CUDA: {build.get('cuda')}"
            f", loaded: {build.get('loaded')}; CPU kernels use "
            f"{m.get('kernel_cpu_isa') or 'an unreported instruction set'}",
        ]
    )


def markdown(results):
    """The generated section: machine, tables and the targets."""
    cfg = results["config"]
    parts = [
        f"Run: `{cfg['command']}` at {results['timestamp']}; "
        f"{cfg['repeats']} interleaved repetitions per candidate, medians, "
        f"each sample at least {cfg['min_sample_s'] * 1e3:g} ms of calls.",
        "",
        _machine(results["machine"]),
    ]
    if results.get("latent"):
        parts += [
            "",
            "### Latent step, forward (median time per call)",
            "",
            _latent_table(results["latent"], "forward"),
            "",
            "### Latent step, forward+backward (median time per call)",
            "",
            _latent_table(results["latent"], "forward+backward"),
        ]
    if results.get("memory"):
        parts += [
            "",
            "### Memory of a training step of the latent layer",
            "",
            "In MiB and, in brackets, in float32 tensors of shape [K, B, D].",
            "",
            _memory_table(results["memory"]),
        ]
    if results.get("end_to_end"):
        e2e = results["end_to_end"][0]
        parts += [
            "",
            "### End to end: `fit` throughput, Burda et al. 784–200–200–50",
            "",
            f"Batch {e2e['batch_size']}; median examples per second over "
            "timed `fit` calls.",
            "",
            _end_to_end_table(results["end_to_end"]),
            "",
            "Peak allocator memory of one `train_on_batch`, past what was in "
            "use before it (TensorFlow's allocator; the other backends do not "
            "report it):",
            "",
            _end_to_end_memory_table(results["end_to_end"]),
        ]
    if results.get("log_likelihood"):
        parts += [
            "",
            "### `log_likelihood` (k=5000) against N",
            "",
            "The README's call, `vae.log_likelihood(x, num_samples=5000)`, "
            "on the MLP preset for 28×28 images; each N in a fresh process. "
            "Peak resident memory of the whole process.",
            "",
            _log_likelihood_table(results["log_likelihood"]),
        ]
    rows = targets(results)
    if rows:
        parts += [
            "",
            "### Targets",
            "",
            _table(
                ["target", "required", "measured", "met"],
                [(t, r, m, "yes" if ok else "**no**") for t, r, m, ok in rows],
            ),
        ]
    return "\n".join(parts) + "\n"


def update_document(path, section):
    """Replaces the generated section of `path`, or appends one."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = "# Benchmarks\n"
    block = f"{BEGIN}\n{section}{END}"
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


def plot(results, path):
    """Speed-up of the fused op against K·B·D, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = (
        ("forward+backward", "tf", "fwd+bwd vs fastest TF mode", "o-"),
        ("forward", "tf", "forward vs fastest TF mode", "s-"),
        ("forward", "rng", "forward vs stateless_normal alone", "^--"),
        ("forward+backward", "tfp", "fwd+bwd vs fastest TFP mode", "d:"),
    )
    for pass_name, comp, label, style in series:
        rows = sorted(
            (r for r in results["latent"] if r["pass"] == pass_name),
            key=_kbd,
        )
        ax.plot(
            [_kbd(r) for r in rows],
            [r["summary"][comp]["speedup_of_fused"] for r in rows],
            style,
            label=label,
        )
    ax.axhline(TARGET_RATIO, color="grey", lw=0.8, ls="--", label="3× target")
    ax.axhline(1.0, color="black", lw=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log", base=2)
    ticks = [0.25, 0.5, 1, 2, 3, 4, 6, 8, 12, 16]
    low, high = ax.get_ylim()
    ticks = [t for t in ticks if low <= t <= high]
    ax.set_yticks(ticks, [f"{t:g}×" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("K·B·D (elements of z)")
    ax.set_ylabel("speed-up of the fused op (×)")
    machine = results["machine"]
    ax.set_title(
        f"Fused reparameterize-and-KL, {machine['usable_cores']} cores "
        f"{machine['cpu']}",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
