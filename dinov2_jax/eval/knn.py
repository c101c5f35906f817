"""Weighted k-NN classification on frozen features (official DINOv2 `eval/knn.py`, spec section 7.1).

Math (pure functions, all on host-sized arrays):
  * features are the final-norm cls token, L2-normalised (`F.normalize`, eps 1e-12);
  * cosine similarity is a matmul, searched in chunks of the train set with a running top-`max_k` merge
    (the official code does the same across GPUs: per-shard top-k, then a second top-k on the union);
  * `w = softmax(topk_sims / T)` over the top `max_k` neighbours, `probas_k = sum_{j<k} w_j onehot(label_j)`;
  * top-1 / top-5 micro accuracy (fraction of samples whose label is among the 5 best classes).

CLI:
  python -m dinov2_jax.eval.knn --weights W --train-dataset SPEC --val-dataset SPEC \
      [--arch dinov2_vits14] [--batch-size 256] [--nb-knn 10 20 100 200] [--temperature 0.07] \
      [--output results_eval_knn.json]
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
from typing import Callable, Iterable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dinov2_jax.eval.features import add_eval_cli_args, load_cli_model

logger = logging.getLogger("dinov2_jax.eval.knn")

DEFAULT_NB_KNN = (10, 20, 100, 200)
DEFAULT_TEMPERATURE = 0.07


def l2_normalize(x, eps: float = 1e-12):
    """`x [N, D]` -> `x / max(||x||_2, eps)` row-wise, as torch `F.normalize(p=2, dim=1)`."""
    x = jnp.asarray(x, jnp.float32)
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.maximum(norm, eps)


class TrainIndex(NamedTuple):
    """Train set laid out for the chunked search, on device once: features [n_chunks, C, D] (unit rows),
    labels [n_chunks, C] int32 (-1 on padding rows), valid [n_chunks, C] bool."""
    features: jax.Array
    labels: jax.Array
    valid: jax.Array
    size: int


def build_train_index(train_features, train_labels, chunk_size: int = 4096) -> TrainIndex:
    """Pad the (already L2-normalised) train set [T, D] to whole chunks and move it to the device."""
    feats = np.asarray(train_features, np.float32)
    labels = np.asarray(train_labels, np.int32)
    n = feats.shape[0]
    if n == 0 or labels.shape != (n,):
        raise ValueError(f"train features {feats.shape} and labels {labels.shape} must be [T, D] and [T], T > 0")
    chunk = min(chunk_size, n)
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n  # padding rows: zero features, label -1, masked to -inf similarity
    feats = np.concatenate([feats, np.zeros((pad, feats.shape[1]), np.float32)])
    labels = np.concatenate([labels, np.full(pad, -1, np.int32)])
    valid = np.arange(n_chunks * chunk) < n
    return TrainIndex(jnp.asarray(feats.reshape(n_chunks, chunk, -1)), jnp.asarray(labels.reshape(n_chunks, chunk)),
                      jnp.asarray(valid.reshape(n_chunks, chunk)), n)


@functools.partial(jax.jit, static_argnames=("k",))
def _search(query, features, labels, valid, k: int):
    """Scan over train chunks keeping the running top-k. query [Q, D] -> (sims [Q, k], labels [Q, k])."""

    def merge(carry, chunk):
        best_sims, best_labels = carry
        feats, labs, ok = chunk
        # [Q, C] cosine similarity (unit vectors); HIGHEST keeps fp32 on GPU/TPU too (no TF32/bf16 passes)
        sims = jnp.matmul(query, feats.T, precision=jax.lax.Precision.HIGHEST)
        sims = jnp.where(ok[None, :], sims, -jnp.inf)
        # second top-k over (running best) U (this chunk): the merge the official code does across ranks
        all_sims = jnp.concatenate([best_sims, sims], axis=1)
        all_labels = jnp.concatenate([best_labels, jnp.broadcast_to(labs[None, :], sims.shape)], axis=1)
        top, idx = jax.lax.top_k(all_sims, k)
        return (top, jnp.take_along_axis(all_labels, idx, axis=1)), None

    q = query.shape[0]
    init = (jnp.full((q, k), -jnp.inf, jnp.float32), jnp.full((q, k), -1, jnp.int32))
    (sims, labs), _ = jax.lax.scan(merge, init, (features, labels, valid))
    return sims, labs


def knn_search(query, train, train_labels=None, k: int = 200, *, chunk_size: int = 4096):
    """Top-`k` cosine neighbours of each query among the train set, searched chunk by chunk.

    query [Q, D] and the train features must already be L2-normalised. `train` is a TrainIndex, or
    features [T, D] together with train_labels [T]. Returns (sims [Q, k] float32 sorted descending,
    labels [Q, k] int32). Memory is O(Q * (k + chunk)) besides the train set.
    """
    index = train if isinstance(train, TrainIndex) else build_train_index(train, train_labels, chunk_size)
    if not 1 <= k <= index.size:
        raise ValueError(f"k={k} must be in [1, number of train samples={index.size}]")
    query = jnp.asarray(query, jnp.float32)
    return _search(query, index.features, index.labels, index.valid, k=k)


def knn_vote(topk_sims, topk_labels, ks: Sequence[int], temperature: float, num_classes: int):
    """Weighted voting. topk_sims / topk_labels [Q, max_k] (sorted descending) -> {k: probas [Q, C]}.

    The softmax is taken once over all `max_k` neighbours and the first k weights are summed per class,
    exactly as the official KnnModule (so the weights for k < max_k do not sum to 1).
    """
    max_k = topk_sims.shape[1]
    if any(k > max_k or k < 1 for k in ks):
        raise ValueError(f"every k in {list(ks)} must be in [1, {max_k}]")
    weights = jax.nn.softmax(jnp.asarray(topk_sims, jnp.float32) / temperature, axis=1)  # [Q, max_k]
    labels = jnp.asarray(topk_labels, jnp.int32)
    weights = jnp.where(labels >= 0, weights, 0.0)  # -1 = no neighbour (padding): no vote
    labels = jnp.maximum(labels, 0)
    rows = jnp.arange(labels.shape[0])[:, None]
    # scatter-add instead of the official one_hot [Q, max_k, C] product: same sums, O(Q*C) memory
    return {k: jnp.zeros((labels.shape[0], num_classes), jnp.float32).at[rows, labels[:, :k]].add(weights[:, :k])
            for k in ks}


def topk_hits(probas, targets, k: int) -> int:
    """Number of rows whose target is among the `k` highest scores. probas [Q, C], targets [Q]."""
    probas = jnp.asarray(probas)
    k = min(k, probas.shape[1])
    _, idx = jax.lax.top_k(probas, k)
    return int(jnp.sum(jnp.any(idx == jnp.asarray(targets)[:, None], axis=1)))


def topk_accuracy(probas, targets, k: int) -> float:
    """Fraction of rows whose target is among the `k` highest scores (micro average). probas [Q, C]."""
    return topk_hits(probas, targets, k) / len(targets)


def clamp_ks(ks: Iterable[int], n_train: int) -> list[int]:
    """k values above the train-set size are clamped to it (the official code would crash); sorted, unique."""
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"k values must be >= 1, got {ks}")
    clamped = sorted({min(k, n_train) for k in ks})
    if clamped != sorted(set(ks)):
        logger.warning("k-NN: train set has only %d samples; k values %s clamped to %s", n_train, ks, clamped)
    return clamped


def knn_classify(
    train_features,
    train_labels,
    val_features,
    val_labels,
    *,
    nb_knn: Sequence[int] = DEFAULT_NB_KNN,
    temperature: float = DEFAULT_TEMPERATURE,
    num_classes: int | None = None,
    query_batch: int = 256,
    chunk_size: int = 4096,
) -> dict[str, float]:
    """k-NN accuracy from features. *_features [N, D] (raw, normalised here), *_labels [N] int.

    Returns the official result keys, values in percent: {"('full', 20) Top 1": 61.2, ... Top 5 ...}.
    num_classes defaults to max(train_labels) + 1 as in the official code.
    """
    train_labels = np.asarray(train_labels, np.int64)
    val_labels = np.asarray(val_labels, np.int64)
    if train_labels.ndim != 1 or len(train_labels) != len(train_features):
        raise ValueError(f"train labels {train_labels.shape} do not match train features {np.shape(train_features)}")
    if val_labels.ndim != 1 or len(val_labels) != len(val_features):
        raise ValueError(f"val labels {val_labels.shape} do not match val features {np.shape(val_features)}")
    if len(train_labels) == 0 or len(val_labels) == 0:
        raise ValueError("k-NN needs at least one train and one val sample")
    if train_labels.min() < 0:
        raise ValueError("train labels must be >= 0 (unlabelled data cannot be used for k-NN)")
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
    ks = clamp_ks(nb_knn, len(train_labels))
    max_k = max(ks)
    index = build_train_index(np.asarray(l2_normalize(train_features)), train_labels, chunk_size)
    val_n = np.asarray(l2_normalize(val_features))
    hits = {(k, t): 0 for k in ks for t in (1, 5)}
    for start in range(0, len(val_labels), query_batch):
        y = val_labels[start : start + query_batch]
        q = val_n[start : start + query_batch]
        if len(q) < query_batch and len(val_labels) > query_batch:  # pad: one compiled shape
            q = np.concatenate([q, np.zeros((query_batch - len(q), q.shape[1]), np.float32)])
        sims, labs = knn_search(q, index, k=max_k)
        probas = knn_vote(sims[: len(y)], labs[: len(y)], ks, temperature, num_classes)
        for k in ks:
            for t in (1, 5):
                hits[(k, t)] += topk_hits(probas[k], y, t)
    n = len(val_labels)
    results = {}
    for k in ks:
        results[f"('full', {k}) Top 1"] = 100.0 * hits[(k, 1)] / n
        results[f"('full', {k}) Top 5"] = 100.0 * hits[(k, 5)] / n
    return results


def knn_eval(
    model_fn: Callable,
    train_source,
    val_source,
    *,
    batch_size: int = 256,
    nb_knn: Sequence[int] = DEFAULT_NB_KNN,
    temperature: float = DEFAULT_TEMPERATURE,
    image_size: int = 224,
    resize_size: int = 256,
    max_samples: int | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """k-NN accuracy of a backbone on two labelled sources (what the trainer calls periodically).

    model_fn: an NNX backbone (`model(x) -> [B, D]` cls token) or any callable images [B, H, W, 3] -> [B, D]
      (a plain callable is used as given: jit it yourself).
    train_source / val_source: dataset spec strings ("folder:PATH", "tfds:NAME:SPLIT", "demo") or sources
      from `dinov2_jax.data.sources.make_source` (records with an image and an integer label).
    Images go through the official eval transform (resize `resize_size` bicubic, center crop `image_size`,
    ImageNet normalisation), decoded by `num_workers` Grain worker processes (0: in this process).
    Returns {"('full', k) Top 1": percent, ...}.
    """
    from dinov2_jax.eval.features import extract_features, make_feature_fn

    fn = make_feature_fn(model_fn, kind="cls")
    common = dict(batch_size=batch_size, image_size=image_size, resize_size=resize_size,
                  max_samples=max_samples, num_workers=num_workers, progress=progress)
    train_feats, train_labels = extract_features(fn, train_source, desc="k-NN train features", **common)
    val_feats, val_labels = extract_features(fn, val_source, desc="k-NN val features", **common)
    return knn_classify(train_feats, train_labels, val_feats, val_labels, nb_knn=nb_knn, temperature=temperature)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m dinov2_jax.eval.knn", description="DINOv2 k-NN evaluation (JAX)")
    add_eval_cli_args(p, default_batch_size=256)
    p.add_argument("--nb-knn", type=int, nargs="+", default=list(DEFAULT_NB_KNN))
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE)
    p.add_argument("--output", default="results_eval_knn.json",
                   help="results file; one JSON object per line is appended, as the official code")
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = get_args_parser().parse_args(argv)
    from dinov2_jax.data.augmentations import eval_resize_size

    model = load_cli_model(args)
    results = knn_eval(model, args.train_dataset, args.val_dataset, batch_size=args.batch_size,
                       nb_knn=args.nb_knn, temperature=args.temperature, image_size=args.image_size,
                       resize_size=eval_resize_size(args.image_size), max_samples=args.max_samples,
                       num_workers=args.num_workers)
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    with open(args.output, "a") as f:
        for key, value in results.items():
            logger.info("%s: %.2f", key, value)
            f.write(json.dumps({key: value}) + "\n")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
