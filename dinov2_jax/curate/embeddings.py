"""Embedding store: L2-normalised image embeddings of a dataset, float16 on disk, in resumable shards.

Layout of a store folder:
  meta.json            dataset spec, weights, dim, shard size, number of source entries
  refs.txt             one line per source entry: its file path (folder:, list:) or SPEC#INDEX
  shard_00000.npy      float16 [n, D] unit rows of the readable images of entries [s * size, (s+1) * size)
  shard_00000.ids.npy  int64 [n] their source entry indices (unreadable images are left out)
  done                 written last, when every shard exists

Each shard file is written to a temporary name and renamed (atomic), the vectors before the ids, so a
shard counts as finished exactly when its ids file exists; a rerun skips finished shards. With several
processes, shard s is computed by process s % P (each process runs its own shards on its local
devices, nothing is exchanged), and process 0 writes `done` after a barrier.

Rows: the store's vectors, in shard order, are "rows" 0..M-1 for every later step; `ids()[row]` is
the source entry and `refs()[ids()[row]]` its path.
"""
from __future__ import annotations

import json
import logging
import os
import time

import numpy as np

logger = logging.getLogger(__name__)

FORMAT = "dinov2_jax-embeddings-v1"
META, REFS, DONE = "meta.json", "refs.txt", "done"


def atomic_write(path: str, write) -> None:
    """Call write(tmp_path) then rename tmp -> path (same folder), so readers see all or nothing."""
    tmp = f"{path}.tmp{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def save_npy(path: str, array: np.ndarray) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, write)


def save_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, write)


def source_refs(source, spec: str) -> list[str]:
    """A path per entry where the source has one (folder:, list:), else SPEC#INDEX."""
    files = getattr(source, "files", None)
    if files is not None and len(files) == len(source):
        return [os.path.abspath(f) for f in files]
    if hasattr(source, "entry") and hasattr(source, "list_file"):
        return [source.entry(i)[0] for i in range(len(source))]
    return [f"{spec}#{i}" for i in range(len(source))]


class IndexedRange:
    """Entries [lo, hi) of a source, each labelled with its source index (so the feature extractor,
    which drops unreadable images, reports which entries it kept)."""

    def __init__(self, source, lo: int, hi: int):
        self.source, self.lo, self.hi = source, lo, hi
        self.labels = np.arange(lo, hi, dtype=np.int64)

    def __len__(self):
        return self.hi - self.lo

    def __getitem__(self, i):
        rec = self.source[self.lo + int(i)]
        if rec is None:
            return None
        image = rec["image"] if isinstance(rec, dict) else rec[0]
        return image, self.lo + int(i)


class EmbeddingStore:
    """Read side of a store folder (see the module doc)."""

    def __init__(self, root: str):
        self.root = root
        path = os.path.join(root, META)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{root!r} is not an embedding store (no {META}); run "
                                    "`python -m dinov2_jax.curate embed` first")
        with open(path) as f:
            self.meta = json.load(f)
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown format {self.meta.get('format')!r} (expected {FORMAT})")
        self._ids = self._refs = None

    @property
    def num_shards(self) -> int:
        return int(self.meta["num_shards"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def shard_path(self, s: int, ids: bool = False) -> str:
        return os.path.join(self.root, f"shard_{s:05d}{'.ids' if ids else ''}.npy")

    def shard_done(self, s: int) -> bool:
        return os.path.isfile(self.shard_path(s, ids=True))

    @property
    def done(self) -> bool:
        return os.path.isfile(os.path.join(self.root, DONE))

    def check_done(self) -> None:
        if not self.done:
            missing = [s for s in range(self.num_shards) if not self.shard_done(s)]
            raise RuntimeError(f"embedding store {self.root!r} is incomplete ({len(missing)} of {self.num_shards} "
                               "shards missing); rerun the embed step (it resumes)")

    def ids(self) -> np.ndarray:
        """Source entry of every row [M] int64."""
        if self._ids is None:
            self.check_done()
            self._ids = np.concatenate([np.load(self.shard_path(s, True)) for s in range(self.num_shards)])
        return self._ids

    def vectors(self, dtype=np.float16) -> np.ndarray:
        """All rows [M, D] (shards memory-mapped, then concatenated: M * D * 2 bytes of RAM as float16)."""
        self.check_done()
        parts = [np.load(self.shard_path(s), mmap_mode="r") for s in range(self.num_shards)]
        return np.concatenate(parts).astype(dtype, copy=False)

    def refs(self) -> list[str]:
        """Path (or SPEC#INDEX) of every source entry."""
        if self._refs is None:
            with open(os.path.join(self.root, REFS)) as f:
                self._refs = f.read().splitlines()
        return self._refs

    def row_refs(self, rows) -> list[str]:
        refs, ids = self.refs(), self.ids()
        return [refs[int(ids[r])] for r in rows]


def embed_dataset(spec: str, root: str, feature_fn, *, model_name: str, dim: int, shard_size: int = 65536,
                  batch_size: int = 256, image_size: int = 224, resize_size: int | None = None,
                  num_workers: int = 0, distributed: bool = False, source=None, progress: bool = True) -> dict:
    """Embed every image of dataset `spec` into the store at `root` (see the module doc), resuming.

    feature_fn: jitted images [B, S, S, 3] -> [B, dim] (e.g. `eval.features.make_feature_fn(model)`).
    Returns {"images", "seconds", "images_per_s", "shards_run", "shards_skipped"} for this process.
    """
    import jax

    from dinov2_jax.data.augmentations import eval_resize_size
    from dinov2_jax.data.sources import make_source
    from dinov2_jax.eval.features import extract_features

    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    source = make_source(spec) if source is None else source
    n = len(source)
    if n == 0:
        raise ValueError(f"dataset {spec!r} is empty")
    pi, pc = (jax.process_index(), jax.process_count()) if distributed else (0, 1)
    meta = {"format": FORMAT, "dataset": spec, "model": model_name, "dim": int(dim), "num_items": n,
            "shard_size": int(shard_size), "num_shards": -(-n // shard_size), "image_size": image_size}
    os.makedirs(root, exist_ok=True)
    meta_path = os.path.join(root, META)
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            old = json.load(f)
        if old != meta:
            diff = {k: (old.get(k), meta[k]) for k in meta if old.get(k) != meta[k]}
            raise ValueError(f"{root!r} holds embeddings of another run ({diff}, as (stored, asked)); use another "
                             "--name / --out or delete the folder")
    elif pi == 0:
        save_text(os.path.join(root, REFS), "".join(r + "\n" for r in source_refs(source, spec)))
        save_text(meta_path, json.dumps(meta, indent=1))
    store = EmbeddingStore.__new__(EmbeddingStore)
    store.root, store.meta, store._ids, store._refs = root, meta, None, None
    resize_size = resize_size or eval_resize_size(image_size)
    t0, count, run, skipped = time.time(), 0, 0, 0
    for s in range(pi, meta["num_shards"], pc):
        if store.shard_done(s):
            skipped += 1
            continue
        lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
        feats, ids = extract_features(feature_fn, IndexedRange(source, lo, hi), batch_size=batch_size,
                                      image_size=image_size, resize_size=resize_size, num_workers=num_workers,
                                      progress=progress, desc=f"embed shard {s + 1}/{meta['num_shards']}")
        feats = np.asarray(feats, np.float32)
        if feats.ndim != 2 or feats.shape[1] != dim:
            raise ValueError(f"the feature function gave {feats.shape}, expected [B, {dim}]")
        feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        save_npy(store.shard_path(s), feats.astype(np.float16))
        save_npy(store.shard_path(s, ids=True), np.asarray(ids, np.int64))  # last: marks the shard finished
        count += len(ids)
        run += 1
    seconds = time.time() - t0
    if pc > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("dinov2_jax.curate.embed")
    if pi == 0 and all(store.shard_done(s) for s in range(meta["num_shards"])):
        save_text(os.path.join(root, DONE), f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    rate = count / max(seconds, 1e-9)
    print(f"embed {spec}: {count} images in {seconds:.1f} s ({rate:.1f} images/s, process {pi}/{pc}); "
          f"{run} shards run, {skipped} already done", flush=True)
    return {"images": count, "seconds": seconds, "images_per_s": rate, "shards_run": run, "shards_skipped": skipped}
