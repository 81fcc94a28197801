"""Sample pictures: image grids and 2-D scatter plots, written atomically."""

import math

import numpy as np

from keras_pd.checkpoint import atomic_write


def _check_nrow(nrow):
    if isinstance(nrow, bool) or int(nrow) != nrow or nrow < 1:
        raise ValueError(f"nrow must be a positive integer, got {nrow!r}")
    return int(nrow)


def image_grid(samples, nrow: int | None = None, pad_value: int = 0) -> np.ndarray:
    """Tiles images into one grid picture.

    Args:
        samples: ``[N, H, W, C]`` (C 1 or 3) or ``[N, H, W]`` values in
            [-1, 1]; values outside are clipped, NaN becomes mid-grey.
        nrow: Images per row; ``ceil(sqrt(N))`` when None.
        pad_value: uint8 value of the 1-pixel padding around every image.

    Returns:
        uint8 array ``[rows*(H+1)+1, nrow*(W+1)+1, C]``.

    Raises:
        ValueError: Bad shape or nrow.
    """
    s = np.asarray(samples, dtype=np.float32)
    if s.ndim == 3:
        s = s[..., None]
    if s.ndim != 4 or s.shape[0] == 0 or s.shape[-1] not in (1, 3):
        raise ValueError(f"samples must be [N, H, W, C] with N > 0 and C in (1, 3), got shape {np.shape(samples)}")
    n, h, w, c = s.shape
    ncol = math.ceil(math.sqrt(n)) if nrow is None else _check_nrow(nrow)
    ncol = min(ncol, n)
    rows = math.ceil(n / ncol)
    pixels = np.clip(np.round((np.nan_to_num(s, nan=0.0) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    grid = np.full((rows * (h + 1) + 1, ncol * (w + 1) + 1, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        top, left = 1 + r * (h + 1), 1 + col * (w + 1)
        grid[top : top + h, left : left + w] = pixels[i]
    return grid


def _write_scatter(points: np.ndarray, path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.add_subplot()
    ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.4, linewidths=0)
    ax.set_xlim(-1.5, 1.5)
    ax.set_ylim(-1.5, 1.5)
    ax.set_aspect("equal")
    fig.savefig(path, format="png")


def save_grid_png(samples, path, nrow: int | None = None) -> None:
    """Saves samples as a PNG, atomically (temporary name, then rename).

    Images ``[N, H, W, C]`` are tiled with :func:`image_grid`; 2-D points
    ``[N, 2]`` (``toy2d``) are drawn as a scatter plot.

    Args:
        samples: Images in [-1, 1] or points ``[N, 2]``.
        path: Destination ``.png`` path; its directory is created if needed.
        nrow: Images per row (images only).
    """
    s = np.asarray(samples)
    if s.ndim == 2 and s.shape[1] == 2:
        atomic_write(path, lambda tmp: _write_scatter(s.astype(np.float64), tmp))
        return
    grid = image_grid(s, nrow=nrow)
    # Small images (8x8 digits) are enlarged with nearest neighbours so a viewer shows pixels.
    scale = max(1, 256 // max(grid.shape[:2]))
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    if grid.shape[-1] == 1:
        grid = grid[..., 0]

    def write(tmp):
        from PIL import Image

        Image.fromarray(grid).save(tmp, format="PNG")

    atomic_write(path, write)
