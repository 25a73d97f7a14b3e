"""Pictures: image grids (optionally captioned) and the loss curve, saved as PNG.

Every file is written atomically (see `minidiff.machinery.atomic`), so an
interrupted run never leaves a broken PNG behind.
"""

import io
import textwrap

import numpy as np
from matplotlib.figure import Figure  # figures without pyplot's global state: no display needed
from PIL import Image

from minidiff.corruption import to_uint8
from minidiff.machinery.atomic import atomic_write


def _as_uint8(images) -> np.ndarray:
    images = np.asarray(images)
    return images if images.dtype == np.uint8 else to_uint8(images)


def image_grid(images, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """(N, H, W, 3) images (uint8, or floats in [-1, 1]) -> one (rows*H, columns*W, 3) uint8 grid."""
    images = _as_uint8(images)
    n, h, w, c = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = image
    return grid


def save_png(array_uint8, path, scale: int = 1):
    """Save an (H, W, 3) uint8 array as PNG, enlarged `scale` times with sharp pixels."""
    image = Image.fromarray(array_uint8)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    return atomic_write(path, lambda f: image.save(f, format="PNG"))


def save_figure(figure, path):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))


def captioned_grid(images, captions, columns: int | None = None, title: str | None = None):
    """A matplotlib figure: one row of samples per caption, the caption on the left.

    images: (len(captions) * per_caption, H, W, 3), grouped by caption.
    """
    images = _as_uint8(images)
    per_caption = len(images) // len(captions)
    columns = columns or per_caption
    figure = Figure(figsize=(1.0 + 0.75 * columns + 3.2, 0.85 * len(captions) + 0.4))
    axes = figure.subplots(len(captions), 1, squeeze=False)
    for row, caption in enumerate(captions):
        ax = axes[row, 0]
        ax.imshow(image_grid(images[row * per_caption : (row + 1) * per_caption], columns=columns), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel("\n".join(textwrap.wrap(caption, 38)), rotation=0, ha="right", va="center", fontsize=7)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def loss_curve(losses, smoothing: int = 25):
    """A figure of the training loss per step, raw and as a running mean."""
    losses = np.asarray(losses, np.float64).reshape(-1, 2)
    figure = Figure(figsize=(6, 3.2))
    ax = figure.subplots()
    ax.plot(losses[:, 0], losses[:, 1], alpha=0.3, lw=0.8, label="per step")
    if len(losses) >= smoothing:
        kernel = np.ones(smoothing) / smoothing
        ax.plot(losses[smoothing - 1 :, 0], np.convolve(losses[:, 1], kernel, mode="valid"), lw=1.5, label=f"mean of {smoothing}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    figure.tight_layout()
    return figure


def save_loss_curve(losses, path):
    return save_figure(loss_curve(losses), path)
