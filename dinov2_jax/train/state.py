"""The training state: one pytree holding everything a train step reads and writes.

    student       {"backbone": params, "dino_head": params[, "ibot_head": params]}  (pure dicts of arrays, fp32)
    teacher       same structure (EMA of the student; starts identical), or a frozen pretrained teacher
    opt_state     Adam moments of the student params (optax.ScaleByAdamState)
    dino_center   CenterState for the DINO softmax centering (center + pending batch center)
    ibot_center   CenterState for the iBOT softmax centering
    step          int32 [] optimizer steps done
    rng           PRNG key; split every step for stochastic depth
Parameters are kept as nested dicts of arrays (`nnx.State.to_pure_dict()`); the NNX module structure
(graphdef) lives in the step closure, so the state is a plain pytree for jit, sharding and orbax.
"""
from typing import Any, Dict

import flax.struct
import jax

from dinov2_jax.losses.centering import CenterState


@flax.struct.dataclass
class TrainState:
    student: Dict[str, Any]
    teacher: Dict[str, Any]
    opt_state: Any
    dino_center: CenterState
    ibot_center: CenterState
    step: jax.Array
    rng: jax.Array
