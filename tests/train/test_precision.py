"""Precision policy (dinov2_jax/train/precision.py): what the configs resolve to on each platform."""
import jax.numpy as jnp
import pytest

from dinov2_jax.config import load_config_file
from dinov2_jax.train.precision import resolve_compute_dtype, resolve_precision


@pytest.mark.parametrize("config", ["configs/vitl14.py", "configs/vitg14.py", "configs/vitl16_short.py",
                                    "configs/ssl_default.py"])
def test_imagenet_configs_train_in_bf16_with_cudnn_on_gpu_and_fp32_xla_on_cpu(config):
    cfg = load_config_file(config)
    gpu = resolve_precision(cfg, "gpu")
    assert (jnp.dtype(gpu.compute_dtype), gpu.attn_impl) == (jnp.bfloat16, "cudnn")
    tpu = resolve_precision(cfg, "tpu")
    assert (jnp.dtype(tpu.compute_dtype), tpu.attn_impl) == (jnp.bfloat16, "xla")
    cpu = resolve_precision(cfg, "cpu")
    assert (jnp.dtype(cpu.compute_dtype), cpu.attn_impl) == (jnp.float32, "xla")
    assert "bfloat16" in gpu.describe() and "cudnn" in gpu.describe()


def test_explicit_dtypes_and_refusals():
    assert resolve_compute_dtype("float32", "gpu") == jnp.float32
    assert resolve_compute_dtype("bfloat16", "cpu") == jnp.bfloat16
    with pytest.raises(ValueError, match="grad_scaler"):  # fp16 needs loss scaling, which is not implemented
        resolve_compute_dtype("float16", "gpu")
    with pytest.raises(ValueError, match="compute_dtype='fp32'"):
        resolve_compute_dtype("fp32")
    cfg = load_config_file("configs/vitl14.py")
    cfg.student.attn_impl = "cudnn"
    with pytest.raises(ValueError, match="needs a GPU"):  # asked for explicitly: no silent fallback
        resolve_precision(cfg, "cpu")
    cfg.compute_precision.compute_dtype = "float32"
    with pytest.raises(ValueError, match="bfloat16/float16 only"):
        resolve_precision(cfg, "gpu")


def test_train_step_builds_models_in_the_resolved_dtype():
    from dinov2_jax.train.train_step import compute_dtype

    cfg = load_config_file("configs/vitl14.py")
    assert compute_dtype(cfg) == jnp.float32  # this machine is a CPU: "auto" -> float32
    cfg.compute_precision.compute_dtype = "bfloat16"
    assert compute_dtype(cfg) == jnp.bfloat16
