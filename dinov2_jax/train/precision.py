"""Precision policy (`cfg.compute_precision`), in the spirit of the official `compute_precision`.

What runs in which dtype:
- parameters, Adam moments, the EMA teacher, the centers: float32, always;
- softmax, centering, Sinkhorn-Knopp, every loss: float32, always;
- the forward and backward of the backbone and the heads (matmuls, activations): `compute_dtype`.
  The cross-device reduction of a matmul kernel's gradient happens where GSPMD forms it, on the
  backward dot's output, so it runs in the compute dtype too (bfloat16: half the bytes of float32);
  the other gradients (norms, biases, tokens, the weight-normed last layer) are reduced in float32.
  XLA:CPU promotes bfloat16 all-reduces to float32 late in compilation; GPU and TPU keep them.

`compute_dtype`:
- "auto" (the ImageNet configs): bfloat16 on GPU and TPU, float32 on CPU. On a GPU, bfloat16 is also
  what makes `student.attn_impl="auto"` pick cuDNN flash attention (it has no float32 kernel);
- "float32" | "bfloat16": as named, on every platform;
- "float16" is refused: the official code trains in fp16 with a dynamic gradient scaler, which this
  port does not implement; bfloat16 has float32's exponent range and needs no scaling.

"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from dinov2_jax.models.layers.attention import resolve_attn_impl
from dinov2_jax.models.vision_transformer import DTYPES

COMPUTE_DTYPES = ("auto", "float32", "bfloat16")


def _platform(platform: str | None) -> str:
    return jax.default_backend() if platform is None else platform


def resolve_compute_dtype(name: str, platform: str | None = None):
    """`compute_precision.compute_dtype` -> the jnp dtype the forward runs in on `platform`
    ("cpu" | "gpu" | "tpu"; default: JAX's default backend)."""
    name = str(name)
    if name == "float16":
        raise ValueError("compute_precision.compute_dtype='float16' needs dynamic loss scaling (the official "
                         "grad_scaler), which dinov2_jax does not implement; use 'bfloat16' (same speed on "
                         "A100/H100/TPU, float32 exponent range, no scaling) or 'auto'.")
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute_precision.compute_dtype={name!r}; use one of {COMPUTE_DTYPES}")
    if name == "auto":
        return jnp.float32 if _platform(platform) == "cpu" else jnp.bfloat16
    return DTYPES[name]


@dataclasses.dataclass(frozen=True)
class Precision:
    compute_dtype: Any
    attn_impl: str

    def describe(self) -> str:
        return (f"compute {jnp.dtype(self.compute_dtype).name}, attention {self.attn_impl}; parameters, "
                "optimizer state, EMA, centers and losses float32")


def resolve_precision(cfg, platform: str | None = None) -> Precision:
    """The dtypes and attention backend the train step will use for `cfg` on `platform`."""
    compute = resolve_compute_dtype(cfg.compute_precision.compute_dtype, platform)
    attn = resolve_attn_impl(cfg.student.attn_impl, compute, platform=_platform(platform))
    return Precision(compute, attn)
