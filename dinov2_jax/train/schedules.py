"""Per-iteration hyperparameter schedules (official `build_schedulers` in `dinov2/train/train.py`
and `CosineScheduler` in `dinov2/utils/utils.py`), as host-side numpy arrays.

`CosineSchedule` reproduces the official `CosineScheduler`: `freeze_iters` zeros, then a linspace warmup
that INCLUDES its endpoint (so `base` appears twice), then a cosine over n = total - warmup - freeze
values `final + (base-final)/2 * (1 + cos(pi*i/n))`, i = 0..n-1. Indexing at or past `total_iters` gives
`final`. An "epoch" is `train.OFFICIAL_EPOCH_LENGTH` iterations, independent of the dataset size.
The values are read on the host each step and passed to the jitted step as float32 scalars
(`hparams_at`), so changing them never recompiles.
"""
from typing import Dict, Optional

import ml_collections
import numpy as np

SCHEDULE_KEYS = ("lr", "wd", "mom", "teacher_temp", "last_layer_lr")


class CosineSchedule:
    """Official cosine schedule with linear warmup. `schedule` is a float64 array of `total_iters` values."""

    def __init__(self, base_value: float, final_value: float, total_iters: int, warmup_iters: int = 0,
                 start_warmup_value: float = 0.0, freeze_iters: int = 0):
        if min(total_iters, warmup_iters, freeze_iters) < 0 or warmup_iters + freeze_iters > total_iters:
            raise ValueError(
                f"CosineSchedule: need 0 <= warmup_iters ({warmup_iters}) + freeze_iters ({freeze_iters}) "
                f"<= total_iters ({total_iters}); check optim.epochs / warmup_epochs.")
        self.final_value = float(final_value)
        self.total_iters = int(total_iters)
        n = total_iters - warmup_iters - freeze_iters
        i = np.arange(n)
        cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * i / max(n, 1)))
        self.schedule = np.concatenate([
            np.zeros(freeze_iters),
            np.linspace(start_warmup_value, base_value, warmup_iters),
            cosine,
        ])

    def __getitem__(self, it: int) -> float:
        if it < 0:
            raise IndexError(f"iteration must be >= 0, got {it}")
        return self.final_value if it >= self.total_iters else float(self.schedule[it])

    def __len__(self) -> int:
        return self.total_iters

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.schedule, dtype=dtype)


def build_schedules(cfg: ml_collections.ConfigDict, world_size: Optional[int] = None) -> Dict[str, CosineSchedule]:
    """The five official schedules, keyed `lr, wd, mom, teacher_temp, last_layer_lr`.

    The peak lr is `cfg.optim.lr` when it is set (> 0, i.e. the config was finalized); otherwise pass
    `world_size` (number of data-parallel devices) and `optim.scaling_rule` is applied (e.g. sqrt_wrt_1024:
    lr = base_lr * sqrt(batch_size_per_gpu * world_size / 1024)).
    `teacher.teacher_temp_schedule`: "per_iteration" (DINOv2: linear warmup over iterations) or
    "per_epoch" (DINO v1 `DINOLoss`: linspace over epochs, constant within an epoch).
    """
    from dinov2_jax.config import scaled_lr  # the one implementation of the scaling rule

    L = int(cfg.train.OFFICIAL_EPOCH_LENGTH)
    o, t = cfg.optim, cfg.teacher
    if world_size is not None:
        peak_lr = scaled_lr(cfg, world_size)
    elif o.lr > 0:
        peak_lr = float(o.lr)
    else:
        raise ValueError("build_schedules: optim.lr is 0 (config not finalized); pass world_size=jax.device_count() "
                         "or call dinov2_jax.config.finalize_config(cfg, world_size) first.")
    total = int(o.epochs) * L
    lr = dict(base_value=peak_lr, final_value=o.min_lr, total_iters=total, warmup_iters=int(o.warmup_epochs) * L,
              start_warmup_value=0.0)
    tt_iters = int(t.warmup_teacher_temp_epochs) * L
    temp = CosineSchedule(t.teacher_temp, t.teacher_temp, tt_iters, warmup_iters=tt_iters,
                          start_warmup_value=t.warmup_teacher_temp)
    mode = t.get("teacher_temp_schedule", "per_iteration")
    if mode == "per_epoch":
        per_epoch = np.linspace(t.warmup_teacher_temp, t.teacher_temp, int(t.warmup_teacher_temp_epochs))
        temp.schedule = np.repeat(per_epoch, L)
    elif mode != "per_iteration":
        raise ValueError(f"teacher.teacher_temp_schedule={mode!r}; use 'per_iteration' (DINOv2) or "
                         "'per_epoch' (DINO v1)")
    out = {
        "lr": CosineSchedule(**lr),
        "wd": CosineSchedule(o.weight_decay, o.weight_decay_end, total),
        "mom": CosineSchedule(t.momentum_teacher, t.final_momentum_teacher, total),
        "teacher_temp": temp,
        "last_layer_lr": CosineSchedule(**lr),
    }
    # the head's last layer is frozen for the first freeze_last_layer_epochs (official "mimicking" line)
    out["last_layer_lr"].schedule[: int(o.freeze_last_layer_epochs) * L] = 0.0
    return out


def hparams_at(schedules: Dict[str, CosineSchedule], it: int) -> Dict[str, np.ndarray]:
    """Values at iteration `it` as float32 numpy scalars (the `hparams` argument of the train step)."""
    return {k: np.float32(schedules[k][it]) for k in SCHEDULE_KEYS}
