"""Frozen-backbone feature extraction over labelled image sources (shared by k-NN and linear eval).

A labelled source is anything `dinov2_jax.data.sources.make_source(spec)` returns for a labelled dataset
("folder:PATH" with one sub-folder per class, "tfds:NAME:SPLIT", "demo"), or a spec string for it.
Images go through the official eval transform; batches have one fixed size (the last one is padded and
the padding dropped) so the jitted backbone compiles once.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np


class LabelledImages:
    """Uniform view of a labelled source: `len()`, `source[i]`-style `__getitem__`, `record(i)` ->
    (image, label) or None for an unreadable image (the source logs it), `labels()` -> [N] int64.

    With `max_samples` < len(source), an evenly spaced subset of `max_samples` records is used (index
    floor(i * len / max_samples)), so class-sorted sources such as folders keep every class.
    """

    def __init__(self, source, max_samples: int | None = None):
        self.source = source
        self.label_map = None  # [num source classes] -> label reported here (set by align_class_names)
        total = len(source)
        if total == 0:
            raise ValueError(f"dataset {source!r} is empty")
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        if max_samples is not None and max_samples < total:
            self.indices = (np.arange(max_samples, dtype=np.int64) * total) // max_samples
        else:
            self.indices = np.arange(total, dtype=np.int64)
        self._labels = None

    def __len__(self):
        return len(self.indices)

    @property
    def classes(self):
        return getattr(self.source, "classes", None)

    def __getitem__(self, i):
        if not 0 <= i < len(self):
            raise IndexError(i)
        rec = self.source[int(self.indices[i])]
        if rec is None or self.label_map is None:
            return rec
        image, label = _unpack(rec)
        return image, self._map(label)

    def _map(self, label):
        label = int(label)
        return label if self.label_map is None or label < 0 else int(self.label_map[label])

    def record(self, i):
        rec = self[i]
        if rec is None:
            return None
        image, label = _unpack(rec)
        _check_label(label, self.source)
        return image, int(label)

    def labels(self) -> np.ndarray:
        """All labels; -1 where the image is unreadable. Cheap when the source lists them (folders)."""
        if self._labels is None:
            listed = getattr(self.source, "labels", None)
            if listed is not None and not callable(listed):
                labs = np.asarray([self._map(x) for x in np.asarray(listed, np.int64)[self.indices]], np.int64)
                for lab in labs:
                    _check_label(lab, self.source)
            else:
                recs = (self.record(i) for i in range(len(self)))
                labs = np.asarray([-1 if r is None else r[1] for r in recs], np.int64)
            self._labels = labs
        return self._labels


def _check_label(label, source):
    if int(label) < 0:
        raise ValueError(f"dataset {source!r} has unlabelled images (label -1); evaluation needs a labelled "
                         "dataset, e.g. folder:PATH with one sub-folder per class, or tfds with a label")


def _unpack(record):
    """A source record -> (image, label). Accepts (image, label) pairs and dicts {"image", "label"}."""
    if isinstance(record, dict):
        if "image" not in record or "label" not in record:
            raise ValueError(f"expected a record with 'image' and 'label', got keys {sorted(record)}")
        return record["image"], record["label"]
    if isinstance(record, (tuple, list)) and len(record) == 2:
        return record
    raise TypeError(f"cannot read (image, label) from a record of type {type(record).__name__}")


def load_labelled_source(source, *, max_samples: int | None = None) -> LabelledImages:
    """Spec string or source -> LabelledImages."""
    if isinstance(source, LabelledImages):
        return source
    if isinstance(source, str):
        from dinov2_jax.data.sources import make_source

        source = make_source(source)
    return LabelledImages(source, max_samples=max_samples)


def align_class_names(train: LabelledImages, val: LabelledImages) -> None:
    """Make val labels mean the train classes, matched by class NAME (folder names), not by position.

    A val folder holding a subset of the train classes gets its labels renumbered to the train indices
    (sets `val.label_map`). Val classes absent from train -> ValueError naming them (they could never be
    predicted). Sources without class names (e.g. tfds) keep their integer labels.
    """
    tc, vc = train.classes, val.classes
    if not tc or not vc or list(tc) == list(vc):  # no names (tfds, unlabelled flat folder): labels as they are
        return
    position = {name: i for i, name in enumerate(tc)}
    missing = [name for name in vc if name not in position]
    if len(missing) == len(vc):
        raise ValueError(f"train and val share no class name: train has {_names(tc)}, val has {_names(vc)}; "
                         "the val folder must use the train folder's class sub-folder names")
    if missing:
        raise ValueError(f"val classes {_names(missing)} do not exist in the train set (train classes: "
                         f"{_names(tc)}); remove them from the val set or add them to train")
    val.label_map = np.asarray([position[name] for name in vc], np.int64)


def _names(names, limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)})"


def load_train_val(train_source, val_source, *, max_samples: int | None = None):
    """Open and check both labelled sets BEFORE any feature is extracted: each must exist and be
    non-empty, and val classes are matched to train classes by name (`align_class_names`).
    Returns (train, val) LabelledImages."""
    sets = []
    for what, spec in (("train", train_source), ("val", val_source)):
        try:
            sets.append(load_labelled_source(spec, max_samples=max_samples))
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"{what} dataset {spec!r}: {e}") from e
    align_class_names(*sets)
    return sets[0], sets[1]


def make_feature_fn(model_or_fn, kind: str = "cls") -> Callable:
    """NNX backbone -> jitted `images [B, H, W, 3] -> [B, D]` final-norm cls token (kind="cls").
    A plain callable is returned unchanged."""
    from flax import nnx

    if not isinstance(model_or_fn, nnx.Module):
        if not callable(model_or_fn):
            raise TypeError(f"expected an NNX backbone or a callable, got {type(model_or_fn).__name__}")
        return model_or_fn
    if kind != "cls":
        raise ValueError(f"unknown feature kind {kind!r}")
    from dinov2_jax.pretrained import jit_module

    return jit_module(model_or_fn, lambda m, images: m(images))


def extract_features(fn: Callable, source, *, batch_size: int = 256, image_size: int = 224,
                     resize_size: int = 256, max_samples: int | None = None, num_workers: int = 0,
                     progress: bool = True, desc: str = "features", distributed: bool = False):
    """Run `fn` (images -> array or pytree of [B, ...] arrays) over a labelled source with the eval
    transform. Returns (features: same pytree of float32 numpy [N, ...], labels [N] int64), N = readable
    images, in dataset order.

    Decoding uses `dinov2_jax.data.pipeline.make_eval_loader` (Grain; `num_workers` > 0 decodes in worker
    processes). Each batch is split over this process's local devices (data parallel). By default this
    process extracts the whole dataset. With `distributed=True` in a
    multi-process job (every process must call it), process p reads and runs only samples p, p + P, ...,
    and the features of all processes are gathered once at the end, so every process returns the
    whole, dataset-ordered result. Batches have one fixed size; padding rows and unreadable images are
    dropped. The throughput (images/s) is shown on the progress bar and logged.
    """
    import logging
    import time

    from tqdm.auto import tqdm

    from dinov2_jax.data.pipeline import make_eval_loader

    src = load_labelled_source(source, max_samples=max_samples)
    pi, pc = (jax.process_index(), jax.process_count()) if distributed else (0, 1)
    bs = min(batch_size, -(-len(src) // pc))
    put = lambda a: a  # noqa: E731
    n_dev = jax.local_device_count()
    if n_dev > 1:  # the batch is split over this process's devices (the backbone's params are replicated)
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        bs = -(-bs // n_dev) * n_dev
        sharding = NamedSharding(Mesh(np.asarray(jax.local_devices()), ("data",)), PartitionSpec("data"))
        put = lambda a: jax.device_put(a, sharding)  # noqa: E731
    loader = make_eval_loader(src, bs, resize_size=resize_size, crop_size=image_size, process_index=pi,
                              process_count=pc, num_workers=num_workers)
    chunks, labels, valids = [], [], []
    t0, done = time.time(), 0
    bar = tqdm(loader, total=len(loader), desc=desc, disable=not progress)
    for ims, labs, valid in bar:
        valid = np.asarray(valid, bool)
        labs = np.asarray(labs, np.int64)
        for lab in labs[valid]:
            _check_label(lab, src.source)
        out = jax.device_get(fn(put(np.asarray(ims, np.float32))))
        chunks.append(jax.tree.map(lambda a: np.asarray(a, np.float32), out))  # all rows: same shape everywhere
        labels.append(labs)
        valids.append(valid)
        done += int(valid.sum())
        bar.set_postfix(images_per_s=f"{done * pc / max(time.time() - t0, 1e-9):.1f}")
    feats = jax.tree.map(lambda *a: np.concatenate(a), *chunks)
    labels, valids = np.concatenate(labels), np.concatenate(valids)
    # row j of process p is sample p + P * j of the source (EvalLoader order); beyond the source: padding
    index = pi + pc * np.arange(len(labels))
    if pc > 1:
        from jax.experimental import multihost_utils

        feats, labels, valids, index = multihost_utils.process_allgather((feats, labels, valids, index))
        flat = lambda a: np.asarray(a).reshape((-1,) + np.asarray(a).shape[2:])  # noqa: E731  [P, R, ...] -> [P*R, ...]
        feats, labels, valids, index = jax.tree.map(flat, feats), flat(labels), flat(valids), flat(index)
    keep = np.flatnonzero(valids)
    keep = keep[np.argsort(index[keep], kind="stable")]  # dataset order
    if len(keep) == 0:
        raise ValueError(f"no readable image in dataset {source!r}")
    seconds = time.time() - t0
    logging.getLogger("dinov2_jax.eval.features").info(
        "%s: %d images in %.1f s (%.1f images/s, %d process(es))", desc, len(keep), seconds,
        len(keep) / max(seconds, 1e-9), pc)
    return jax.tree.map(lambda a: a[keep], feats), labels[keep]


def classification_train_transform(image, rng: np.random.Generator, crop_size: int = 224,
                                   scale=(0.08, 1.0)) -> np.ndarray:
    """Official linear-probe train transform: RandomResizedCrop(crop_size, scale, bicubic), horizontal
    flip p=0.5, ImageNet normalisation -> float32 [crop_size, crop_size, 3]."""
    from dinov2_jax.data import augmentations as aug
    from dinov2_jax.data.sources import to_pil_rgb

    img = to_pil_rgb(image)
    top, left, h, w = aug.sample_resized_crop_params(rng, img.width, img.height, scale)
    img = aug.resized_crop(img, top, left, h, w, crop_size)
    if rng.random() < 0.5:
        img = aug.hflip(img)
    return aug.normalize(img)


@dataclasses.dataclass(frozen=True)
class AugmentedBatch:
    """`it -> (images [B, crop, crop, 3] float32, labels [B])`: batch `it` of the augmented train stream.
    Picklable, so Grain worker processes run it (decode + RandomResizedCrop + flip + normalise)."""
    src: LabelledImages
    readable: np.ndarray  # indices of the readable samples
    batch_size: int
    crop_size: int
    seed: int

    def __call__(self, it: int):
        n, bs = len(self.readable), self.batch_size
        per_pass = n // bs  # full batches only, as the official infinite sampler with drop_last
        order = self.readable[np.random.default_rng([self.seed, it // per_pass]).permutation(n)]
        pos = (it % per_pass) * bs
        rng = np.random.default_rng([self.seed, 1_000_003, it])
        ims, labs = [], []
        for j in range(n):  # normally exactly batch_size steps; more only past unreadable files
            rec = self.src.record(int(order[(pos + j) % n]))
            if rec is None:  # undecodable file (folder labels are listed without decoding): take the next
                continue
            ims.append(classification_train_transform(rec[0], rng, self.crop_size))
            labs.append(rec[1])
            if len(ims) == bs:
                return np.stack(ims), np.asarray(labs, np.int64)
        raise ValueError(f"fewer than {bs} readable images in the train set")


def make_augmented_batch_fn(feat_fn: Callable, src: LabelledImages, *, batch_size: int, crop_size: int = 224,
                            seed: int = 0, num_workers: int = 0) -> Callable:
    """`it -> (features of a freshly augmented batch, labels [B])`: reshuffled passes over the source
    (full batches only, as the official infinite sampler with drop_last), augmentation RNG seeded by
    (seed, iteration) so a run is reproducible and resumable. Batches are made by `AugmentedBatch` in
    `num_workers` Grain worker processes (0: in this process), prefetched in order; asking for another
    iteration than the next one restarts the stream there."""
    import grain

    from dinov2_jax.data.pipeline import ensure_absl_flags_parsed

    readable = np.flatnonzero(src.labels() >= 0)
    if len(readable) < batch_size:
        raise ValueError(f"train set has {len(readable)} readable samples < batch size {batch_size}; "
                         "lower --batch-size")
    load = AugmentedBatch(src, readable, batch_size, crop_size, seed)
    stream = {"next": None, "it": None}

    def batch_fn(it: int):
        if stream["next"] != it:
            ds = grain.MapDataset.range(it, 2**40).map(load).to_iter_dataset()
            if num_workers > 0:
                ensure_absl_flags_parsed()
                ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
            stream["it"] = iter(ds)
        images, labels = next(stream["it"])
        stream["next"] = it + 1
        return feat_fn(images), labels

    return batch_fn


def add_eval_cli_args(p, *, default_batch_size: int, batch_help: str | None = None) -> None:
    """The arguments the k-NN and linear-probe CLIs share: the model, the datasets, sizes and workers."""
    p.add_argument("--weights", default=None,
                   help="converted checkpoint dir or official .pth (omit only with --allow-random-init)")
    p.add_argument("--arch", default=None,
                   help="hub name (dinov2_vits14, dinov2_vits14_reg, ...); default: read from the weights")
    p.add_argument("--allow-random-init", action="store_true", help="evaluate a random-init --arch model")
    p.add_argument("--train-dataset", required=True, help='labelled train set: "folder:PATH" | "tfds:NAME:SPLIT" | "demo"')
    p.add_argument("--val-dataset", required=True, help="labelled val set, same formats")
    p.add_argument("--batch-size", type=int, default=default_batch_size, help=batch_help)
    p.add_argument("--image-size", type=int, default=224, help="center-crop size (resize: size x 256/224)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="inference dtype")
    p.add_argument("--max-samples", type=int, default=None,
                   help="evaluate on an evenly spaced subset of this many images per split")
    p.add_argument("--num-workers", type=int, default=0, help="image decoding worker processes")
    p.add_argument("--distributed", action="store_true",
                   help="join a multi-process job (launch/local_multiprocess.py, SLURM, TPU pod: see docs/scaling.md "
                        "Multi-host launch): each process reads its share of the images, features are "
                        "gathered once, process 0 writes the results")


def init_cli_distributed(args) -> bool:
    """`--distributed`: join the multi-process job (before any device use). True on the process that
    writes the results (process 0, or the only one)."""
    if getattr(args, "distributed", False):
        from dinov2_jax.parallel.distributed import initialize_from_env

        initialize_from_env()
    return jax.process_index() == 0


def load_cli_model(args):
    """The backbone named by the shared CLI arguments (`add_eval_cli_args`)."""
    from dinov2_jax.hub import load_for_eval

    return load_for_eval(args.weights, args.arch, allow_random_init=args.allow_random_init, dtype=args.dtype)

