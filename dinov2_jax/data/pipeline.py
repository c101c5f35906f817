"""Grain input pipelines: the infinite multi-crop SSL train loader and the labelled eval loader.

Train (`make_train_loader`), per process:
  source -> shuffle(seed) -> repeat() [infinite; reshuffled every epoch]
  -> random_map(DataAugmentationDINO) [per-element Generator from (seed, global index)]
  -> [process_index::process_count]
  -> drop unreadable images -> batch(B) + collate (iBOT masks from random.Random(seed, first index))
  -> worker processes (mp_prefetch) when num_workers > 0.
Every random draw is a function of (seed, element index), so the stream is identical for a given
(seed, process_count, batch size, num_workers), and `it.get_state()` / `it.set_state(state)`
restores the exact position (store the state with the checkpoint; resume with the same settings).

Eval (`make_eval_loader`): official eval transform, fixed order, every sample once, last batch
padded with `valid=False` rows (also used for unreadable images) so all batches have static shape.
"""
from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import grain
import numpy as np

from dinov2_jax.data.augmentations import DataAugmentationDINO, eval_transform
from dinov2_jax.data.masking import MaskingGenerator, collate, mask_upperbound
from dinov2_jax.data.sources import make_source



def ensure_absl_flags_parsed() -> None:
    """Grain worker processes read absl flags; mark them parsed (defaults) when the caller did not
    run under `absl.app.run`, else workers die with UnparsedFlagAccessError."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _process_info(process_index, process_count):
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return process_index, process_count


@dataclasses.dataclass(frozen=True)
class _Augment:
    """random_map transform: (image, label) | None -> crops dict | None (picklable for workers)."""

    aug: DataAugmentationDINO

    def __call__(self, sample, rng: np.random.Generator):
        if sample is None:  # unreadable image, already counted by the source
            return None
        return self.aug(sample[0], rng)


def _attach_index(index: int, crops):
    if crops is None:
        return None
    crops["index"] = index
    return crops


@dataclasses.dataclass(frozen=True)
class _Collate:
    """batch_fn: B crop dicts -> batch dict; masks drawn from random.Random(seed, first index)."""

    mask_generator: MaskingGenerator
    seed: int
    upperbound: int
    mask_ratio_tuple: tuple
    mask_probability: float
    groups: int
    keep_index: bool = False  # adds "sample_index" [B] int64: the samples' global stream positions

    def __call__(self, samples):
        # element indices are unique over the infinite stream, so this seeds each batch differently
        rng = random.Random(f"dinov2_jax-masks:{self.seed}:{samples[0]['index']}")
        batch = collate(samples, mask_generator=self.mask_generator, rng=rng, upperbound=self.upperbound,
                        mask_ratio_tuple=self.mask_ratio_tuple, mask_probability=self.mask_probability,
                        groups=self.groups)
        if self.keep_index:
            batch["sample_index"] = np.asarray([s["index"] for s in samples], np.int64)
        return batch


def _cfg_get(cfg, path, default):
    node = cfg
    for k in path.split("."):
        if node is None or k not in node:
            return default
        node = node[k]
    return node


def default_batch_size_per_process(cfg, batch_size_per_process: int | None = None) -> int:
    """`train.batch_size_per_gpu` is per accelerator device: a process feeds all its local devices."""
    if batch_size_per_process:
        return int(batch_size_per_process)
    import jax

    return int(cfg.train.batch_size_per_gpu) * jax.local_device_count()


def groups_per_process(batch_size_per_process: int, groups: int | None = None) -> int:
    """Per-device batches in one process's batch (default: one per local device). Each is collated,
    masked and stochastically dropped on its own, as one GPU of the official code."""
    if groups is None:
        import jax

        groups = jax.local_device_count()
    if groups < 1 or batch_size_per_process % groups:
        raise ValueError(f"batch of {batch_size_per_process} images per process does not split into {groups} "
                         "per-device batches; use train.batch_size_per_gpu x local devices images per process")
    return int(groups)


def shuffled_stream(src, seed: int) -> grain.MapDataset:
    """Infinite stream of `src` elements: a global seeded permutation per epoch, reshuffled each epoch."""
    return grain.MapDataset.source(src).shuffle(seed=seed).repeat()


def shuffled_shard(src, seed: int, process_index: int, process_count: int) -> grain.MapDataset:
    """Elements process_index::process_count of `shuffled_stream(src, seed)` (one process's share)."""
    return shuffled_stream(src, seed)[process_index::process_count]


def _check_some_readable(src, seed: int, probe: int = 16) -> None:
    """Fail fast instead of spinning forever when no image decodes (the loader skips unreadable ones)."""
    order = np.random.default_rng(seed).permutation(len(src))[:probe]
    if all(src[int(i)] is None for i in order):
        raise ValueError(f"none of {len(order)} sampled images of the dataset could be decoded; check the "
                         "dataset path/format (see the warnings above for the files and errors)")


def make_train_loader(cfg, *, seed: int | None = None, process_index: int | None = None,
                      process_count: int | None = None, batch_size_per_process: int | None = None,
                      num_workers: int | None = None, source: Any = None, prefetch_buffer_size: int = 2,
                      groups: int | None = None, sample_index: bool = False):
    """Infinite iterator of train batches (dict of numpy arrays, see docs/design.md "Batch").

    cfg: the SSL ConfigDict (uses train.dataset_path, train.seed, train.batch_size_per_gpu,
    train.num_workers, crops.*, ibot.mask_ratio_min_max, ibot.mask_sample_probability,
    student.patch_size). `source` overrides train.dataset_path with a ready source object.
    crops.photometric_on_device=True: the crops are uint8 and the batch also holds their photometric
    params (`collated_{global,local}_<param>`, see dinov2_jax/data/device_augment.py), which
    `device_augment.augment_batch` turns into the usual float32 batch on the accelerator.
    batch_size_per_process: default train.batch_size_per_gpu x jax.local_device_count(); it is split
    into `groups` per-device batches (default: one per local device), each collated and masked as one
    GPU of the official code (`masking.collate`, group-major).
    process_index / process_count: default jax.process_index() / jax.process_count().
    sample_index: each batch also holds "sample_index" [B] int64, the samples' positions in the global
    stream, from which `SkippedImageCount` counts the unreadable images that were dropped.
    Returns a grain iterator: `next(it)`, `it.get_state()`, `it.set_state(state)`.
    """
    seed = int(cfg.train.seed if seed is None else seed)
    process_index, process_count = _process_info(process_index, process_count)
    B = default_batch_size_per_process(cfg, batch_size_per_process)
    num_workers = int(cfg.train.num_workers if num_workers is None else num_workers)
    src = source if source is not None else make_source(cfg.train.dataset_path)
    if len(src) < process_count:
        raise ValueError(f"dataset has {len(src)} images, fewer than the {process_count} processes")

    _check_some_readable(src, seed)
    aug = DataAugmentationDINO.from_config(cfg.crops)
    grid = aug.global_crops_size // int(cfg.student.patch_size)
    n_tokens = grid * grid
    ratio = tuple(float(r) for r in _cfg_get(cfg, "ibot.mask_ratio_min_max", (0.1, 0.5)))
    prob = float(_cfg_get(cfg, "ibot.mask_sample_probability", 0.5))
    # as the official train.py: blocks of >= 4 patches, at most half the grid per block
    gen = MaskingGenerator((grid, grid), max_num_patches=0.5 * n_tokens)
    groups = groups_per_process(B, groups)
    batch_fn = _Collate(gen, seed, mask_upperbound(B // groups, n_tokens, ratio, prob), ratio, prob, groups,
                        keep_index=sample_index)

    # Augmentation RNGs and the attached index (which seeds the masks) come from the position in the
    # *global* stream, taken before the per-process slice: otherwise every process would draw the same
    # crops/masks for its i-th image. The MapDataset is lazy, so each process only decodes its share.
    ds = shuffled_stream(src, seed).random_map(_Augment(aug), seed=seed).map_with_index(_attach_index)
    ds = ds[process_index::process_count]
    it_ds = ds.to_iter_dataset()  # drops the None (unreadable) elements
    it_ds = it_ds.batch(B, drop_remainder=True, batch_fn=batch_fn)
    if num_workers > 0:
        ensure_absl_flags_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                               per_worker_buffer_size=prefetch_buffer_size))
    return iter(it_ds)


class SkippedImageCount:
    """Unreadable images the train loader dropped, counted from the stream positions of the images it
    delivered (works with decoding worker processes, whose sources' own counters the main process cannot
    see).

    Process p of P reads global positions p, p + P, ...; with W > 0 workers, worker w reads every W-th
    of those (grain slices the per-process stream over its workers), and each batch comes from one
    worker. So the positions a worker delivers step by P * W, and every missing step is an image
    dropped as unreadable. Counts from this process's start (a resumed run counts from the resume).
    """

    def __init__(self, process_index: int, process_count: int, num_workers: int, fresh_start: bool):
        self.p, self.P, self.W = int(process_index), int(process_count), max(int(num_workers), 1)
        self.stride = self.P * self.W
        # at a fresh start each worker's first position is known: w * P + p (one stride before: -stride)
        self.last = {w: (w - self.W) * self.P + self.p for w in range(self.W)} if fresh_start else {}
        self.count = 0

    def update(self, sample_index) -> int:
        """Adds the images dropped before/among this batch's samples; returns the running count."""
        idx = np.sort(np.asarray(sample_index, np.int64))
        w = int((idx[0] - self.p) // self.P) % self.W
        prev = self.last.get(w)
        pos = idx if prev is None else np.concatenate([[prev], idx])
        self.count += int((np.diff(pos) // self.stride - 1).sum())
        self.last[w] = int(idx[-1])
        return self.count


def train_upperbound(cfg, batch_size_per_process: int | None = None, groups: int | None = None) -> int:
    """Static per-group length U of mask_indices_list / masks_weight `[G, U]` for this config."""
    B = default_batch_size_per_process(cfg, batch_size_per_process)
    B //= groups_per_process(B, groups)
    grid = int(cfg.crops.global_crops_size) // int(cfg.student.patch_size)
    return mask_upperbound(B, grid * grid, tuple(_cfg_get(cfg, "ibot.mask_ratio_min_max", (0.1, 0.5))),
                           float(_cfg_get(cfg, "ibot.mask_sample_probability", 0.5)))


# ----------------------------------------------------------------------------- evaluation


@dataclasses.dataclass(frozen=True)
class _EvalLoad:
    src: Any
    indices: np.ndarray  # this process's sample indices; positions beyond it are padding
    resize_size: int
    crop_size: int

    def __call__(self, pos: int):
        if pos < len(self.indices):
            sample = self.src[int(self.indices[pos])]
            if sample is not None:
                return eval_transform(sample[0], self.resize_size, self.crop_size), sample[1], True
        return np.zeros((self.crop_size, self.crop_size, 3), np.float32), -1, False


def _stack_eval(items):
    imgs, labels, valid = zip(*items)
    return np.stack(imgs), np.asarray(labels, np.int32), np.asarray(valid, bool)


class EvalLoader:
    """Iterable of (images [B, crop, crop, 3] float32, labels [B] int32, valid [B] bool).

    Each process sees samples process_index::process_count in dataset order; every process yields
    the same number of batches (`len(loader)`), padding with valid=False rows. Unreadable images are
    also valid=False (counted warning from the source).
    """

    def __init__(self, src, batch_size, *, resize_size=256, crop_size=224, process_index=None,
                 process_count=None, num_workers=0):
        process_index, process_count = _process_info(process_index, process_count)
        self.source = src
        self.num_samples = len(src)
        self.classes = getattr(src, "classes", None)
        self.batch_size = int(batch_size)
        per_process = math.ceil(self.num_samples / process_count)
        self.num_batches = math.ceil(per_process / self.batch_size)
        indices = np.arange(process_index, self.num_samples, process_count)
        ds = grain.MapDataset.range(self.num_batches * self.batch_size)
        ds = ds.map(_EvalLoad(src, indices, resize_size, crop_size))
        self._ds = ds.batch(self.batch_size, batch_fn=_stack_eval)
        self.num_workers = int(num_workers)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        it_ds = self._ds.to_iter_dataset()
        if self.num_workers > 0:
            ensure_absl_flags_parsed()
            it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.num_workers))
        return iter(it_ds)


def make_eval_loader(spec, batch_size: int, *, resize_size: int = 256, crop_size: int = 224,
                     process_index: int | None = None, process_count: int | None = None,
                     num_workers: int = 0) -> EvalLoader:
    """Labelled eval loader from a dataset spec string (or a source object), see `EvalLoader`."""
    src = make_source(spec) if isinstance(spec, str) else spec
    return EvalLoader(src, batch_size, resize_size=resize_size, crop_size=crop_size,
                      process_index=process_index, process_count=process_count, num_workers=num_workers)
