"""Teacher target normalisation: softmax centering with a lagged EMA center, and Sinkhorn-Knopp
(official `softmax_center_teacher` / `sinkhorn_knopp_teacher` in `dinov2/loss/dino_clstoken_loss.py` and
`dinov2/loss/ibot_patch_loss.py`).

The official modules keep the center in a buffer and apply the previous step's batch center lazily at the
next call. Here that hidden state is explicit: `CenterState(center, pending, has_pending)`.
A step does
    state = apply_pending(state)                 # official apply_center_update()
    probs = softmax_centered(t, state, temp)     # uses center incl. batches up to k-1
    state = set_pending(state, batch_center)     # official update_center(t): applied next step
All functions are pure and work in float32.
"""
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

CENTER_MOMENTUM = 0.9  # official default; not in the config
SINKHORN_ITERS = 3


class CenterState(NamedTuple):
    """center `[K]`, pending batch center `[K]` (already normalised), has_pending `[]` float32 (0 or 1)."""

    center: jax.Array
    pending: jax.Array
    has_pending: jax.Array


def init_center_state(k: int) -> CenterState:
    """Zero center, nothing pending (official buffer init: zeros, `updated=True`)."""
    return CenterState(jnp.zeros((k,), jnp.float32), jnp.zeros((k,), jnp.float32), jnp.zeros((), jnp.float32))


def apply_pending(state: CenterState, momentum: float = CENTER_MOMENTUM) -> CenterState:
    """center <- m*center + (1-m)*pending if an update is pending; then nothing is pending."""
    new = state.center * momentum + state.pending * (1.0 - momentum)
    center = jnp.where(state.has_pending > 0, new, state.center)
    return CenterState(center, jnp.zeros_like(state.pending), jnp.zeros_like(state.has_pending))


def set_pending(state: CenterState, batch_center: jax.Array) -> CenterState:
    """Record this step's batch center `[K]`, to be applied at the next `apply_pending`."""
    return CenterState(state.center, batch_center.astype(jnp.float32), jnp.ones((), jnp.float32))


def softmax_centered(teacher_logits: jax.Array, center: jax.Array, teacher_temp) -> jax.Array:
    """softmax((t - center)/temp) over the last axis. teacher_logits `[..., K]`, center `[K]`."""
    return jax.nn.softmax((teacher_logits.astype(jnp.float32) - center) / teacher_temp, axis=-1)


def dino_batch_center(teacher_logits: jax.Array) -> jax.Array:
    """Official DINO center update: sum over all 2B(*world) teacher rows / their count. `[N, K]` -> `[K]`."""
    return jnp.mean(teacher_logits.astype(jnp.float32), axis=0)


def ibot_batch_center(
    teacher_logits: jax.Array,
    valid: jax.Array,
    group_ids: Optional[jax.Array] = None,
    num_groups: int = 1,
) -> jax.Array:
    """Official iBOT center update: mean over the masked tokens of each GPU, then mean over GPUs.

    teacher_logits `[U, K]` padded buffer, valid `[U]` bool. With data parallelism pass `group_ids` `[U]`
    (the data shard of each row) and `num_groups`: each shard's mean is taken over its own valid tokens,
    and the shards are averaged with equal weight (not weighted by token counts), as the official
    all-reduce of per-GPU means. A shard without masked tokens (possible when one host collates the masks
    of several devices) is left out of the average; officially every GPU collates its own masks, so each
    has some, and an empty one would turn the center into NaN.
    """
    t = teacher_logits.astype(jnp.float32)
    w = valid.astype(jnp.float32)
    if group_ids is None:
        if num_groups != 1:
            raise ValueError("ibot_batch_center: num_groups > 1 needs group_ids (the shard of each row)")
        return jnp.sum(t * w[:, None], axis=0) / jnp.sum(w)
    sums = jax.ops.segment_sum(t * w[:, None], group_ids, num_segments=num_groups)  # [G, K]
    counts = jax.ops.segment_sum(w, group_ids, num_segments=num_groups)  # [G]
    present = counts > 0
    means = sums / jnp.maximum(counts, 1.0)[:, None]
    return jnp.sum(jnp.where(present[:, None], means, 0.0), axis=0) / jnp.maximum(jnp.sum(present), 1)


def sinkhorn_knopp(
    teacher_logits: jax.Array,
    teacher_temp,
    valid: Optional[jax.Array] = None,
    n_iterations: int = SINKHORN_ITERS,
) -> jax.Array:
    """Sinkhorn-Knopp teacher targets, `[N, K]` -> `[N, K]` with each valid row summing to 1.

    As the official code: Q = exp(t/temp) without max-subtraction, divided by its total sum, then
    `n_iterations` x (prototype sums -> /K, sample sums -> /B), finally *B. Sums run over the whole
    (global) array, which is what the official all-reduces compute. `valid` `[N]` bool excludes padded
    rows from every sum and from B (B = number of valid rows, the official all-reduced n_masked_patches);
    padded output rows are 0.
    """
    q = jnp.exp(teacher_logits.astype(jnp.float32) / teacher_temp)  # [N, K] (= official Q^T)
    k = q.shape[1]
    if valid is None:
        b = jnp.asarray(q.shape[0], jnp.float32)
    else:
        q = jnp.where(valid[:, None], q, 0.0)
        b = jnp.sum(valid.astype(jnp.float32))
    q = q / jnp.sum(q)
    for _ in range(n_iterations):
        q = q / jnp.sum(q, axis=0, keepdims=True)  # per prototype
        q = q / k
        col = jnp.sum(q, axis=1, keepdims=True)  # per sample
        # padded rows are all-zero: divide them by 1 instead of 0.
        q = q / (col if valid is None else jnp.where(valid[:, None], col, 1.0))
        q = q / b
    return q * b
