"""Spatial ops shared by the dense heads, with the semantics of the torch calls the official heads make."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """[B, h, w, C] -> [B, H, W, C], torch `F.interpolate(mode="bilinear", align_corners=False)` (no antialias)."""
    b, _, _, c = x.shape
    return jax.image.resize(x, (b, size[0], size[1], c), "bilinear", antialias=False)


def center_pad(images: jax.Array, multiple: int) -> jax.Array:
    """[B, H, W, C] zero-padded to multiples of `multiple`, the extra split left/right (left = floor), as the
    official `CenterPadding` module (`dinov2/hub/utils.py`) that the depthers and segmenters put before the backbone."""
    _, h, w, _ = images.shape
    ph, pw = -h % multiple, -w % multiple
    return jnp.pad(images, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))


def _aligned_weights(n_in: int, n_out: int) -> jnp.ndarray:
    """[n_out, n_in] linear-interpolation matrix of torch's align_corners=True: output i samples the input at
    i (n_in - 1) / (n_out - 1)."""
    src = jnp.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    lo = jnp.clip(jnp.floor(src).astype(jnp.int32), 0, n_in - 1)
    hi = jnp.minimum(lo + 1, n_in - 1)
    frac = src - lo
    return jax.nn.one_hot(lo, n_in) * (1 - frac)[:, None] + jax.nn.one_hot(hi, n_in) * frac[:, None]


def resize_bilinear_aligned(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """[B, h, w, C] -> [B, H, W, C], torch `F.interpolate(mode="bilinear", align_corners=True)` (used by DPT)."""
    wh, ww = _aligned_weights(x.shape[1], size[0]), _aligned_weights(x.shape[2], size[1])
    return jnp.einsum("Hh,Ww,bhwc->bHWc", wh.astype(x.dtype), ww.astype(x.dtype), x, precision="highest")
