"""Patch embedding: non-overlapping p x p convolution, NHWC in, tokens out."""
import jax
import jax.numpy as jnp
from flax import nnx

from dinov2_jax.models.layers.init import torch_default_uniform


def check_image_size(height: int, width: int, patch_size: int) -> None:
    """Raise a ValueError naming the nearest valid sizes when H or W is not a multiple of the patch."""
    bad = [(name, s) for name, s in (("height", height), ("width", width)) if s % patch_size]
    if not bad:
        return
    parts = []
    for name, s in bad:
        lo = (s // patch_size) * patch_size
        hi = lo + patch_size
        parts.append(f"{name} {s} (nearest valid: {lo} or {hi})" if lo > 0 else f"{name} {s} (smallest valid: {hi})")
    raise ValueError(
        f"Image size {height}x{width} is not a multiple of the patch size {patch_size}: " + ", ".join(parts)
        + ". Resize, crop or pad the image to a multiple of the patch size (the official model asserts here too)."
    )


class PatchEmbed(nnx.Module):
    """[B, H, W, C] -> [B, (H/p)*(W/p), D], row-major patch order. Params `proj.kernel [p,p,C,D]`, `proj.bias [D]`."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.patch_size = patch_size
        self.dtype = dtype
        # torch's default Conv2d init (kaiming_uniform a=sqrt(5) -> U(+-1/sqrt(fan_in)), same for bias);
        # the official init_weights only touches Linear layers.
        init = torch_default_uniform(in_chans * patch_size * patch_size)
        self.proj = nnx.Conv(in_chans, embed_dim, kernel_size=(patch_size, patch_size),
                             strides=(patch_size, patch_size), padding="VALID", use_bias=True,
                             kernel_init=init, bias_init=init, dtype=dtype, param_dtype=jnp.float32,
                             precision=jax.lax.Precision.HIGHEST, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, _ = x.shape
        check_image_size(h, w, self.patch_size)
        y = self.proj(x.astype(self.dtype))  # [B, h, w, D]
        return y.reshape(b, -1, y.shape[-1])
