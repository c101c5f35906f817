"""EMA teacher update: theta_t <- m * theta_t + (1 - m) * theta_s, after the optimizer step.

Official counterpart: `SSLMetaArch.update_teacher` in `dinov2/train/ssl_meta_arch.py`.
"""
import jax


def ema_update(teacher, student, momentum):
    """Pure EMA over matching pytrees (all parameters, as the official `update_teacher`)."""
    return jax.tree.map(lambda t, s: (t * momentum + s * (1.0 - momentum)).astype(t.dtype), teacher, student)
