"""KoLeo (Kozachenko-Leonenko) entropy regulariser (official `dinov2/loss/koleo_loss.py`), float32.

The official loss runs per GPU on the local batch of one crop; with data parallelism the gradient is
averaged over GPUs, so the effective loss is the mean of the per-shard losses. `num_groups` reproduces
that on a global batch: the rows are split into `num_groups` contiguous shards.
"""
import jax
import jax.numpy as jnp

from dinov2_jax.models.layers.norm import l2_normalize

EPS = 1e-8


def _koleo_single(x: jax.Array) -> jax.Array:
    """x `[n, D]` -> scalar."""
    n = x.shape[0]
    x = l2_normalize(x, EPS)  # official F.normalize(eps=1e-8)
    dots = x @ x.T
    dots = jnp.where(jnp.eye(n, dtype=bool), -1.0, dots)  # diagonal -1, exactly as the official trick
    # The neighbour index is a discrete choice: no gradient flows through it (as torch.max indices).
    nn_idx = jnp.argmax(jax.lax.stop_gradient(dots), axis=1)
    # nn.PairwiseDistance(p=2, eps=1e-8) adds eps to the difference vector before the norm.
    diff = x - x[nn_idx] + EPS
    d = jnp.sqrt(jnp.sum(diff * diff, axis=-1))
    return -jnp.mean(jnp.log(d + EPS))


def koleo_loss(x: jax.Array, num_groups: int = 1) -> jax.Array:
    """KoLeo of `x` `[B, D]` (one crop's pre-head cls tokens), mean over `num_groups` contiguous shards."""
    if x.ndim != 2:
        raise ValueError(f"koleo_loss expects [B, D], got {x.shape}")
    b = x.shape[0]
    if num_groups < 1 or b % num_groups != 0 or b // num_groups < 2:
        raise ValueError(
            f"koleo_loss: batch {b} must split into num_groups={num_groups} equal shards of >= 2 rows "
            "(each shard needs a nearest neighbour); use batch_size_per_gpu >= 2."
        )
    x = x.astype(jnp.float32).reshape(num_groups, b // num_groups, x.shape[1])
    return jnp.mean(jax.vmap(_koleo_single)(x))
