"""Checker run in a subprocess with 8 simulated CPU devices (see test_sharding.py).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python tests/parallel/multidevice_check.py mlp
    ... multidevice_check.py dino MIN_SIZE DROP_PATH DATA,FSDP,TENSOR

Trains the same model for a few steps on one device and on a (data=2, fsdp=4) mesh from the same
initial state and batches; prints one JSON line: loss / param max-abs differences and the
per-device bytes of params + optimizer state relative to the unsharded size.
"""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dinov2_jax.parallel.mesh import make_mesh
from dinov2_jax.parallel.sharding import (bytes_per_device, init_sharded, make_global_batch, param_shardings,
                                          shard_state)

N_STEPS = 4


def tree_bytes(tree):
    leaves = [jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
              for x in jax.tree.leaves(tree)]
    return sum(x.size * x.dtype.itemsize for x in leaves)


def _np(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x, np.float64)


def max_diff(a, b):
    return max(float(np.max(np.abs(_np(x) - _np(y)), initial=0.0))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _float_leaves(tree):
    return [_np(x) for x in jax.tree.leaves(tree)
            if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) and jnp.issubdtype(x.dtype, jnp.floating)]


def compare(state0, step, batches, mesh, min_size=None, replicated_keys=()):
    """Run `step(state, batch) -> (state, {name: scalar})` on device 0 and on `mesh` from the same state
    and batches; returns the result dict.

    Step 1 sees identical inputs on both, so its metrics (losses, grad norms) measure the sharded
    computation itself. Params are compared as ||p_1 - p_mesh|| / ||p_1 - p_0|| (relative to how far
    training moved them): Adam's g / sqrt(v) turns reduction-order noise in near-zero gradient entries
    into steps of up to lr, so a max-abs comparison of params says little.
    """
    dev0 = jax.devices()[0]
    s1 = jax.device_put(state0, dev0)
    step1 = jax.jit(step)
    m1 = []
    for b in batches:
        s1, m = step1(s1, jax.device_put(b, dev0))
        m1.append({k: float(v) for k, v in m.items()})

    kw = {} if min_size is None else {"min_size": min_size}
    sh = param_shardings(state0, mesh, **kw)
    sN = shard_state(state0, mesh, **kw)
    stepN = jax.jit(step, in_shardings=(sh, None), out_shardings=(sh, None))
    mN = []
    for b in batches:
        sN, m = stepN(sN, make_global_batch(b, mesh, replicated_keys=replicated_keys))
        mN.append({k: float(v) for k, v in m.items()})
    out_sharded_as_planned = all(a.sharding == b for a, b in zip(jax.tree.leaves(sN), jax.tree.leaves(sh)))
    per_dev = bytes_per_device(sN)
    sharded = sum(1 for x in jax.tree.leaves(sN) if not x.sharding.is_fully_replicated)

    def rel(a, b):
        return abs(a - b) / max(abs(a), 1e-12)

    a1, aN, a0 = _float_leaves(s1), _float_leaves(sN), _float_leaves(state0)
    diff = np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(a1, aN)))
    moved = np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(a1, a0)))
    return {
        "n_devices": jax.device_count(),
        "metrics_1": m1,
        "metrics_mesh": mN,
        "step1_max_rel_metric_diff": max(rel(m1[0][k], mN[0][k]) for k in m1[0]),
        "max_rel_loss_diff": max(rel(x["loss"], y["loss"]) for x, y in zip(m1, mN)),
        "param_rel_diff": float(diff / moved),
        "max_param_diff": max(float(np.max(np.abs(x - y), initial=0.0)) for x, y in zip(a1, aN)),
        "bytes_ratio": max(per_dev.values()) / tree_bytes(state0),
        "sharded_leaves": sharded,
        "out_sharded_as_planned": out_sharded_as_planned,
        "loss_decreased": m1[-1]["loss"] < m1[0]["loss"],
    }


def mlp_case(mesh):
    dims = [256, 256, 256, 256]
    key = jax.random.key(0)
    ks = jax.random.split(key, 8)
    params = {f"l{i}": {"kernel": jax.random.normal(ks[i], (dims[i], dims[i + 1])) / 16.0,
                        "bias": jnp.zeros((dims[i + 1],))} for i in range(3)}
    tx = optax.adamw(1e-3, weight_decay=0.05)
    state = {"params": params, "opt": tx.init(params)}

    def loss_fn(p, x, y):
        h = x
        for i in range(3):
            h = h @ p[f"l{i}"]["kernel"] + p[f"l{i}"]["bias"]
            if i < 2:
                h = jax.nn.gelu(h, approximate=False)
        return jnp.mean((h - y) ** 2)

    def step(s, b):
        loss, g = jax.value_and_grad(loss_fn)(s["params"], b["x"], b["y"])
        upd, opt = tx.update(g, s["opt"], s["params"])
        return {"params": optax.apply_updates(s["params"], upd), "opt": opt}, {"loss": loss}

    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal((16, 256)).astype(np.float32),
                "y": rng.standard_normal((16, 256)).astype(np.float32)} for _ in range(N_STEPS)]
    res = compare(state, step, batches, mesh)
    # init_sharded: the same state created directly with sharded outputs (never whole on one device)
    def init(k):
        ks = jax.random.split(k, 8)
        p = {f"l{i}": {"kernel": jax.random.normal(ks[i], (dims[i], dims[i + 1])) / 16.0,
                       "bias": jnp.zeros((dims[i + 1],))} for i in range(3)}
        return {"params": p, "opt": tx.init(p)}

    born = init_sharded(init, mesh, key)
    res["init_sharded_max_diff"] = max_diff(born, state)
    res["init_sharded_as_planned"] = all(a.sharding == b for a, b in zip(
        jax.tree.leaves(born), jax.tree.leaves(param_shardings(state, mesh))))
    return res


def dino_batch(rng, B, n_local, g_size, l_size, patch, groups):
    """A DINOv2 batch (docs/design.md layout): random crops, official-recipe masks, `groups` device batches."""
    import random

    from dinov2_jax.data.masking import MaskingGenerator, collate

    grid = g_size // patch
    samples = [{"global_crops": rng.standard_normal((2, g_size, g_size, 3)).astype(np.float32),
                "local_crops": rng.standard_normal((n_local, l_size, l_size, 3)).astype(np.float32)}
               for _ in range(B)]
    return collate(samples, mask_generator=MaskingGenerator((grid, grid), max_num_patches=grid * grid // 2),
                   rng=random.Random(int(rng.integers(1 << 30))), groups=groups)


def dino_case(mesh, min_size, drop_path=0.1):
    """The DINOv2 train step (dinov2_jax.train.train_step) on a tiny ViT: 1 device vs the mesh, same state and batches."""
    from configs.ssl_default import get_config
    from dinov2_jax.train.train_step import create_train_state, make_train_step

    cfg = get_config()
    cfg.student.arch = "vit_small"
    cfg.student.patch_size = 8
    cfg.student.drop_path_rate = drop_path  # stochastic depth on: keys must give the same masks on the mesh
    cfg.student.attn_impl = "xla"
    for head in (cfg.dino, cfg.ibot):
        head.head_n_prototypes, head.head_hidden_dim, head.head_bottleneck_dim = 256, 128, 64
    cfg.crops.global_crops_size, cfg.crops.local_crops_size, cfg.crops.local_crops_number = 32, 16, 2
    B = 16
    cfg.train.batch_size_per_gpu = 2  # 8 device batches (groups): the same math on 1 device and the mesh
    arch = dict(embed_dim=64, depth=2, num_heads=2)
    state0 = jax.device_get(create_train_state(cfg, jax.random.key(0), arch_overrides=arch))
    step = make_train_step(cfg, arch_overrides=arch)
    hp = {"lr": np.float32(1e-3), "wd": np.float32(0.04), "mom": np.float32(0.99),
          "teacher_temp": np.float32(0.05), "last_layer_lr": np.float32(1e-3)}
    rng = np.random.default_rng(0)
    batches = [dino_batch(rng, B, 2, 32, 16, 8, groups=B // cfg.train.batch_size_per_gpu) for _ in range(N_STEPS)]

    def step2(s, b):
        s, m = step(s, b, hp)
        return s, {k: v for k, v in m.items() if k != "n_masked_patches"}

    res = compare(state0, step2, batches, mesh, min_size=min_size)
    # the DINOv2 state created directly sharded (jit with out_shardings) equals the one placed afterwards
    born = init_sharded(lambda k: create_train_state(cfg, k, arch_overrides=arch), mesh, jax.random.key(0),
                        min_size=min_size)
    res["init_sharded_max_diff"] = max_diff(born, state0)  # jit vs eager init: ulp-level (cls_token 2e-13)
    res["init_sharded_as_planned"] = all(a.sharding == b for a, b in zip(
        jax.tree.leaves(born), jax.tree.leaves(param_shardings(state0, mesh, min_size=min_size))))
    return res


def main():
    case = sys.argv[1]
    assert jax.device_count() == 8, f"need 8 devices, got {jax.device_count()} (set XLA_FLAGS)"
    # optional last argument "DATA,FSDP,TENSOR" (default 2,4,1)
    shape = sys.argv[4] if len(sys.argv) > 4 else "2,4,1"
    d, f, t = (int(x) for x in shape.split(","))
    mesh = make_mesh({"data": d, "fsdp": f, "tensor": t})
    if case == "mlp":
        res = mlp_case(mesh)
    elif case == "dino":
        res = dino_case(mesh, min_size=int(sys.argv[2]) if len(sys.argv) > 2 else 2048,
                        drop_path=float(sys.argv[3]) if len(sys.argv) > 3 else 0.1)
    else:
        raise SystemExit(f"unknown case {case!r}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
