"""Initialisers reproducing the official DINOv2 / PyTorch defaults."""
import math

import jax
import jax.numpy as jnp


def trunc_normal(std: float = 0.02, lower: float = -2.0, upper: float = 2.0):
    """torch `trunc_normal_(std=std, a=lower, b=upper)`: N(0, std) cut at ABSOLUTE bounds.

    With std 0.02 and bounds +-2 the cut is 100 std away, i.e. effectively a plain normal (as in torch).
    """

    def init(key, shape, dtype=jnp.float32):
        return std * jax.random.truncated_normal(key, lower / std, upper / std, shape, dtype)

    return init


def normal(std: float):
    def init(key, shape, dtype=jnp.float32):
        return std * jax.random.normal(key, shape, dtype)

    return init


def torch_default_uniform(fan_in: int):
    """torch default for Conv/Linear: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)); same bound for bias."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init
