import math

import numpy as np
import pytest

from configs.ssl_default import get_config
from dinov2_jax.train.schedules import CosineSchedule, build_schedules, hparams_at


def small_cfg():
    c = get_config()
    c.train.OFFICIAL_EPOCH_LENGTH = 10
    c.train.batch_size_per_gpu = 12
    c.optim.epochs, c.optim.warmup_epochs = 7, 2
    c.teacher.warmup_teacher_temp_epochs = 3
    return c


def test_matches_official(optim_golden):
    # the fixture used lr = 0.004*sqrt(48/1024): 12 per device x 4 devices
    sch = build_schedules(small_cfg(), world_size=4)
    for k in ("lr", "wd", "mom", "teacher_temp", "last_layer_lr"):
        got = np.array([sch[k][int(i)] for i in optim_golden["sched_iters"]])
        np.testing.assert_allclose(got, optim_golden[f"sched_{k}"], rtol=1e-12, atol=0, err_msg=k)


def test_finalized_lr_is_used():
    c = small_cfg()
    c.optim.lr = 0.123
    assert build_schedules(c)["lr"][20] == pytest.approx(0.123)
    c.optim.lr = 0.0
    with pytest.raises(ValueError, match="world_size"):
        build_schedules(c)


def test_hand_values():
    s = CosineSchedule(1.0, 0.0, total_iters=10, warmup_iters=4, start_warmup_value=0.5, freeze_iters=2)
    assert list(s.schedule[:2]) == [0, 0]
    np.testing.assert_allclose(s.schedule[2:6], [0.5, 2 / 3, 5 / 6, 1.0])  # linspace incl. endpoint
    np.testing.assert_allclose(s.schedule[6:], [0.5 * (1 + math.cos(math.pi * i / 4)) for i in range(4)])
    assert s[10] == 0.0 and s[1000] == 0.0
    assert len(s) == 10 and np.asarray(s).shape == (10,)
    with pytest.raises(ValueError, match="warmup_iters"):
        CosineSchedule(1, 0, total_iters=3, warmup_iters=4)


def test_hparams_are_float32_scalars():
    hp = hparams_at(build_schedules(small_cfg(), world_size=1), 5)
    assert set(hp) == {"lr", "wd", "mom", "teacher_temp", "last_layer_lr"}
    assert all(v.dtype == np.float32 and v.shape == () for v in hp.values())
    assert hp["last_layer_lr"] == 0.0 and hp["lr"] > 0
