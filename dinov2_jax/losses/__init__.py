"""DINOv2 objective as pure functions (float32 inside)."""
from dinov2_jax.losses.centering import (
    CenterState,
    apply_pending,
    dino_batch_center,
    ibot_batch_center,
    init_center_state,
    set_pending,
    sinkhorn_knopp,
    softmax_centered,
)
from dinov2_jax.losses.dino_loss import dino_loss
from dinov2_jax.losses.ibot_loss import ibot_masked_loss
from dinov2_jax.losses.koleo_loss import koleo_loss

__all__ = [
    "CenterState", "apply_pending", "dino_batch_center", "ibot_batch_center", "init_center_state", "set_pending",
    "sinkhorn_knopp", "softmax_centered", "dino_loss", "ibot_masked_loss", "koleo_loss",
]
