"""crops.photometric_on_device end to end at step level: loader (uint8 + params) -> the trainer's step."""
import jax
import numpy as np

from dinov2_jax.data.pipeline import make_train_loader
from dinov2_jax.train.train_step import create_train_state
from dinov2_jax.train.trainer import default_components
from test_train_step import TINY, tiny_cfg

HP = {"lr": np.float32(1e-3), "wd": np.float32(0.04), "mom": np.float32(0.99), "teacher_temp": np.float32(0.04),
      "last_layer_lr": np.float32(1e-3)}


def _cfg(on_device):
    cfg = tiny_cfg()
    cfg.student.update(TINY)  # arch overrides read by the trainer's components
    cfg.train.dataset_path = "demo"
    cfg.crops.photometric_on_device = on_device
    return cfg


def _first_step(on_device):
    cfg = _cfg(on_device)
    B = cfg.train.batch_size_per_gpu
    batch = next(make_train_loader(cfg, process_index=0, process_count=1, batch_size_per_process=B, num_workers=0))
    state = create_train_state(cfg, jax.random.key(0), arch_overrides=TINY)
    step = default_components().make_train_step(cfg)
    _, metrics = step(state, jax.device_put(batch), HP)
    return batch, jax.device_get(metrics)


def test_flagged_batch_runs_through_the_step_like_the_host_batch():
    batch, m_dev = _first_step(True)
    assert batch["collated_global_crops"].dtype == np.uint8  # the step got uint8 crops + params
    _, m_host = _first_step(False)
    assert np.isfinite(m_dev["loss"])
    # same images, geometry, params and masks; crops equal up to rare 1-level blur rounding
    for k in ("loss", "dino_local_crops_loss", "dino_global_crops_loss", "koleo_loss", "ibot_loss"):
        np.testing.assert_allclose(m_dev[k], m_host[k], rtol=1e-3, err_msg=k)
