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
