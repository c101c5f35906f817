"""Config files, overrides, the unknown-key error and the LR scaling rule (dinov2_jax/config.py)."""
import json
import math
import os
import subprocess
import sys

import pytest

from dinov2_jax import config as config_lib

ROOT = os.path.join(os.path.dirname(__file__), "..")
CONFIGS = os.path.join(ROOT, "configs")


def load(name, overrides=()):
    return config_lib.load_config(os.path.join(CONFIGS, name), overrides)


def test_overrides_are_typed():
    cfg = load("ssl_default.py", ["optim.base_lr=0.002", "train.output_dir=/tmp/x", "train.batch_size_per_gpu=8",
                                  "crops.global_crops_scale=(0.4, 1.0)", "ibot.separate_head=True"])
    assert cfg.optim.base_lr == 0.002 and cfg.train.output_dir == "/tmp/x"
    assert cfg.train.batch_size_per_gpu == 8 and cfg.crops.global_crops_scale == (0.4, 1.0)
    assert cfg.ibot.separate_head is True
    with pytest.raises(TypeError, match="train.batch_size_per_gpu"):
        load("ssl_default.py", ["train.batch_size_per_gpu=abc"])


def test_unknown_key_names_key_and_close_matches():
    with pytest.raises(KeyError) as e:
        load("ssl_default.py", ["optim.base_lrr=0.1"])
    msg = str(e.value)
    assert "'optim.base_lrr'" in msg and "optim.base_lr" in msg
    with pytest.raises(KeyError, match="teacher.momentum_teacher"):
        load("ssl_default.py", ["teacher.momentum=0.9"])


def test_unknown_section_and_unread_official_keys_are_clear_errors():
    with pytest.raises(KeyError, match="unknown config key 'foo.bar'"):
        load("ssl_default.py", ["foo.bar=1"])
    for key in config_lib.UNREAD_OFFICIAL_KEYS:  # official yaml keys no official code reads: left out, said so
        assert key not in config_lib.flat_keys(load("ssl_default.py"))
        with pytest.raises(KeyError, match=f"'{key}' is in the official ssl_default_config.yaml.*never reads it"):
            load("ssl_default.py", [f"{key}=1"])


def test_scaling_rule_applied_once():
    cfg = load("vitl16_short.py")
    fin = config_lib.finalize_config(cfg, world_size=32)  # 32 x 64 = 2048 images
    assert fin.optim.lr == pytest.approx(0.004 * math.sqrt(2))  # official sqrt_wrt_1024 rule (dinov2/utils/config.py): 0.004 * sqrt(2048 / 1024) = 0.005657
    assert config_lib.finalize_config(fin, world_size=32).optim.lr == pytest.approx(fin.optim.lr)
    assert cfg.optim.lr == 0.0  # the input is not modified
    l14 = config_lib.finalize_config(load("vitl14.py"), world_size=96)  # 96 x 32 = 3072
    assert l14.optim.lr == pytest.approx(2e-4 * math.sqrt(3))


def test_official_train_configs():
    s = load("vitl16_short.py")
    assert (s.student.arch, s.student.patch_size, s.train.batch_size_per_gpu) == (
        "vit_large", 16, 64)
    l14, g14 = load("vitl14.py"), load("vitg14.py")
    for c in (l14, g14):
        assert c.dino.head_n_prototypes == 131072 and c.dino.head_bottleneck_dim == 384
        assert c.ibot.separate_head and c.ibot.head_n_prototypes == 131072 and c.ibot.head_bottleneck_dim == 256
        assert c.train.centering == "sinkhorn_knopp" and c.student.ffn_layer == "swiglufused"
        assert (c.student.patch_size, c.student.drop_path_rate, c.teacher.momentum_teacher) == (14, 0.4, 0.994)
        assert (c.optim.epochs, c.optim.weight_decay_end, c.optim.base_lr, c.optim.warmup_epochs,
                c.optim.layerwise_decay, c.crops.local_crops_size) == (500, 0.2, 2e-4, 80, 1.0, 98)
        assert c.crops.global_crops_size == 224 and c.student.layerscale == 1e-5
    assert (l14.student.arch, l14.train.batch_size_per_gpu) == ("vit_large", 32)
    assert (g14.student.arch, g14.train.batch_size_per_gpu) == ("vit_giant2", 12)


def test_save_config_roundtrip(tmp_path):
    cfg = config_lib.finalize_config(load("quickstart.py"), world_size=1)
    config_lib.save_config(cfg, str(tmp_path))
    back = config_lib.config_from_json(open(tmp_path / "config.json").read())
    assert config_lib.config_diff(back, cfg) == []
    assert json.load(open(tmp_path / "config.json"))["optim"]["lr"] == pytest.approx(0.012 * math.sqrt(32 / 1024))
    assert "base_lr: 0.012" in open(tmp_path / "config.yaml").read()


def _cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "dinov2_jax.train", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_unknown_key_is_a_clear_error():
    r = _cli("--config", "configs/quickstart.py", "--config.optim.base_lrr=0.1")
    assert r.returncode == 2
    assert "unknown config key 'optim.base_lrr'" in r.stderr and "optim.base_lr" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_missing_dataset_is_a_clear_error(tmp_path):
    r = _cli("--config", "configs/quickstart.py", f"--config.train.output_dir={tmp_path}",
             "--config.train.dataset_path=folder:/no/such/images")
    assert r.returncode == 2 and "/no/such/images" in r.stderr and "does not exist" in r.stderr
