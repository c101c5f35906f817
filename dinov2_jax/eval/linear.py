"""Linear probe on frozen features (official DINOv2 `eval/linear.py`).

Features: `get_intermediate_layers(x, n=4, return_class_token=True, norm=True)`; a head's input is the
concatenated cls tokens of the last n blocks (n in {1, 4}), plus the mean of the **last** block's patch
tokens when avgpool. 2 x 2 x 13 = 52 linear heads (weight N(0, 0.01), zero bias) are trained at once on
the sum of their cross-entropies with SGD (momentum 0.9, no weight decay), lr scaled by batch/256 and
cosine-annealed to 0 over all iterations. The best head by val top-1 is reported.

Two training modes:
  * default (`augment=False`): the backbone runs once per image with the eval transform (resize 256,
    center crop 224); the heads are trained on these cached features. Much faster (the backbone is not
    run per iteration), and the only practical mode on CPU. It is NOT the official protocol, which
    trains on random-resized-crop + flip views; expect slightly different (usually lower) accuracy.
  * `augment=True` (`--augment`): the official protocol: each iteration draws a batch, applies
    RandomResizedCrop(224, scale (0.08, 1), bicubic) + horizontal flip (p 0.5) and runs the backbone;
    the batches are decoded and augmented by `--num-workers` Grain worker processes, prefetched.

CLI:
  python -m dinov2_jax.eval.linear --weights W --train-dataset SPEC --val-dataset SPEC \
      [--epochs 10 --epoch-length 1250 | --iterations N] [--batch-size 128] [--augment] \
      [--test-datasets SPEC ...] [--output-dir DIR (checkpoint, resume, best_linear_head.npz)] \
      [--output results_eval_linear.json]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dinov2_jax.eval.features import add_eval_cli_args, load_cli_model

logger = logging.getLogger("dinov2_jax.eval.linear")

LEARNING_RATES = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)
N_LAST_BLOCKS_LIST = (1, 4)
MOMENTUM = 0.9
HEAD_INIT_STD = 0.01


# ----------------------------------------------------------------------------- features


class LinearFeatures(NamedTuple):
    """Compact per-image features from which every head's input is built.

    cls_tokens [B, n_last, D]: final-normed cls token of the last n_last blocks (oldest first);
    patch_mean [B, D]: mean over the final-normed patch tokens of the last block (registers excluded).
    """
    cls_tokens: jax.Array
    patch_mean: jax.Array


def compact_features(intermediate) -> LinearFeatures:
    """Output of `get_intermediate_layers(..., return_class_token=True)` (tuple of (patches [B,N,D],
    cls [B,D]) for the last n blocks, oldest first) -> LinearFeatures (fp32)."""
    cls = jnp.stack([c for _, c in intermediate], axis=1).astype(jnp.float32)
    patch_mean = jnp.mean(intermediate[-1][0].astype(jnp.float32), axis=1)
    return LinearFeatures(cls, patch_mean)


def create_linear_input(feats: LinearFeatures, use_n_blocks: int, use_avgpool: bool):
    """Head input [B, n*D] or [B, (n+1)*D]: cls of the last n blocks concatenated (oldest first),
    then the last block's mean patch token when avgpool (official `create_linear_input`)."""
    n_have = feats.cls_tokens.shape[1]
    if not 1 <= use_n_blocks <= n_have:
        raise ValueError(f"use_n_blocks={use_n_blocks} but features hold the last {n_have} blocks")
    cls = feats.cls_tokens[:, n_have - use_n_blocks :, :]
    out = cls.reshape(cls.shape[0], -1)
    if use_avgpool:
        out = jnp.concatenate([out, feats.patch_mean], axis=-1)
    return out.astype(jnp.float32)


def make_linear_feature_fn(model, n_last_blocks: int = 4) -> Callable:
    """Jitted `images [B, H, W, 3] -> LinearFeatures` for an NNX backbone (inference, no stochasticity)."""
    from dinov2_jax.pretrained import jit_module

    return jit_module(model, lambda m, images: compact_features(
        m.get_intermediate_layers(images, n=n_last_blocks, return_class_token=True, norm=True)))


# ----------------------------------------------------------------------------- heads


def head_configs(n_last_blocks_list: Sequence[int] = N_LAST_BLOCKS_LIST):
    """The (use_n_blocks, use_avgpool) groups, in the official order."""
    return [(n, avg) for n in n_last_blocks_list for avg in (False, True)]


def head_name(n: int, avgpool: bool, lr: float, fmt: str = ".5f") -> str:
    """Official classifier name, e.g. `classifier_4_blocks_avgpool_True_lr_0_00500` (lr already scaled)."""
    return f"classifier_{n}_blocks_avgpool_{avgpool}_lr_{lr:{fmt}}".replace(".", "_")


def head_names(scaled_lrs, n_last_blocks_list=N_LAST_BLOCKS_LIST) -> list[str]:
    """Names of all heads (config-major, lr-minor). The official `.5f` format collides for small batches
    (e.g. batch 32: 1e-5 and 2e-5 scale to 1.25e-6 and 2.5e-6, both `0_00000`; the official ModuleDict
    then silently drops a head); in that case all names use `.3e` instead."""
    for fmt in (".5f", ".3e"):
        names = [head_name(n, avg, float(lr), fmt) for n, avg in head_configs(n_last_blocks_list)
                 for lr in np.asarray(scaled_lrs)]
        if len(set(names)) == len(names):
            return names
    raise ValueError(f"duplicate learning rates in {list(scaled_lrs)}")


def scale_lrs(learning_rates: Sequence[float], global_batch_size: int) -> np.ndarray:
    """Official linear scaling: lr * global_batch / 256."""
    return np.asarray(learning_rates, np.float32) * global_batch_size / 256.0


def init_heads(key, embed_dim: int, num_classes: int, n_lrs: int,
               n_last_blocks_list: Sequence[int] = N_LAST_BLOCKS_LIST):
    """Parameters of all heads: a list (one per head config) of {"kernel" [L, F, C], "bias" [L, C]}
    with kernel ~ N(0, 0.01) and zero bias (L = number of learning rates)."""
    params = []
    for key_i, (n, avg) in zip(jax.random.split(key, len(head_configs(n_last_blocks_list))),
                               head_configs(n_last_blocks_list)):
        in_dim = (n + int(avg)) * embed_dim
        params.append({
            "kernel": HEAD_INIT_STD * jax.random.normal(key_i, (n_lrs, in_dim, num_classes), jnp.float32),
            "bias": jnp.zeros((n_lrs, num_classes), jnp.float32),
        })
    return params


def heads_logits(params, feats: LinearFeatures, n_last_blocks_list=N_LAST_BLOCKS_LIST):
    """List (per head config) of logits [L, B, C]."""
    out = []
    for p, (n, avg) in zip(params, head_configs(n_last_blocks_list)):
        x = create_linear_input(feats, n, avg)
        out.append(jnp.einsum("bf,lfc->lbc", x, p["kernel"], precision=jax.lax.Precision.HIGHEST)
                   + p["bias"][:, None, :])
    return out


def heads_loss(params, feats: LinearFeatures, labels, n_last_blocks_list=N_LAST_BLOCKS_LIST):
    """Sum over all heads of the batch-mean cross-entropy (official: `sum(CE_k)`)."""
    total = 0.0
    for logits in heads_logits(params, feats, n_last_blocks_list):
        logp = jax.nn.log_softmax(logits, axis=-1)  # [L, B, C]
        nll = -jnp.take_along_axis(logp, labels[None, :, None], axis=-1)[..., 0]
        total = total + jnp.sum(jnp.mean(nll, axis=1))
    return total


def cosine_lr_factor(step, max_iter: int):
    """torch CosineAnnealingLR(T_max=max_iter, eta_min=0) factor at scheduler step `step`."""
    return 0.5 * (1.0 + jnp.cos(jnp.pi * step / max_iter))


def sgd_momentum_update(params, momentum_buf, grads, lrs):
    """torch SGD (momentum 0.9, dampening 0, no nesterov, wd 0): buf = 0.9 buf + g; p -= lr * buf.
    lrs [L] is the per-learning-rate-group lr at this step (leading axis of every parameter)."""
    new_buf = jax.tree.map(lambda b, g: MOMENTUM * b + g, momentum_buf, grads)
    new_params = jax.tree.map(
        lambda p, b: p - lrs.reshape((-1,) + (1,) * (p.ndim - 1)) * b, params, new_buf)
    return new_params, new_buf


def make_train_step(max_iter: int, base_lrs, n_last_blocks_list=N_LAST_BLOCKS_LIST):
    """Jitted `(params, buf, feats, labels, step) -> (params, buf, loss)` for all heads at once."""
    base_lrs = jnp.asarray(base_lrs, jnp.float32)

    @jax.jit
    def step_fn(params, buf, feats, labels, step):
        loss, grads = jax.value_and_grad(heads_loss)(params, feats, labels, n_last_blocks_list)
        lrs = base_lrs * cosine_lr_factor(step, max_iter)
        params, buf = sgd_momentum_update(params, buf, grads, lrs)
        return params, buf, loss

    return step_fn


def evaluate_heads(params, feats: LinearFeatures, labels, base_lrs, *, batch: int = 1024,
                   n_last_blocks_list=N_LAST_BLOCKS_LIST) -> dict[str, float]:
    """Top-1 accuracy (fraction) of every head on a feature set. Returns {head_name: accuracy}."""
    labels = np.asarray(labels)
    correct = None

    @jax.jit
    def hits(params, f, y):
        return jnp.stack([jnp.sum(jnp.argmax(lg, -1) == y[None, :], axis=1)
                          for lg in heads_logits(params, f, n_last_blocks_list)])  # [G, L]

    n = len(labels)
    for start in range(0, n, batch):
        f = LinearFeatures(*(np.asarray(a[start : start + batch]) for a in feats))
        h = np.asarray(hits(params, f, jnp.asarray(labels[start : start + batch])))
        correct = h if correct is None else correct + h
    names = iter(head_names(base_lrs, n_last_blocks_list))
    return {next(names): float(c) / n for c in correct.reshape(-1)}


def train_linear_heads(
    train_features: LinearFeatures | None,
    train_labels,
    *,
    num_classes: int,
    batch_size: int = 128,
    max_iter: int = 12500,
    learning_rates: Sequence[float] = LEARNING_RATES,
    n_last_blocks_list: Sequence[int] = N_LAST_BLOCKS_LIST,
    seed: int = 0,
    batch_fn: Callable | None = None,
    embed_dim: int | None = None,
    progress: bool = True,
    checkpoint_path: str | None = None,
    checkpoint_every: int = 1250,
):
    """Train all heads. Returns (params, scaled_lrs).

    With `checkpoint_path`, the heads, momentum buffers and iteration are saved there every
    `checkpoint_every` iterations and at the end; a run finding that file (same settings) continues from it
    with the same batches as an uninterrupted run (pass p of the cached set is permutation
    default_rng([seed, p]); augmented batches are seeded by iteration).

    Cached mode: train_features [N, ...] + train_labels [N]; batches are drawn by reshuffling the set every
    pass (seed `seed`), full batches only (official: infinite shuffled sampler, drop_last).
    Augmented mode: `batch_fn(it) -> (LinearFeatures [B, ...], labels [B])` supplies each iteration's batch
    (train_features is then None and embed_dim must be given).
    """
    from tqdm.auto import tqdm

    lrs = scale_lrs(learning_rates, batch_size)
    if train_features is not None:
        n = len(train_labels)
        if n < batch_size:
            raise ValueError(f"train set has {n} samples < batch size {batch_size}; lower --batch-size")
        embed_dim = train_features.cls_tokens.shape[-1]
        labels_np = np.asarray(train_labels, np.int32)
    elif batch_fn is None or embed_dim is None:
        raise ValueError("give train_features, or batch_fn together with embed_dim")
    params = init_heads(jax.random.key(seed), embed_dim, num_classes, len(lrs), n_last_blocks_list)
    buf = jax.tree.map(jnp.zeros_like, params)
    settings = dict(batch_size=batch_size, max_iter=max_iter, lrs=[float(v) for v in lrs], seed=seed,
                    n_last_blocks_list=list(n_last_blocks_list), num_classes=num_classes, embed_dim=int(embed_dim))
    start = 0
    if checkpoint_path and os.path.exists(checkpoint_path):
        params, buf, start = load_training_checkpoint(checkpoint_path, params, settings)
        logger.info("linear heads: resuming from %s at iteration %d", checkpoint_path, start)
    step_fn = make_train_step(max_iter, lrs, n_last_blocks_list)
    loss = None
    bar = tqdm(range(start, max_iter), desc="linear heads", disable=not progress, initial=start, total=max_iter)
    for it in bar:
        if train_features is not None:
            per_pass = n // batch_size  # full batches only
            order = np.random.default_rng([seed, it // per_pass]).permutation(n)
            idx = order[(it % per_pass) * batch_size : (it % per_pass + 1) * batch_size]
            feats = LinearFeatures(*(np.asarray(a)[idx] for a in train_features))
            labels = labels_np[idx]
        else:
            feats, labels = batch_fn(it)
        params, buf, loss = step_fn(params, buf, feats, jnp.asarray(labels, jnp.int32), jnp.float32(it))
        if it % 50 == 0 or it == max_iter - 1:
            bar.set_postfix(loss=f"{float(loss):.4f}")
        if checkpoint_path and ((it + 1) % checkpoint_every == 0 or it == max_iter - 1):
            save_training_checkpoint(checkpoint_path, params, buf, it + 1, settings)
    return params, lrs


def save_training_checkpoint(path: str, params, buf, iteration: int, settings: dict) -> None:
    """Heads + momentum buffers + next iteration + the settings they belong to, written atomically."""
    arrays = {}
    for name, tree in (("params", params), ("buf", buf)):
        for g, group in enumerate(tree):
            for k, v in group.items():
                arrays[f"{name}/{g}/{k}"] = np.asarray(v)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, iteration=iteration, settings=json.dumps(settings), **arrays)
    os.replace(tmp, path)


def load_training_checkpoint(path: str, like_params, settings: dict):
    """(params, buf, next iteration) from `save_training_checkpoint`; other settings -> ValueError."""
    z = np.load(path)
    saved = json.loads(str(z["settings"]))
    if saved != json.loads(json.dumps(settings)):
        diff = {k: (saved.get(k), v) for k, v in json.loads(json.dumps(settings)).items() if saved.get(k) != v}
        raise ValueError(f"{path} was written with other settings {diff} (saved, now); delete it or use "
                         "another --output-dir to start over")
    trees = []
    for name in ("params", "buf"):
        trees.append([{k: jnp.asarray(z[f"{name}/{g}/{k}"]) for k in group} for g, group in enumerate(like_params)])
    return trees[0], trees[1], int(z["iteration"])


def select_best(accuracies: dict[str, float]) -> dict:
    """Official selection: the first head with the strictly highest val top-1."""
    best_name, best = "", 0.0
    for name, acc in accuracies.items():
        if acc > best:
            best_name, best = name, acc
    return {"name": best_name, "accuracy": best}


# ----------------------------------------------------------------------------- end to end


def linear_eval(
    model,
    train_source,
    val_source,
    *,
    batch_size: int = 128,
    epochs: int = 10,
    epoch_length: int = 1250,
    iterations: int | None = None,
    learning_rates: Sequence[float] = LEARNING_RATES,
    augment: bool = False,
    image_size: int = 224,
    resize_size: int = 256,
    max_samples: int | None = None,
    num_workers: int = 0,
    seed: int = 0,
    progress: bool = True,
    test_sources: Sequence = (),
    output_dir: str | None = None,
    checkpoint_every: int = 1250,
    distributed: bool = False,
) -> dict:
    """Linear probe of an NNX backbone on two labelled sources (spec strings or sources).

    test_sources: more labelled sets scored with the head chosen on val (official `--test-datasets`).
    output_dir: training is checkpointed to `output_dir/running_checkpoint_linear.npz` (resumed when
      present) and the best head on val is saved to `output_dir/best_linear_head.npz` (`load_linear_head`;
      `python -m dinov2_jax.extract --linear-head` classifies images with it).
    Returns {"best_classifier": {"name", "accuracy" (fraction)}, "val_accuracy": percent,
    "heads": {name: fraction}, "max_iter": int, "augment": bool, "test_accuracy": {spec: percent},
    "head_path": path or None}.
    """
    from dinov2_jax.eval.features import extract_features, load_train_val, make_augmented_batch_fn

    # both sets exist, are non-empty and share class names before any backbone forward
    train_src, val_src = load_train_val(train_source, val_source, max_samples=max_samples)
    test_srcs = [load_train_val(train_src, t, max_samples=max_samples)[1] for t in test_sources]
    ckpt = os.path.join(output_dir, "running_checkpoint_linear.npz") if output_dir else None
    resume = dict(checkpoint_path=ckpt, checkpoint_every=checkpoint_every)
    n_list = tuple(n for n in N_LAST_BLOCKS_LIST if n <= model.n_blocks)
    if n_list != N_LAST_BLOCKS_LIST:
        logger.warning("backbone has only %d blocks: heads use n_last_blocks in %s (official %s)",
                       model.n_blocks, n_list, N_LAST_BLOCKS_LIST)
    feat_fn = make_linear_feature_fn(model, max(n_list))
    max_iter = iterations if iterations is not None else epochs * epoch_length
    if max_iter < 1:
        raise ValueError(f"number of iterations must be >= 1, got {max_iter}")
    common = dict(batch_size=batch_size, image_size=image_size, resize_size=resize_size,
                  num_workers=num_workers, progress=progress, distributed=distributed)
    if distributed and jax.process_index() != 0:  # every process trains the same heads; one writes files
        output_dir = None
        resume = dict(checkpoint_path=None, checkpoint_every=checkpoint_every)
    if augment:
        labels_all = train_src.labels()
        batch_fn = make_augmented_batch_fn(feat_fn, train_src, batch_size=batch_size, crop_size=image_size,
                                           seed=seed, num_workers=num_workers)
        embed_dim = int(model.embed_dim)
        num_classes = int(labels_all.max()) + 1
        params, lrs = train_linear_heads(None, None, num_classes=num_classes, batch_size=batch_size,
                                         max_iter=max_iter, learning_rates=learning_rates, seed=seed,
                                         batch_fn=batch_fn, embed_dim=embed_dim, progress=progress,
                                         n_last_blocks_list=n_list, **resume)
    else:
        train_feats, train_labels = extract_features(feat_fn, train_src, desc="linear train features", **common)
        num_classes = int(np.max(train_labels)) + 1
        params, lrs = train_linear_heads(train_feats, train_labels, num_classes=num_classes,
                                         batch_size=batch_size, max_iter=max_iter,
                                         learning_rates=learning_rates, seed=seed, progress=progress,
                                         n_last_blocks_list=n_list, **resume)
    val_feats, val_labels = extract_features(feat_fn, val_src, desc="linear val features", **common)
    accs = evaluate_heads(params, val_feats, val_labels, lrs, n_last_blocks_list=n_list)
    best = select_best(accs)
    test_accuracy = {}
    for spec, src in zip(test_sources, test_srcs):  # official: the head chosen on val, scored on each test set
        feats, labels = extract_features(feat_fn, src, desc=f"linear test features {spec}", **common)
        test_accuracy[str(spec)] = 100.0 * evaluate_heads(params, feats, labels, lrs, n_last_blocks_list=n_list)[best["name"]]
    head_path = None
    if output_dir:
        head_path = save_linear_head(os.path.join(output_dir, "best_linear_head.npz"), params, lrs, best, n_list,
                                     classes=list(train_src.classes or [])[:num_classes], image_size=image_size, resize_size=resize_size)
    return {"best_classifier": best, "val_accuracy": 100.0 * best["accuracy"], "heads": accs,
            "max_iter": max_iter, "augment": augment, "test_accuracy": test_accuracy, "head_path": head_path}


class LinearHead(NamedTuple):
    """One trained head: logits = create_linear_input(features, use_n_blocks, use_avgpool) @ kernel + bias."""
    kernel: np.ndarray  # [F, C]
    bias: np.ndarray  # [C]
    use_n_blocks: int
    use_avgpool: bool
    classes: list  # class names (train folder names), or [] when the dataset has none
    name: str
    image_size: int
    resize_size: int


def save_linear_head(path: str, params, lrs, best: dict, n_last_blocks_list, *, classes=None,
                     image_size: int = 224, resize_size: int = 256) -> str:
    """Save the head named `best["name"]` (official naming) as an .npz `load_linear_head` reads."""
    names = head_names(lrs, n_last_blocks_list)
    if best["name"] not in names:
        raise ValueError(f"no head named {best['name']!r}")
    g, l = divmod(names.index(best["name"]), len(lrs))
    n, avg = head_configs(n_last_blocks_list)[g]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, kernel=np.asarray(params[g]["kernel"][l]), bias=np.asarray(params[g]["bias"][l]),
             use_n_blocks=n, use_avgpool=avg, classes=np.asarray(list(classes or []), dtype=str),
             name=best["name"], val_accuracy=best["accuracy"], image_size=image_size, resize_size=resize_size)
    return path


def load_linear_head(path: str) -> LinearHead:
    """A head saved by `save_linear_head` (`best_linear_head.npz` of a linear-probe run)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"linear head {path!r} does not exist (python -m dinov2_jax.eval.linear "
                                "--output-dir DIR writes DIR/best_linear_head.npz)")
    z = np.load(path)
    return LinearHead(z["kernel"], z["bias"], int(z["use_n_blocks"]), bool(z["use_avgpool"]),
                      [str(c) for c in z["classes"]], str(z["name"]), int(z["image_size"]), int(z["resize_size"]))


def linear_head_logits(head: LinearHead, feats: LinearFeatures) -> np.ndarray:
    """Class scores [B, C] of a saved head on LinearFeatures holding >= use_n_blocks blocks."""
    x = np.asarray(create_linear_input(feats, head.use_n_blocks, head.use_avgpool))
    if x.shape[1] != head.kernel.shape[0]:
        raise ValueError(f"head expects {head.kernel.shape[0]} input features, the backbone gives {x.shape[1]}: "
                         "use the backbone the head was trained on")
    return x @ head.kernel + head.bias


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m dinov2_jax.eval.linear", description="DINOv2 linear probe (JAX)")
    add_eval_cli_args(p, default_batch_size=128, batch_help="official: 128 per GPU")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--epoch-length", type=int, default=1250, help="iterations per epoch (official 1250)")
    p.add_argument("--iterations", type=int, default=None, help="total iterations (overrides epochs x length)")
    p.add_argument("--learning-rates", type=float, nargs="+", default=list(LEARNING_RATES))
    p.add_argument("--augment", action="store_true",
                   help="official protocol: RandomResizedCrop+flip views through the backbone every iteration "
                        "(slow); default trains on cached eval-transform features")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-datasets", nargs="+", default=[],
                   help="labelled sets scored with the head chosen on val (official --test-datasets)")
    p.add_argument("--output-dir", default=None,
                   help="training checkpoint (resumed when present) and best_linear_head.npz go here")
    p.add_argument("--checkpoint-every", type=int, default=1250, help="iterations between training checkpoints")
    p.add_argument("--output", default="results_eval_linear.json", help="results file (JSON lines appended)")
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = get_args_parser().parse_args(argv)
    from dinov2_jax.data.augmentations import eval_resize_size

    from dinov2_jax.eval.features import init_cli_distributed, load_train_val

    writer = init_cli_distributed(args)
    train_src, val_src = load_train_val(args.train_dataset, args.val_dataset, max_samples=args.max_samples)
    tests = [load_train_val(train_src, t, max_samples=args.max_samples)[1] for t in args.test_datasets]
    model = load_cli_model(args)
    res = linear_eval(model, train_src, val_src, batch_size=args.batch_size,
                      epochs=args.epochs, epoch_length=args.epoch_length, iterations=args.iterations,
                      learning_rates=args.learning_rates, augment=args.augment, image_size=args.image_size,
                      resize_size=eval_resize_size(args.image_size), num_workers=args.num_workers, seed=args.seed,
                      test_sources=tests, output_dir=args.output_dir, checkpoint_every=args.checkpoint_every,
                      distributed=args.distributed)
    if not writer:
        return 0
    res["test_accuracy"] = dict(zip(args.test_datasets, res["test_accuracy"].values()))
    logger.info("best classifier: %s", res["best_classifier"])
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "a") as f:  # official layout of results_eval_linear.json
        f.write(f"iter: {res['max_iter']}\n")
        f.write(json.dumps({"best_classifier": res["best_classifier"]}) + "\n")
        f.write(json.dumps({f"{args.val_dataset}_accuracy": res["val_accuracy"]}) + "\n")
        for spec, acc in res["test_accuracy"].items():
            f.write(json.dumps({f"{spec}_accuracy": acc}) + "\n")
        f.write("\n")
    print(json.dumps({k: v for k, v in res.items() if k != "heads"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
