"""Sharding rules (`dinov2_jax/parallel/sharding.py`).

Rule tests use a dict of axis sizes (no devices needed). The multi-device checks (8 simulated CPU
devices: 1-device vs (data=2, fsdp=4) equality, memory per device) run in a subprocess because the
device count is fixed when JAX first initialises and this pytest process already imported JAX.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from dinov2_jax.parallel.mesh import make_mesh
from dinov2_jax.parallel.sharding import (
    batch_shardings,
    describe,
    make_global_batch,
    param_spec,
    param_specs,
)

ROOT = Path(__file__).resolve().parents[2]
FSDP4 = {"data": 2, "fsdp": 4, "tensor": 1}


def test_fsdp_shards_largest_divisible_dim():
    assert param_spec("blocks.0.attn.qkv.kernel", (384, 1152), FSDP4) == P(None, "fsdp")
    assert param_spec("blocks.0.attn.proj.kernel", (384, 384), FSDP4) == P("fsdp")  # tie: earliest
    assert param_spec("pos_embed", (1, 257, 384), FSDP4) == P(None, None, "fsdp")  # 257 not divisible
    assert param_spec("patch_embed.proj.kernel", (14, 14, 3, 384), FSDP4) == P(None, None, None, "fsdp")
    # largest dim not divisible -> next largest divisible one
    assert param_spec("x", (1001, 64), FSDP4, min_size=0) == P(None, "fsdp")


def test_small_and_indivisible_replicated():
    assert param_spec("blocks.0.norm1.scale", (384,), FSDP4) == P()  # below min_size
    assert param_spec("x", (4099, 5), FSDP4) == P()  # big but nothing divisible by 4
    assert param_spec("step", (), FSDP4) == P()
    assert param_spec("x", (64,), FSDP4, min_size=64) == P("fsdp")  # threshold is inclusive


def test_everything_replicated_without_fsdp_or_tensor():
    mesh = {"data": 8, "fsdp": 1, "tensor": 1}
    for name, shape in [("blocks.0.attn.qkv.kernel", (1024, 3072)), ("dino_head.mlp.0.kernel", (1024, 2048))]:
        assert param_spec(name, shape, mesh) == P()


def test_tensor_rules_megatron_and_fsdp_combined():
    mesh = {"data": 1, "fsdp": 2, "tensor": 2}
    assert param_spec("blocks.3.attn.qkv.kernel", (384, 1152), mesh) == P("fsdp", "tensor")
    assert param_spec("blocks.3.attn.proj.kernel", (384, 384), mesh) == P("tensor", "fsdp")
    assert param_spec("blocks.3.mlp.fc1.kernel", (384, 1536), mesh) == P("fsdp", "tensor")
    assert param_spec("blocks.3.mlp.fc2.kernel", (1536, 384), mesh) == P("tensor", "fsdp")
    assert param_spec("blocks.3.mlp.w12.bias", (2048,), mesh, min_size=10**9) == P("tensor")
    # the rule anchors on the full component name: 'xattn.qkv' is not 'attn.qkv'
    assert param_spec("blocks.3.xattn.qkv.kernel", (384, 1152), mesh) == P(None, "fsdp")
    # not divisible by tensor -> no tensor split, fsdp still applies
    assert param_spec("blocks.3.attn.qkv.kernel", (384, 1151), {"fsdp": 2, "tensor": 2}) == P("fsdp")  # 1151 odd


def test_optimizer_mirrors_get_parameter_spec():
    params = {"blocks": [{"attn": {"qkv": {"kernel": jnp.zeros((64, 192)), "bias": jnp.zeros((192,))}}}]}
    opt = optax.adamw(1e-3).init(params)
    specs = param_specs({"params": params, "opt": opt}, FSDP4, min_size=1024)
    assert specs["params"]["blocks"][0]["attn"]["qkv"]["kernel"] == P(None, "fsdp")
    mu, nu = specs["opt"][0].mu, specs["opt"][0].nu
    assert mu["blocks"][0]["attn"]["qkv"]["kernel"] == P(None, "fsdp")
    assert nu["blocks"][0]["attn"]["qkv"]["kernel"] == P(None, "fsdp")
    assert specs["opt"][0].count == P()
    names = [r[0] for r in describe(opt, FSDP4)]
    assert "0.mu.blocks.0.attn.qkv.kernel" in names


def test_batch_shardings_single_device_and_errors():
    mesh = make_mesh({"data": -1}, devices=jax.devices()[:1])
    batch = {"x": np.ones((4, 3), np.float32), "n": np.int32(3)}
    sh = batch_shardings(batch, mesh)
    assert sh["x"].spec == P(("data", "fsdp")) and sh["n"].spec == P()
    g = make_global_batch(batch, mesh)
    np.testing.assert_array_equal(np.asarray(g["x"]), batch["x"])
    assert int(g["n"]) == 3


def test_batch_not_divisible_error():
    mesh_sizes = {"data": 2, "fsdp": 4}

    class FakeMesh:  # batch_shardings only needs .shape for the check
        shape = mesh_sizes

    with pytest.raises(ValueError, match="not divisible by the 8 batch shards"):
        batch_shardings({"x": np.ones((6, 2))}, FakeMesh())


def run_on_8_cpu_devices(script: str, *args: str, timeout: float = 600) -> dict:
    """Run a checker script with 8 simulated CPU devices; it prints one JSON line last."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, str(Path(__file__).parent / script), *args], env=env,
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_mlp_adamw_fsdp_equals_single_device():
    """Generic step (MLP + AdamW): mesh (2,4) == 1 device; sharded bytes ~1/4."""
    res = run_on_8_cpu_devices("multidevice_check.py", "mlp")
    assert res["n_devices"] == 8
    assert res["step1_max_rel_metric_diff"] < 1e-6, res
    assert res["max_rel_loss_diff"] < 1e-6, res
    assert res["param_rel_diff"] < 1e-4, res
    assert res["out_sharded_as_planned"], res
    # 3 x (256x256 kernel split 4 ways + replicated 256 bias), params + Adam mu, nu
    assert 0.25 <= res["bytes_ratio"] <= 0.26, res
    assert res["sharded_leaves"] == 9  # 3 kernels x (param, mu, nu)
    assert res["init_sharded_max_diff"] < 1e-6 and res["init_sharded_as_planned"], res


def _assert_mesh_step_matches_single_device(res, sensitive_tol=5e-5):
    """Step 1 has identical inputs: every loss term and grad norm agrees to fp32 reduction-order noise.
    KoLeo (log of nearest-neighbour distances between the nearly identical cls tokens of a random
    init, a cancellation) and the backbone grad norm it dominates are the most sensitive
    (`sensitive_tol`)."""
    first, first_mesh = res["metrics_1"][0], res["metrics_mesh"][0]
    for k, v in first.items():
        tol = sensitive_tol if k in ("koleo_loss", "grad_norm/backbone", "loss", "total_loss") else 1e-6
        assert abs(v - first_mesh[k]) <= tol * abs(v), (k, v, first_mesh[k])
    assert res["max_rel_loss_diff"] < 5e-5, res
    assert res["param_rel_diff"] < 1e-2, res
    assert res["out_sharded_as_planned"], res


@pytest.mark.heavy
def test_dinov2_train_step_fsdp_equals_single_device():
    """The full DINOv2 train step (tiny ViT, 8 device batches, stochastic depth at the ViT-L rate 0.4, 4 steps):
    mesh (2,4) == 1 device."""
    res = run_on_8_cpu_devices("multidevice_check.py", "dino", "2048", "0.4", timeout=900)
    _assert_mesh_step_matches_single_device(res)
    assert res["bytes_ratio"] < 0.3, res  # small tensors (norms, biases, pos_embed, centers) stay replicated
    assert res["init_sharded_max_diff"] < 1e-6 and res["init_sharded_as_planned"], res


@pytest.mark.heavy
def test_dinov2_train_step_fsdp_and_tensor_parallel_equals_single_device():
    """Same as above on a (data=2, fsdp=2, tensor=2) mesh: the Megatron rules split qkv/fc1 columns and
    proj/fc2 rows over 'tensor'; GSPMD must still compute the same step."""
    res = run_on_8_cpu_devices("multidevice_check.py", "dino", "2048", "0.4", "2,2,2", timeout=900)
    # Row-parallel matmuls (proj, fc2) add partial products from 2 devices: another summation order.
    # With the blocks under lax.scan (student.scan_blocks, the default) GSPMD splits them that way and
    # the cancellation-dominated KoLeo / backbone grad norm differ by 6e-6 / 7e-5 relative (measured
    # 2026-11-23; all other terms <= 2e-6); with the Python loop of blocks (student.scan_blocks=False,
    # set in a scratch copy of multidevice_check.py) they matched to 1e-7.
    _assert_mesh_step_matches_single_device(res, sensitive_tol=2e-4)
    # block matmuls split 4 ways (fsdp x tensor), the heads only over fsdp=2: measured 0.36
    assert res["bytes_ratio"] < 0.4, res
