"""Weighted k-NN classification on frozen features (official DINOv2 `eval/knn.py`).

Math (pure functions, all on host-sized arrays):
  * features are the final-norm cls token, L2-normalised (`F.normalize`, eps 1e-12);
  * cosine similarity is a matmul, searched in chunks of the train set with a running top-`max_k` merge
    (the official code does the same across GPUs: per-shard top-k, then a second top-k on the union);
  * `w = softmax(topk_sims / T)` over the top `max_k` neighbours, `probas_k = sum_{j<k} w_j onehot(label_j)`;
  * top-1 / top-5 micro accuracy (fraction of samples whose label is among the 5 best classes);
  * few-shot: class-balanced train subsets drawn as the official `filter_train` (bit-exact, see
    `dinov2_jax/eval/torch_rng.py`), accuracies averaged over `n_tries` subsets.

CLI:
  python -m dinov2_jax.eval.knn --weights W --train-dataset SPEC --val-dataset SPEC \
      [--arch dinov2_vits14] [--batch-size 256] [--nb-knn 10 20 100 200] [--temperature 0.07 ...] \
      [--n-per-class-list -1 1 5] [--n-tries 3] [--output results_eval_knn.json]
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
from dinov2_jax.models.layers.norm import l2_normalize
from dinov2_jax.padding import pad_rows, valid_rows

logger = logging.getLogger("dinov2_jax.eval.knn")

DEFAULT_NB_KNN = (10, 20, 100, 200)
DEFAULT_TEMPERATURE = 0.07


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
    # padding rows: zero features, label -1, masked to -inf similarity
    feats, labels = pad_rows(feats, n_chunks * chunk), pad_rows(labels, n_chunks * chunk, fill=-1)
    valid = valid_rows(n_chunks * chunk, n)
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


def sample_per_class(train_labels, n_per_class: int, seed: int) -> np.ndarray:
    """Official few-shot train subset (`filter_train` in dinov2/eval/knn.py): with torch seeded by
    `seed`, for each class in increasing label order draw `torch.randperm(count)` and keep the first
    `n_per_class` of that class's indices (all of them if it has fewer). Returns indices [M] into
    train_labels, class-major, identical to the official ones (torch's generator reproduced in numpy)."""
    from dinov2_jax.eval.torch_rng import TorchCPUGenerator

    labels = np.asarray(train_labels, np.int64)
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    gen = TorchCPUGenerator(seed)
    out = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)  # increasing index order, as (inverse == i).nonzero()
        out.append(members[gen.randperm(len(members))[:n_per_class]])
    return np.concatenate(out)


def few_shot_ks(nb_knn: Sequence[int], n_per_class: int) -> list[int]:
    """k values of a few-shot subset (official): nb_knn plus n_per_class, keeping those <= n_per_class."""
    return sorted(k for k in set(int(k) for k in nb_knn) | {int(n_per_class)} if k <= n_per_class)


def _knn_hits(index: TrainIndex, val_n, val_labels, ks, temperatures, num_classes, query_batch):
    """Top-1 / top-5 hit counts {(k, T, 1 | 5): int} of one train index for all ks and temperatures."""
    hits = {(k, t, top): 0 for k in ks for t in temperatures for top in (1, 5)}
    for start in range(0, len(val_labels), query_batch):
        y = val_labels[start : start + query_batch]
        q = val_n[start : start + query_batch]
        if len(q) < query_batch and len(val_labels) > query_batch:  # pad: one compiled shape
            q = pad_rows(q, query_batch)
        sims, labs = knn_search(q, index, k=max(ks))  # one search serves every k and temperature
        for t in temperatures:
            probas = knn_vote(sims[: len(y)], labs[: len(y)], ks, t, num_classes)
            for k in ks:
                for top in (1, 5):
                    hits[(k, t, top)] += topk_hits(probas[k], y, top)
    return hits


def result_key(subset: str, k: int, top: int, temperature: float | None = None) -> str:
    """Official result key, e.g. "('full', 20) Top 1" or "('5 per class', 5) Top 5"; with several
    temperatures in one run the temperature is appended: "('full', 20) Top 1 T=0.07"."""
    key = f"{(subset, int(k))} Top {top}"
    return key if temperature is None else f"{key} T={temperature:g}"


def knn_classify(
    train_features,
    train_labels,
    val_features,
    val_labels,
    *,
    nb_knn: Sequence[int] = DEFAULT_NB_KNN,
    temperature: float | Sequence[float] = DEFAULT_TEMPERATURE,
    n_per_class_list: Sequence[int] = (-1,),
    n_tries: int = 1,
    num_classes: int | None = None,
    query_batch: int = 256,
    chunk_size: int = 4096,
) -> dict[str, float]:
    """k-NN accuracy from features. *_features [N, D] (raw, normalised here), *_labels [N] int.

    n_per_class_list: -1 = the full train set; n > 0 = class-balanced subsets of n images per class,
      drawn `n_tries` times (seeds 0..n_tries-1) exactly as the official `filter_train`, with
      k in nb_knn + [n] restricted to k <= n; accuracies are averaged over the tries.
    temperature: one value (official keys) or several (each key gets " T=<value>"); every k and
      temperature comes from one neighbour search per train subset.
    Returns the official result keys, values in percent: {"('full', 20) Top 1": 61.2, ... Top 5 ...,
    "('5 per class', 5) Top 1": ...}. num_classes defaults to max(train_labels) + 1 as in the official code.
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
    if n_tries < 1:
        raise ValueError(f"n_tries must be >= 1, got {n_tries}")
    several_t = not np.isscalar(temperature)
    temperatures = [float(t) for t in (temperature if several_t else [temperature])]
    if not temperatures or any(t <= 0 for t in temperatures):
        raise ValueError(f"temperatures must be > 0, got {temperatures}")
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
    train_n = np.asarray(l2_normalize(jnp.asarray(train_features, jnp.float32)))
    val_n = np.asarray(l2_normalize(jnp.asarray(val_features, jnp.float32)))
    n = len(val_labels)
    results = {}
    for npc in n_per_class_list:
        npc = int(npc)
        if npc == 0:
            raise ValueError("n_per_class must be > 0 (or -1 for the full train set), got 0")
        if npc < 0:
            name, subsets, ks = "full", [np.arange(len(train_labels))], clamp_ks(nb_knn, len(train_labels))
        else:
            name = f"{npc} per class"
            subsets = [sample_per_class(train_labels, npc, seed=t) for t in range(n_tries)]
            ks = few_shot_ks(nb_knn, npc)
        accs = []
        for idx in subsets:
            kept = [k for k in ks if k <= len(idx)]
            if kept != ks:
                raise ValueError(f"k-NN {name}: a subset has {len(idx)} images < k values {ks}")
            index = build_train_index(train_n[idx], train_labels[idx], chunk_size)
            accs.append(_knn_hits(index, val_n, val_labels, ks, temperatures, num_classes, query_batch))
        for t in temperatures:
            for k in ks:
                for top in (1, 5):
                    mean = float(np.mean([a[(k, t, top)] / n for a in accs]))  # official: mean over tries
                    results[result_key(name, k, top, t if several_t else None)] = 100.0 * mean
    return results


def knn_eval(
    model_fn: Callable,
    train_source,
    val_source,
    *,
    batch_size: int = 256,
    nb_knn: Sequence[int] = DEFAULT_NB_KNN,
    temperature: float | Sequence[float] = DEFAULT_TEMPERATURE,
    n_per_class_list: Sequence[int] = (-1,),
    n_tries: int = 1,
    image_size: int = 224,
    resize_size: int = 256,
    max_samples: int | None = None,
    num_workers: int = 0,
    progress: bool = True,
    distributed: bool = False,
) -> dict[str, float]:
    """k-NN accuracy of a backbone on two labelled sources (what the trainer calls periodically).

    model_fn: an NNX backbone (`model(x) -> [B, D]` cls token) or any callable images [B, H, W, 3] -> [B, D]
      (a plain callable is used as given: jit it yourself).
    train_source / val_source: dataset spec strings ("folder:PATH", "tfds:NAME:SPLIT", "demo") or sources
      from `dinov2_jax.data.sources.make_source` (records with an image and an integer label). Both are
      opened and checked (non-empty, val class names found in train) before any feature is extracted.
    Images go through the official eval transform (resize `resize_size` bicubic, center crop `image_size`,
    ImageNet normalisation), decoded by `num_workers` Grain worker processes (0: in this process).
    Returns {"('full', k) Top 1": percent, ...} (see `knn_classify` for few-shot and temperatures).
    """
    from dinov2_jax.eval.features import extract_features, load_train_val, make_feature_fn

    train_src, val_src = load_train_val(train_source, val_source, max_samples=max_samples)
    fn = make_feature_fn(model_fn, kind="cls")
    common = dict(batch_size=batch_size, image_size=image_size, resize_size=resize_size,
                  num_workers=num_workers, progress=progress, distributed=distributed)
    train_feats, train_labels = extract_features(fn, train_src, desc="k-NN train features", **common)
    val_feats, val_labels = extract_features(fn, val_src, desc="k-NN val features", **common)
    return knn_classify(train_feats, train_labels, val_feats, val_labels, nb_knn=nb_knn, temperature=temperature,
                        n_per_class_list=n_per_class_list, n_tries=n_tries)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m dinov2_jax.eval.knn", description="DINOv2 k-NN evaluation (JAX)")
    add_eval_cli_args(p, default_batch_size=256)
    p.add_argument("--nb-knn", "--nb_knn", type=int, nargs="+", default=list(DEFAULT_NB_KNN))
    p.add_argument("--temperature", type=float, nargs="+", default=[DEFAULT_TEMPERATURE],
                   help="one or several voting temperatures (several: keys get a ' T=<value>' suffix)")
    p.add_argument("--n-per-class-list", type=int, nargs="+", default=[-1],
                   help="train images per class: -1 = full train set; n > 0 = few-shot subsets (official sampling)")
    p.add_argument("--n-tries", type=int, default=1, help="few-shot subsets drawn per n (seeds 0..n-1), averaged")
    p.add_argument("--output", default="results_eval_knn.json",
                   help="results file; one JSON object per line is appended, as the official code")
    return p


def write_results(path: str, results: dict) -> None:
    """Append results as the official code does: one `{key: value}` JSON object per line."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        for key, value in results.items():
            f.write(json.dumps({key: value}) + "\n")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = get_args_parser().parse_args(argv)
    from dinov2_jax.data.augmentations import eval_resize_size
    from dinov2_jax.eval.features import init_cli_distributed, load_train_val

    writer = init_cli_distributed(args)
    train_src, val_src = load_train_val(args.train_dataset, args.val_dataset, max_samples=args.max_samples)
    model = load_cli_model(args)
    temperature = args.temperature[0] if len(args.temperature) == 1 else args.temperature
    results = knn_eval(model, train_src, val_src, batch_size=args.batch_size, nb_knn=args.nb_knn,
                       temperature=temperature, n_per_class_list=args.n_per_class_list, n_tries=args.n_tries,
                       image_size=args.image_size, resize_size=eval_resize_size(args.image_size),
                       num_workers=args.num_workers, distributed=args.distributed)
    if not writer:
        return 0
    for key, value in results.items():
        logger.info("%s: %.2f", key, value)
    write_results(args.output, results)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
