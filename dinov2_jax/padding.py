"""Fixed-size buffers with a valid prefix: the one padding convention of the train step, the losses, the
k-NN index, feature extraction and the Pallas attention kernel.

A jitted function compiles once per input shape, so variable-length data (the masked patch tokens of a
batch, the last incomplete batch of a folder, a train set that is not a whole number of chunks) is padded
to a fixed number of rows; the first `n` rows are real and the rest are masked out or cut off.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def valid_rows(size: int, n) -> jax.Array:
    """Bool mask, True for the first `n` of `size` rows: `[size]` for a scalar `n`, `[..., size]` for an
    array of counts `n [...]` (one prefix per group). Traceable (`n` may be a traced array)."""
    return jnp.arange(size) < jnp.asarray(n)[..., None]


def pad_rows(x, size: int, fill=0) -> np.ndarray:
    """numpy `x [n, ...]` -> `[size, ...]`: rows n..size-1 set to `fill`. Error if n > size."""
    x = np.asarray(x)
    n = x.shape[0]
    if n > size:
        raise ValueError(f"cannot pad {n} rows to {size}")
    if n == size:
        return x
    return np.concatenate([x, np.full((size - n,) + x.shape[1:], fill, x.dtype)])
