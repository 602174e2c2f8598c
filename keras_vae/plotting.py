"""Image grids and latent scatter plots, written as PNG files.

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


def save_grid(path, images, columns, title=None, column_titles=None):
    """Saves images in a grid with `columns` columns as a PNG at `path`."""
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
    if title:
        axes.set_title(title, fontsize=10, y=-0.08 if column_titles else 1.0)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


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


def save_latent_scatter(path, means, labels=None, title=None):
    """Saves a scatter plot of 2-D posterior means, coloured by label."""
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
    )
    if has_labels:
        figure.colorbar(points, ax=axes, label="label")
    axes.set_xlabel("z[0] (posterior mean)")
    axes.set_ylabel("z[1] (posterior mean)")
    if title:
        axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
