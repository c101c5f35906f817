"""Position-embedding resampling, exact to the official `interpolate_pos_encoding` (PyTorch bicubic).

Two kernels, both separable, built here as static numpy matrices and applied with one einsum:
- offset mode (non-register models, `interpolate_offset` != 0): torch `interpolate(scale_factor=s,
  mode="bicubic", antialias=False)` with `s = (out + offset) / M`. Cubic convolution A = -0.75, 4 taps,
  out-of-range taps clamped to the edge, and the coordinate map uses the GIVEN scale:
  `src = (dst + 0.5) / s - 0.5` (not in/out).
- size mode (register models, offset 0): torch `interpolate(size=out, mode="bicubic", antialias=True)`,
  the PIL-style filter with a = -0.5, support widened by the scale when downsampling, weights
  normalised over in-range taps.
Without antialias and offset 0 the official code also uses `size=`; then the scale is in/out.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys cubic convolution kernel (float64), ATen's `cubic_convolution1/2`."""
    x = np.abs(np.asarray(x, np.float64))
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return np.where(x <= 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=256)
def bicubic_matrix(in_size: int, out_size: int, scale: float | None = None) -> np.ndarray:
    """Non-antialiased torch bicubic (align_corners=False) as a `[out, in]` matrix.

    `scale` is the scale_factor handed to torch (out/in ratio); None means `size=` was used (in/out map).
    """
    # torch (compute_scales_value): the coordinate ratio is 1/scale_factor when a scale is given, else
    # in/out. Weights are computed in float64 here (torch does so for float64 tensors; for float32 it
    # rounds them to float32, a difference of a few ulp).
    ratio = 1.0 / scale if scale is not None else in_size / out_size
    src = ratio * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5  # no clamp at 0 for cubic
    i0 = np.floor(src)
    t = src - i0
    m = np.zeros((out_size, in_size), np.float64)
    a = -0.75
    weights = [_cubic(t + 1.0, a), _cubic(t, a), _cubic(1.0 - t, a), _cubic(2.0 - t, a)]
    for tap, w in zip(range(-1, 3), weights):
        idx = np.clip(i0.astype(np.int64) + tap, 0, in_size - 1)  # edge clamp
        np.add.at(m, (np.arange(out_size), idx), w)
    return m


@functools.lru_cache(maxsize=256)
def bicubic_aa_matrix(in_size: int, out_size: int, scale_factor: float | None = None) -> np.ndarray:
    """torch bicubic with antialias=True (PIL-style, a = -0.5) as a `[out, in]` matrix.

    `scale_factor` as handed to torch (None: `size=` was used, ratio in/out).
    """
    if in_size == out_size:  # torch's separable AA kernel skips a dimension whose size is unchanged
        return np.eye(in_size)
    scale = 1.0 / scale_factor if scale_factor is not None else in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    m = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        j = np.arange(xmin, xmax)
        w = _cubic((j - center + 0.5) * invscale, -0.5)
        total = w.sum()
        if total != 0.0:
            w = w / total
        m[i, xmin:xmax] = w
    return m


def resample_matrices(grid: int, out_h: int, out_w: int, *, antialias: bool, offset: float):
    """Row and column matrices `[out_h, grid]`, `[out_w, grid]` the official code would apply."""
    if offset:
        sh, sw = (out_h + offset) / grid, (out_w + offset) / grid
        # torch derives the output size as floor(in * scale); the official code asserts it equals out.
        if math.floor(grid * sh) != out_h or math.floor(grid * sw) != out_w:
            raise ValueError(f"interpolate_offset {offset} gives an output grid different from ({out_h}, {out_w}).")
        if antialias:
            return bicubic_aa_matrix(grid, out_h, sh), bicubic_aa_matrix(grid, out_w, sw)
        return bicubic_matrix(grid, out_h, sh), bicubic_matrix(grid, out_w, sw)
    if antialias:
        return bicubic_aa_matrix(grid, out_h), bicubic_aa_matrix(grid, out_w)
    return bicubic_matrix(grid, out_h), bicubic_matrix(grid, out_w)


def interpolate_pos_embed(pos_embed: jax.Array, out_h: int, out_w: int, *, antialias: bool,
                          offset: float) -> jax.Array:
    """Resample a `[1, 1+M*M, D]` position embedding to `[1, 1+out_h*out_w, D]` (cls slot kept).

    Returns the input unchanged when the grid already is `M x M` (official shortcut). Float32 math.
    """
    n = pos_embed.shape[1] - 1
    grid = int(math.isqrt(n))
    if grid * grid != n:
        raise ValueError(f"pos_embed has {n} patch positions, not a square grid.")
    if (out_h, out_w) == (grid, grid):
        return pos_embed
    mh, mw = resample_matrices(grid, out_h, out_w, antialias=antialias, offset=offset)
    pe = pos_embed[0, 1:].astype(jnp.float32).reshape(grid, grid, -1)
    out = jnp.einsum("hm,wn,mnd->hwd", jnp.asarray(mh, jnp.float32), jnp.asarray(mw, jnp.float32), pe,
                     precision=jax.lax.Precision.HIGHEST)
    out = out.reshape(1, out_h * out_w, -1)
    return jnp.concatenate([pos_embed[:, :1].astype(jnp.float32), out], axis=1).astype(pos_embed.dtype)
