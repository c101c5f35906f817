"""One process of the 2-process localhost test (tests/parallel/test_distributed.py); started by
launch/local_multiprocess.py with 2 CPU devices per process:

    python launch/local_multiprocess.py -n 2 --devices-per-process 2 -- tests/parallel/dist_worker.py OUT_DIR

Checks, printing `CHECK name value` lines and `WORKER_OK` at the end:
1. initialize_from_env() joined a 2-process job with 4 global devices;
2. an MLP + AdamW step on a (data=2, fsdp=2) mesh, batch given as per-process slices, equals the
   same step run by this process alone on the full batch (device 0);
3. a sharded Orbax checkpoint written after 2 steps, restored onto the same shardings, continues to
   the same state as the uninterrupted run;
4. make_global_dinov2_batch: per-process DINOv2 batches -> the crop-major global batch and mask lists
   that one process collating all images would produce (+ `crop_row_keys`: the
   photometric_on_device param rows follow their crops).
"""
import os
import sys

from dinov2_jax.parallel.distributed import initialize_from_env

plan = initialize_from_env()  # before any device use

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from dinov2_jax.parallel.mesh import make_mesh  # noqa: E402
from dinov2_jax.parallel.sharding import (  # noqa: E402
    make_global_batch,
    make_global_dinov2_batch,
    param_shardings,
    shard_state,
)


def check(name, value):
    print(f"CHECK {name} {value}", flush=True)


def gather(tree):
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def main(out_dir):
    pid, nproc = jax.process_index(), jax.process_count()
    check("method", plan.method)
    check("process_count", nproc)
    check("device_count", jax.device_count())
    assert nproc == 2 and jax.device_count() == 4, (nproc, jax.device_count())
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 1})

    # ---- 2/3: MLP + AdamW, sharded vs alone; checkpoint / resume
    d = 128
    ks = jax.random.split(jax.random.key(0), 3)
    params = {f"l{i}": {"kernel": np.asarray(jax.random.normal(ks[i], (d, d))) / 11.0,
                        "bias": np.zeros((d,), np.float32)} for i in range(2)}
    tx = optax.adamw(1e-3, weight_decay=0.05)

    def loss_fn(p, x, y):
        h = jax.nn.gelu(x @ p["l0"]["kernel"] + p["l0"]["bias"], approximate=False)
        return jnp.mean((h @ p["l1"]["kernel"] + p["l1"]["bias"] - y) ** 2)

    def step(s, b):
        loss, g = jax.value_and_grad(loss_fn)(s["params"], b["x"], b["y"])
        upd, opt = tx.update(g, s["opt"], s["params"])
        return {"params": optax.apply_updates(s["params"], upd), "opt": opt}, loss

    rng = np.random.default_rng(1)
    full = [{"x": rng.standard_normal((8, d)).astype(np.float32),
             "y": rng.standard_normal((8, d)).astype(np.float32)} for _ in range(4)]
    mine = [{k: v[pid * 4:(pid + 1) * 4] for k, v in b.items()} for b in full]  # this process's slice

    state0 = {"params": params, "opt": tx.init(params)}
    local_dev = jax.local_devices()[0]
    alone = jax.jit(step)
    s1 = jax.device_put(state0, local_dev)
    ref_losses = []
    for b in full:
        s1, l = alone(s1, jax.device_put(b, local_dev))
        ref_losses.append(float(l))

    sh = param_shardings(state0, mesh, min_size=1024)
    stepN = jax.jit(step, in_shardings=(sh, None), out_shardings=(sh, None))
    sN = shard_state(state0, mesh, min_size=1024)
    n_sharded = sum(not x.sharding.is_fully_replicated for x in jax.tree.leaves(sN))
    check("sharded_leaves", n_sharded)
    losses = []
    mngr = ocp.CheckpointManager(os.path.join(out_dir, "ckpt"))
    for i, b in enumerate(mine):
        sN, l = stepN(sN, make_global_batch(b, mesh))
        losses.append(float(l))
        if i == 1:
            mngr.save(2, args=ocp.args.StandardSave(sN))
            mngr.wait_until_finished()
    check("max_loss_diff", max(abs(a - b) for a, b in zip(ref_losses, losses)))
    final = gather(sN)
    check("max_param_diff", max(float(np.max(np.abs(a - np.asarray(b))))
                                for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(s1))))

    # resume from step 2 onto the same shardings
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), sN, sh)
    restored = mngr.restore(2, args=ocp.args.StandardRestore(abstract))
    check("restored_sharded", all(r.sharding == s for r, s in zip(jax.tree.leaves(restored), jax.tree.leaves(sh))))
    for b in mine[2:]:
        restored, _ = stepN(restored, make_global_batch(b, mesh))
    check("resume_max_diff", max(float(np.max(np.abs(a - b)))
                                 for a, b in zip(jax.tree.leaves(gather(restored)), jax.tree.leaves(final))))
    mngr.close()

    # ---- 4: DINOv2 batch assembly
    B_l, nL, N, S, s = 2, 3, 16, 8, 4

    def local_batch(p):
        r = np.random.default_rng(100 + p)
        masks = r.random((2 * B_l, N)) < 0.3
        masks[0] = False  # an unmasked crop
        ub = 2 * B_l * N // 2
        flat = np.flatnonzero(masks)
        idx = np.zeros(ub, np.int32)
        idx[:flat.size] = flat
        w = np.zeros(ub, np.float32)
        w[:flat.size] = (np.float32(1) / np.maximum(masks.sum(-1), 1).astype(np.float32))[flat // N]
        return {"collated_global_crops": r.standard_normal((2 * B_l, S, S, 3)).astype(np.float32),
                "collated_local_crops": r.standard_normal((nL * B_l, s, s, 3)).astype(np.float32),
                "collated_masks": masks, "mask_indices_list": idx, "masks_weight": w,
                "n_masked_patches": np.int32(flat.size)}

    g = make_global_dinov2_batch(local_batch(pid), mesh)
    parts = [local_batch(p) for p in range(nproc)]
    ok = True
    for k, nc in (("collated_global_crops", 2), ("collated_local_crops", nL), ("collated_masks", 2)):
        # crop-major over all images: crop c of image (p, b) at row c * (P * B_l) + p * B_l + b
        want = np.concatenate([np.concatenate([q[k][c * B_l:(c + 1) * B_l] for q in parts]) for c in range(nc)])
        got = np.asarray(multihost_utils.process_allgather(g[k], tiled=True))
        ok &= np.array_equal(got, want)
        check(f"dinov2_{k}_equal", np.array_equal(got, want))
    gm = np.concatenate([np.concatenate([q["collated_masks"][c * B_l:(c + 1) * B_l] for q in parts]) for c in range(2)])
    flat = np.flatnonzero(gm)
    ub = parts[0]["mask_indices_list"].shape[0] * nproc
    want_idx = np.zeros(ub, np.int32)
    want_idx[:flat.size] = flat
    want_w = np.zeros(ub, np.float32)
    want_w[:flat.size] = (np.float32(1) / np.maximum(gm.sum(-1), 1).astype(np.float32))[flat // N]
    got_idx = np.asarray(multihost_utils.process_allgather(g["mask_indices_list"], tiled=True))
    got_w = np.asarray(multihost_utils.process_allgather(g["masks_weight"], tiled=True))
    check("dinov2_mask_indices_equal", np.array_equal(got_idx, want_idx))
    check("dinov2_masks_weight_equal", np.array_equal(got_w, want_w))
    check("dinov2_n_masked_equal", int(g["n_masked_patches"]) == flat.size)
    # photometric params (crops.photometric_on_device) must end up in the same rows as their crops
    def with_params(p):
        batch = local_batch(p)
        for c, n in (("global", 2 * B_l), ("local", nL * B_l)):
            batch[f"collated_{c}_blur_sigma"] = (1000 * p + np.arange(n)).astype(np.float32)  # (process, row)
            batch[f"collated_{c}_gray"] = (np.arange(n) + p) % 2 == 0
        return batch

    param_keys = [f"collated_{c}_{name}" for c in ("global", "local") for name in ("blur_sigma", "gray")]
    gp = make_global_dinov2_batch(with_params(pid), mesh, crop_row_keys=param_keys)
    parts = [with_params(p) for p in range(nproc)]
    for c, nc in (("global", 2), ("local", nL)):
        for name in ("blur_sigma", "gray"):
            k = f"collated_{c}_{name}"
            want = np.concatenate([np.concatenate([q[k][i * B_l:(i + 1) * B_l] for q in parts]) for i in range(nc)])
            got = np.asarray(multihost_utils.process_allgather(gp[k], tiled=True))
            check(f"dinov2_param_{c}_{name}_rows_follow_crops", np.array_equal(got, want))
    # per-process mask lists passed as "replicated" would silently differ per device: must raise
    try:
        make_global_batch(local_batch(pid), mesh, replicated_keys=("mask_indices_list",))
        check("differing_replicated_raises", False)
    except ValueError as e:
        check("differing_replicated_raises", "make_global_dinov2_batch" in str(e))
    print("WORKER_OK", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
