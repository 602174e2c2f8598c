"""Image grids, latent scatter plots, traversals and interpolations.

`save_grid`, `save_class_grid`, `save_reconstructions`,
`save_latent_scatter` and `save_traversal` write PNG files; `latent_traversal` and
`latent_interpolation` compute the images from a `keras_vae.VAE`.

matplotlib is imported here, on first use, with the non-interactive Agg
backend, so that `import keras_vae` stays light and plots work headless.
"""

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def tile(images, rows, columns):
    """Tiles `rows * columns` images `[N, H, W(, C)]` into one image array.

    Images are laid out row by row with a one-pixel gap; missing cells stay
    mid-grey. Flat images (`[N, P]` with P a square) are shown as squares.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 2:
        side = int(round(np.sqrt(images.shape[1])))
        if side * side != images.shape[1]:
            raise ValueError(
                f"cannot show flat vectors of length {images.shape[1]} as "
                "square images"
            )
        images = images.reshape(-1, side, side)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if len(images) > rows * columns:
        raise ValueError(
            f"{len(images)} images do not fit in {rows}x{columns} cells"
        )
    height, width = images.shape[1:3]
    # Mid-grey gaps separate cells of both black and white images.
    canvas = np.full(
        (rows * (height + 1) - 1, columns * (width + 1) - 1)
        + images.shape[3:],
        0.5,
        dtype=np.float32,
    )
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        top, left = r * (height + 1), c * (width + 1)
        canvas[top : top + height, left : left + width] = image
    return canvas


def save_grid(path, images, columns, title=None, column_titles=None,
              row_titles=None):
    """Saves images in a grid with `columns` columns as a PNG at `path`,
    optionally with a title above each column or beside each row."""
    plt = _pyplot()
    rows = -(-len(images) // columns)
    canvas = tile(np.clip(images, 0.0, 1.0), rows, columns)
    scale = 8.0 / max(canvas.shape[:2])
    figure = plt.figure(
        figsize=(canvas.shape[1] * scale + 0.4, canvas.shape[0] * scale + 0.8)
    )
    axes = figure.add_subplot()
    axes.imshow(canvas, cmap="gray", vmin=0.0, vmax=1.0,
                interpolation="nearest")
    axes.set_xticks([])
    axes.set_yticks([])
    if column_titles is not None:
        cell = canvas.shape[1] / columns
        axes.set_xticks([cell * (i + 0.5) for i in range(columns)])
        axes.set_xticklabels(column_titles, fontsize=8)
        axes.xaxis.set_ticks_position("top")
        axes.tick_params(length=0)
    if row_titles is not None:
        cell = canvas.shape[0] / rows
        axes.set_yticks([cell * (i + 0.5) for i in range(len(row_titles))])
        axes.set_yticklabels(row_titles, fontsize=8)
        axes.tick_params(length=0)
    if title:
        axes.set_title(title, fontsize=10, y=-0.08 if column_titles else 1.0)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def save_class_grid(path, images, class_names, title=None):
    """Saves class-conditional samples, one row per class.

    Args:
        path: the PNG file to write.
        images: `[num_classes, per_class, *image_shape]`, row c drawn
            given class c.
        class_names: a name per row, shown beside it.
        title: an optional title.
    """
    images = np.asarray(images)
    rows, per_class = images.shape[:2]
    if len(class_names) != rows:
        raise ValueError(
            f"{len(class_names)} class names for {rows} rows of images"
        )
    save_grid(
        path,
        images.reshape((rows * per_class,) + images.shape[2:]),
        columns=per_class,
        title=title,
        row_titles=list(class_names),
    )


def save_reconstructions(path, inputs, reconstructions, title=None):
    """Saves each input beside its K reconstructions, one input per row.

    Args:
        path: the PNG file to write.
        inputs: `[B, *image_shape]`.
        reconstructions: `[K, B, *image_shape]`, as from `VAE.reconstruct`.
        title: an optional title.
    """
    inputs = np.asarray(inputs)
    reconstructions = np.asarray(reconstructions)
    num_samples = reconstructions.shape[0]
    rows = np.concatenate(
        [inputs[:, None], np.moveaxis(reconstructions, 0, 1)], axis=1
    )
    titles = ["input"] + [f"z{k + 1}" for k in range(num_samples)]
    save_grid(
        path,
        rows.reshape((-1,) + inputs.shape[1:]),
        columns=num_samples + 1,
        title=title,
        column_titles=titles,
    )


def save_latent_scatter(path, means, labels=None, title=None,
                        class_names=None):
    """Saves a scatter plot of 2-D posterior means, coloured by label.

    With `class_names` (indexed by label) the colour bar names the classes.
    """
    means = np.asarray(means)
    if means.ndim != 2 or means.shape[1] != 2:
        raise ValueError(f"need 2-D latent means [N, 2], got {means.shape}")
    plt = _pyplot()
    figure = plt.figure(figsize=(6, 5))
    axes = figure.add_subplot()
    has_labels = labels is not None and np.any(np.asarray(labels) >= 0)
    points = axes.scatter(
        means[:, 0], means[:, 1], s=4,
        c=labels if has_labels else None, cmap="tab10" if has_labels else None,
        # One colour per class, centred on its tick.
        vmin=-0.5 if class_names else None,
        vmax=len(class_names) - 0.5 if class_names else None,
    )
    if has_labels and class_names:
        bar = figure.colorbar(points, ax=axes, ticks=range(len(class_names)))
        bar.ax.set_yticklabels(class_names, fontsize=8)
    elif has_labels:
        figure.colorbar(points, ax=axes, label="label")
    axes.set_xlabel("z[0] (posterior mean)")
    axes.set_ylabel("z[1] (posterior mean)")
    if title:
        axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def most_active_dimensions(means, num_dims):
    """The `num_dims` latent dimensions whose posterior means vary most over
    the data (`means` `[N, D]`), most active first."""
    variance = np.asarray(means, dtype=np.float64).var(axis=0)
    return np.argsort(-variance, kind="stable")[:num_dims]


def latent_traversal(model, x, num_dims=8, steps=9, span=3.0, center=0):
    """Decodes sweeps of single latent dimensions around one code.

    The centre is the posterior mean of `x[center]`; each of the `num_dims`
    most active dimensions over `x` (see `most_active_dimensions`) is swept
    from `-span` to `+span` (prior standard deviations, the prior being
    N(0, I)) while the others stay at the centre.

    Args:
        model: a `keras_vae.VAE`.
        x: examples `[N, ...]`, N >= 2, whose posterior means rank the
            dimensions.
        num_dims: rows, at most the latent dimension.
        steps: values per dimension.
        span: half-width of the sweep.
        center: index into `x` of the example at the centre.

    Returns:
        `(images, dims)`: `images` `[len(dims), steps, *event]`, the
        likelihood's mean E[x|z]; `dims` the swept dimensions, row by row.
    """
    means = np.asarray(model.encode(x)[0])
    if not 0 <= center < len(means):
        raise ValueError(f"center must index x (N={len(means)}), got {center}")
    dims = most_active_dimensions(means, min(num_dims, means.shape[1]))
    values = np.linspace(-span, span, steps, dtype=np.float32)
    codes = np.repeat(means[center][None, None], len(dims), axis=0)
    codes = np.repeat(codes, steps, axis=1)
    for row, dim in enumerate(dims):
        codes[row, :, dim] = values
    decoded = _decoded_means(model, codes.reshape(-1, means.shape[1]))
    return decoded.reshape((len(dims), steps) + decoded.shape[1:]), dims


def latent_interpolation(model, x_a, x_b, steps=10):
    """Decodes `steps` points on the line between the posterior means of two
    examples (ends included): `[steps, *event]`, E[x|z]."""
    pair = np.stack([np.asarray(x_a), np.asarray(x_b)])
    means = np.asarray(model.encode(pair)[0])
    weights = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    codes = (1.0 - weights) * means[0] + weights * means[1]
    return _decoded_means(model, codes)


def _decoded_means(model, codes):
    """E[x|z] for the codes, as NumPy (from any backend's tensor)."""
    import keras

    return keras.ops.convert_to_numpy(model.likelihood.mean(model.decode(codes)))


def save_traversal(path, images, dims, title=None):
    """Saves `latent_traversal`'s images, one row per swept dimension."""
    images = np.asarray(images)
    rows, steps = images.shape[:2]
    save_grid(
        path,
        images.reshape((rows * steps,) + images.shape[2:]),
        columns=steps,
        title=title or "latent traversal, rows: dimensions "
        + ", ".join(str(int(d)) for d in dims),
    )
