"""Pack any dataset spec into ArrayRecord shards read by the `shards:OUT_DIR` source.

  python -m dinov2_jax.data.pack SOURCE OUT_DIR [--shard-size 10000] [--workers 4]
  python -m dinov2_jax.data.pack --verify OUT_DIR

SOURCE is any spec of `dinov2_jax.data.sources.make_source` (folder:, list:, tfds:, demo, shards:).
Shard k holds source items [k*S, (k+1)*S) in source order (S = --shard-size), minus the items whose
image does not decode: those are skipped and listed in the manifest. Each record keeps the encoded
image bytes as read (folder / list files byte for byte, TFDS bytes as stored; sources that only give
pixels are stored as PNG), the label and the original path (layout: dinov2_jax/data/shards.py).

Shards are written by --workers processes, each to a temporary file renamed when complete, followed by
a per-shard sidecar `shard-K-of-N.json` (records, sha256, labels, skipped); a rerun skips the shards
whose sidecar exists, so an interrupted pack resumes. The last step merges the sidecars into
`manifest.json` (counts, classes, per-class counts, per-shard sha256, skipped inputs), which is all
the `shards:` source reads at start-up. --verify recomputes every shard's sha256 and record count.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import sys
import time

from dinov2_jax.data.shards import FORMAT, MANIFEST, encode_record, load_manifest
from dinov2_jax.data.sources import TfdsSource, decode_image, make_source, to_pil_rgb

logger = logging.getLogger(__name__)

PACK_CONFIG = "pack_config.json"


def encoded_item(src, i: int) -> tuple[bytes, int, str]:
    """Source item i undecoded -> (encoded image bytes, label, original path or record name).

    Sources with an `encoded(i)` method (list, shards) give their bytes; file-backed sources (a
    `files` list + `labels`, e.g. folder:) give the file's bytes; TFDS gives the stored bytes; any
    other source is decoded and stored as PNG (lossless)."""
    if hasattr(src, "encoded"):
        return src.encoded(i)
    if hasattr(src, "files") and hasattr(src, "labels"):
        path = src.files[i]
        with open(path, "rb") as f:
            return f.read(), int(src.labels[i]), path
    if isinstance(src, TfdsSource):
        if src._ds is None:
            src._ds = src._open()
        ex = src._ds[i]
        label = int(ex[src.label_key]) if src.label_key else -1
        return bytes(ex[src.image_key]), label, f"tfds:{src.name}:{src.split}[{i}]"
    sample = src[i]
    if sample is None:
        raise ValueError("the source could not decode this item")
    img, label = sample
    img = to_pil_rgb(img)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue(), int(label), f"{type(src).__name__}[{i}]"


def shard_name(k: int, num_shards: int) -> str:
    return f"shard-{k:05d}-of-{num_shards:05d}"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


_SRC = None  # the source, inherited by forked workers (or rebuilt from the spec by spawned ones)


def _init_worker(spec):
    global _SRC
    if _SRC is None:
        _SRC = make_source(spec)


def _pack_shard(args) -> dict:
    """Write shard k (source items [start, stop)) and its sidecar; returns the sidecar dict."""
    from array_record.python.array_record_module import ArrayRecordWriter

    out_dir, k, num_shards, start, stop = args
    name = shard_name(k, num_shards)
    final = os.path.join(out_dir, name + ".array_record")
    tmp = final + ".tmp"
    labels, skipped, n = {}, [], 0
    # group_size:1 = one record per chunk, so a random read decodes only that record (Grain's requirement)
    writer = ArrayRecordWriter(tmp, "group_size:1")
    try:
        for i in range(start, stop):
            path = f"item {i}"
            try:
                data, label, path = encoded_item(_SRC, i)
                decode_image(data)  # corrupt / truncated / unsupported inputs are skipped here, not in training
            except Exception as e:
                skipped.append({"source_index": i, "path": path, "error": f"{type(e).__name__}: {e}"})
                continue
            writer.write(encode_record(data, label, path))
            labels[str(label)] = labels.get(str(label), 0) + 1
            n += 1
    finally:
        writer.close()
    os.replace(tmp, final)
    side = {"file": os.path.basename(final), "num_records": n, "sha256": sha256_file(final),
            "source_range": [start, stop], "label_counts": labels, "skipped": skipped}
    _write_json(os.path.join(out_dir, name + ".json"), side)  # written last: marks the shard as done
    return side


def _write_json(path: str, obj) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def pack(spec: str, out_dir: str, *, shard_size: int = 10000, workers: int = 1, log_every: int = 1) -> dict:
    """Pack `spec` into `out_dir` (resuming a previous run with the same arguments); returns the manifest."""
    global _SRC
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    src = make_source(spec)
    n = len(src)
    num_shards = math.ceil(n / shard_size)
    config = {"format": FORMAT, "source": spec, "source_items": n, "shard_size": shard_size,
              "num_shards": num_shards, "classes": list(getattr(src, "classes", None) or [])}
    os.makedirs(out_dir, exist_ok=True)
    cfg_path = os.path.join(out_dir, PACK_CONFIG)
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            old = json.load(f)
        if old != config:
            diff = {k: (old.get(k), v) for k, v in config.items() if old.get(k) != v}
            raise ValueError(f"{out_dir} holds a pack with different settings {diff} (old, new); resume with the "
                             "same SOURCE and --shard-size, or pack into a new folder")
    else:
        _write_json(cfg_path, config)
    for f in os.listdir(out_dir):  # partial files of an interrupted run
        if f.endswith(".tmp"):
            os.remove(os.path.join(out_dir, f))

    todo = []
    for k in range(num_shards):
        name = shard_name(k, num_shards)
        if not (os.path.isfile(os.path.join(out_dir, name + ".json"))
                and os.path.isfile(os.path.join(out_dir, name + ".array_record"))):
            todo.append((out_dir, k, num_shards, k * shard_size, min(n, (k + 1) * shard_size)))
    logger.info("packing %s: %d items -> %d shards of <= %d (%d to write, %d already done) with %d workers",
                spec, n, num_shards, shard_size, len(todo), num_shards - len(todo), workers)
    t0 = time.perf_counter()

    def report(results):
        for done, side in enumerate(results, 1):
            if done % log_every == 0 or done == len(todo):
                logger.info("%s: %d records, %d skipped (%d/%d shards, %.1f s)", side["file"], side["num_records"],
                            len(side["skipped"]), done, len(todo), time.perf_counter() - t0)

    _SRC = src
    try:
        if workers <= 1 or len(todo) <= 1:
            report(map(_pack_shard, todo))
        else:
            # fork shares the already-built source (e.g. a folder's file list) with the workers
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            with multiprocessing.get_context(method).Pool(min(workers, len(todo)), _init_worker, (spec,)) as pool:
                report(pool.imap_unordered(_pack_shard, todo))  # an error in a worker stops the pool here
    finally:
        _SRC = None
    return write_manifest(out_dir, config)


def write_manifest(out_dir: str, config: dict) -> dict:
    """Merge the per-shard sidecars into manifest.json."""
    shards, skipped, labels = [], [], {}
    for k in range(config["num_shards"]):
        with open(os.path.join(out_dir, shard_name(k, config["num_shards"]) + ".json")) as f:
            side = json.load(f)
        skipped.extend(side.pop("skipped"))
        for lab, c in side.pop("label_counts").items():
            labels[lab] = labels.get(lab, 0) + c
        shards.append(side)
    manifest = {"format": FORMAT, "source": config["source"], "source_items": config["source_items"],
                "num_records": sum(s["num_records"] for s in shards), "classes": config["classes"],
                "label_counts": dict(sorted(labels.items(), key=lambda kv: int(kv[0]))),
                "shard_size": config["shard_size"], "shards": shards, "skipped": skipped}
    _write_json(os.path.join(out_dir, MANIFEST), manifest)
    return manifest


def verify(out_dir: str) -> list[str]:
    """Recompute each shard's sha256 and record count against the manifest -> list of problems."""
    from array_record.python.array_record_module import ArrayRecordReader

    manifest = load_manifest(out_dir)
    problems = []
    for s in manifest["shards"]:
        path = os.path.join(out_dir, s["file"])
        if not os.path.isfile(path):
            problems.append(f"{s['file']}: missing")
            continue
        if sha256_file(path) != s["sha256"]:
            problems.append(f"{s['file']}: sha256 differs from the manifest")
            continue
        reader = ArrayRecordReader(path)
        count = reader.num_records()
        reader.close()
        if count != s["num_records"]:
            problems.append(f"{s['file']}: {count} records, manifest says {s['num_records']}")
    return problems


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", nargs="?", help="dataset spec (folder:PATH, list:FILE, tfds:NAME:SPLIT[:DIR], ...)")
    ap.add_argument("out_dir")
    ap.add_argument("--shard-size", type=int, default=10000, help="images per shard (default 10000)")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1) - 1),
                    help="parallel processes (default: CPUs - 1)")
    ap.add_argument("--verify", action="store_true", help="check OUT_DIR's shard checksums and counts, pack nothing")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.verify:
        problems = verify(args.out_dir)
        for p in problems:
            print("PROBLEM", p)
        m = load_manifest(args.out_dir)
        print(f"{args.out_dir}: {len(m['shards'])} shards, {m['num_records']} records: "
              f"{'OK' if not problems else f'{len(problems)} problem(s)'}")
        return 1 if problems else 0
    if not args.source:
        ap.error("SOURCE is required unless --verify")
    m = pack(args.source, args.out_dir, shard_size=args.shard_size, workers=args.workers)
    print(f"{args.out_dir}: {m['num_records']} records in {len(m['shards'])} shards, {len(m['classes'])} classes, "
          f"{len(m['skipped'])} skipped inputs (listed in {os.path.join(args.out_dir, MANIFEST)}); "
          f"read it with the spec shards:{args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
