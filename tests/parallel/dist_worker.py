"""One process of the 2-process localhost test (tests/parallel/test_distributed.py); started by
launch/local_multiprocess.py with 2 CPU devices per process:

    python launch/local_multiprocess.py -n 2 --devices-per-process 2 -- tests/parallel/dist_worker.py OUT_DIR

Checks, printing `CHECK name value` lines and `WORKER_OK` at the end:
1. initialize_from_env() joined a 2-process job with 4 global devices;
2. an MLP + AdamW step on a (data=2, fsdp=2) mesh, batch given as per-process slices, equals the
   same step run by this process alone on the full batch (device 0);
3. a sharded Orbax checkpoint written after 2 steps, restored onto the same shardings, continues to
   the same state as the uninterrupted run;
4. make_global_dinov2_batch: per-process group-major DINOv2 batches (one collated group per device,
   photometric_on_device params included) -> the global batch is their concatenation and every device
   holds whole groups.
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

    # ---- 4: DINOv2 batch assembly (group-major: one collated group per device)
    import random

    from dinov2_jax.data.masking import MaskingGenerator, collate

    b, nL, grid = 2, 3, 4

    from dinov2_jax.data.augmentations import PHOTOMETRIC_PARAM_KEYS

    def params(n, marker):  # photometric_on_device params; blur_sigma marks (process, image, crop)
        out = {k: np.zeros((n, 4) if k == "jitter_order" else (n, 3) if k == "jitter_factors" else (n,))
               for k in PHOTOMETRIC_PARAM_KEYS}
        out["blur_sigma"] = (marker + np.arange(n)).astype(np.float32)
        return out

    def local_batch(p):
        r = np.random.default_rng(100 + p)
        samples = [{"global_crops": r.standard_normal((2, 8, 8, 3)).astype(np.float32),
                    "local_crops": r.standard_normal((nL, 4, 4, 3)).astype(np.float32),
                    "global_photometric": params(2, 1000 * p + 10 * i),
                    "local_photometric": params(nL, 1000 * p + 10 * i)}
                   for i in range(jax.local_device_count() * b)]
        return collate(samples, mask_generator=MaskingGenerator((grid, grid), max_num_patches=8),
                       rng=random.Random(p), groups=jax.local_device_count())

    g = make_global_dinov2_batch(local_batch(pid), mesh)
    parts = [local_batch(p) for p in range(nproc)]
    for k in parts[0]:
        # the processes' batches one after the other: no reordering, no recomputed mask lists
        want = np.concatenate([q[k] for q in parts])
        got = np.asarray(multihost_utils.process_allgather(g[k], tiled=True))
        check(f"dinov2_{k}_is_process_concat", np.array_equal(got, want))
    # every device holds whole groups: its rows of each per-group array are exactly one group
    n_groups = nproc * jax.local_device_count()
    for k in ("collated_global_crops", "collated_local_crops", "mask_indices_list", "collated_global_blur_sigma"):
        rows_per_group = g[k].shape[0] // n_groups
        starts = {sh.index[0].start or 0 for sh in g[k].addressable_shards}
        sizes = {sh.data.shape[0] for sh in g[k].addressable_shards}
        check(f"dinov2_{k}_whole_groups_per_device", sizes == {rows_per_group}
              and all(st % rows_per_group == 0 for st in starts))
    # per-process mask lists passed as "replicated" would silently differ per device: must raise
    try:
        make_global_batch(local_batch(pid), mesh, replicated_keys=("mask_indices_list",))
        check("differing_replicated_raises", False)
    except ValueError as e:
        check("differing_replicated_raises", "make_global_dinov2_batch" in str(e))
    print("WORKER_OK", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
