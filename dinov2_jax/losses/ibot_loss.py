"""iBOT masked-patch cross-entropy on the fixed-size padded buffer (official `iBOTPatchLoss.forward_masked`,
`dinov2/loss/ibot_patch_loss.py`).

The official code gathers the masked tokens of all global crops into a buffer of `upperbound` rows, of which
the first `n_masked` are valid. Each valid token carries `masks_weight = 1/n_i` (n_i = masked tokens of its
image); the sum is divided by the number of global-crop images 2B (masked or not).
"""
import jax
import jax.numpy as jnp

from dinov2_jax.losses.dino_loss import STUDENT_TEMP


def ibot_masked_loss(
    student_logits: jax.Array,
    teacher_probs: jax.Array,
    masks_weight: jax.Array,
    valid: jax.Array,
    n_images: int,
    student_temp: float = STUDENT_TEMP,
) -> jax.Array:
    """-(1/n_images) * sum_{valid r} w_r * sum_k t[r,k] log_softmax(s[r]/temp)[k].

    Args:
      student_logits: `[U, K]` student head outputs of the padded masked-token buffer (U = upperbound).
      teacher_probs: `[U, K]` teacher targets for the same rows (padded rows may hold anything finite).
      masks_weight: `[U]` 1/n_i per valid row (padding ignored).
      valid: `[U]` bool, the real (not padding) rows; `dinov2_jax.padding.valid_rows(U, n_masked)` for one prefix-padded
        buffer, or the concatenation of such masks for the per-device buffers of a batch.
      n_images: number of global-crop images 2B (static), the official `student_masks_flat.shape[0]`.
    Returns: scalar float32.
    """
    if student_logits.shape != teacher_probs.shape or student_logits.ndim != 2:
        raise ValueError(f"expected matching [U,K] arrays, got {student_logits.shape} and {teacher_probs.shape}")
    if masks_weight.shape != student_logits.shape[:1]:
        raise ValueError(f"masks_weight must be [U]={student_logits.shape[:1]}, got {masks_weight.shape}")
    if valid.shape != masks_weight.shape:
        raise ValueError(f"valid must be [U]={masks_weight.shape}, got {valid.shape}")
    lsm = jax.nn.log_softmax(student_logits.astype(jnp.float32) / student_temp, axis=-1)
    per_token = jnp.sum(teacher_probs.astype(jnp.float32) * lsm, axis=-1)  # [U]
    # where(), not multiply: a padded row must not leak NaN/inf into the sum.
    w = jnp.where(valid, masks_weight.astype(jnp.float32), 0.0)
    return -jnp.sum(jnp.where(valid, per_token * w, 0.0)) / n_images
