"""DINO class-token cross-entropy (official `DINOLoss.forward`, `dinov2/loss/dino_clstoken_loss.py`).

Pure function, float32 inside. Returns the SUM over all (student crop, teacher crop) pairs of the per-pair
batch mean; the caller divides by the number of terms, as the official `SSLMetaArch` does.
"""
import jax
import jax.numpy as jnp

# The official DINOLoss and iBOTPatchLoss both default to 0.1 and the official configs never set it.
STUDENT_TEMP = 0.1


def dino_loss(student_logits: jax.Array, teacher_probs: jax.Array, student_temp: float = STUDENT_TEMP) -> jax.Array:
    """-sum_s sum_t mean_b sum_k t[b,k] * log_softmax(s[b]/temp)[k].

    Args:
      student_logits: `[S, B, K]` head outputs of S student crops (crop-major).
      teacher_probs: `[T, B, K]` teacher targets (already centered/sharpened) of T teacher crops.
    Returns:
      scalar float32, the sum over the S*T pairs of the per-pair mean over B.
    """
    if student_logits.ndim != 3 or teacher_probs.ndim != 3:
        raise ValueError(
            f"dino_loss expects [S,B,K] student logits and [T,B,K] teacher probs, got "
            f"{student_logits.shape} and {teacher_probs.shape}; reshape crop-major stacks with x.reshape(n_crops, B, K)."
        )
    if student_logits.shape[1:] != teacher_probs.shape[1:]:
        raise ValueError(f"batch/prototype dims differ: {student_logits.shape} vs {teacher_probs.shape}")
    lsm = jax.nn.log_softmax(student_logits.astype(jnp.float32) / student_temp, axis=-1)  # [S,B,K]
    t = teacher_probs.astype(jnp.float32)
    # sum_s sum_t <t, lsm_s> = <sum_t t, lsm_s>: one contraction instead of S*T.
    per_row = jnp.einsum("bk,sbk->sb", t.sum(0), lsm)
    return -per_row.mean(axis=1).sum()
