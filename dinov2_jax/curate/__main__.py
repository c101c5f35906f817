"""Data curation CLI: `python -m dinov2_jax.curate <step> --out DIR ...` (see docs/curation.md).

Steps (each resumable; a finished step is skipped unless --force):
  embed     --dataset SPEC --weights W [--name pool]    -> DIR/embeddings/NAME/ (float16 shards)
  dedup     [--threshold 0.6 --k 64] [--protected eval --protected-threshold 0.45]
                                                        -> DIR/dedup/
  retrieve  --seeds NAME (--k 4 | --mode cluster --pool-clusters K --per-cluster M)
                                                        -> DIR/retrieve/
  kmeans    --levels K1 K2 ... [--iters 20 --init kmeans++ --resample-steps 0 --resample-size R]
            [--sample N]                                -> DIR/kmeans/
  report                                                -> DIR/report.md + pictures

Every selecting step writes DIR/<step>/rows.npy (rows of the pool store), DIR/<step>/files.txt and
DIR/files.txt (the latest result, a `list:` dataset for the trainer), DIR/<step>/report.json, then
DIR/<step>/done. --input picks the pool rows a step starts from: all, dedup, retrieve or auto (dedup's
result when it exists, else all).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time

import numpy as np

from dinov2_jax.curate.embeddings import EmbeddingStore, save_npy, save_text

logger = logging.getLogger("dinov2_jax.curate")


# ---------------------------------------------------------------------------------------------------
# shared plumbing
def store_dir(out: str, name: str) -> str:
    return os.path.join(out, "embeddings", name)


def step_dir(out: str, step: str) -> str:
    return os.path.join(out, step)


def is_done(out: str, step: str) -> bool:
    return os.path.isfile(os.path.join(step_dir(out, step), "done"))


def input_rows(args, store: EmbeddingStore) -> tuple[np.ndarray, str]:
    """Pool rows a step starts from (see --input) and where they came from."""
    choice = args.input
    if choice == "auto":
        choice = "dedup" if is_done(args.out, "dedup") else "all"
    if choice == "all":
        return np.arange(len(store.ids())), "all"
    if not is_done(args.out, choice):
        raise SystemExit(f"--input {choice}: step {choice!r} has not finished in {args.out!r}; run it first")
    return np.load(os.path.join(step_dir(args.out, choice), "rows.npy")), choice


def write_list(path: str, refs: list[str]) -> None:
    """A `list:` file: one absolute image path per line."""
    bad = [r for r in refs if "\t" in r or "\n" in r]
    if bad:
        raise ValueError(f"cannot write {path}: path {bad[0]!r} contains a tab or newline")
    save_text(path, "".join(r + "\n" for r in refs))


def has_paths(store: EmbeddingStore) -> bool:
    refs = store.refs()
    return bool(refs) and all(os.path.isabs(r) for r in refs[:1000])


def finish_step(args, step: str, store: EmbeddingStore, rows: np.ndarray, report: dict,
                extra_refs: list[str] | None = None) -> None:
    """Write rows.npy, files.txt (here and as DIR/files.txt), report.json, then done (last)."""
    if not args.is_writer:
        return
    d = step_dir(args.out, step)
    os.makedirs(d, exist_ok=True)
    rows = np.sort(np.asarray(rows, np.int64))
    save_npy(os.path.join(d, "rows.npy"), rows)
    if has_paths(store):
        refs = store.row_refs(rows) + list(extra_refs or [])
        write_list(os.path.join(d, "files.txt"), refs)
        shutil.copyfile(os.path.join(d, "files.txt"), os.path.join(args.out, "files.txt.tmp"))
        os.replace(os.path.join(args.out, "files.txt.tmp"), os.path.join(args.out, "files.txt"))
        report["files"] = os.path.join(d, "files.txt")
        report["list_entries"] = len(refs)
    else:
        logger.warning("%s: the pool dataset %r has no file paths (only folder: and list: datasets have them), so no "
                       "files.txt is written; rows.npy holds the selected rows", step, store.meta["dataset"])
    save_text(os.path.join(d, "report.json"), json.dumps(report, indent=1, default=float))
    save_text(os.path.join(d, "done"), time.strftime("%Y-%m-%d %H:%M:%S\n"))
    print(f"{step}: " + ", ".join(f"{k}={v}" for k, v in report.items() if not isinstance(v, (list, dict))), flush=True)


def open_store(args, name: str) -> EmbeddingStore:
    store = EmbeddingStore(store_dir(args.out, name))
    store.check_done()
    return store


def search_kw(args) -> dict:
    return {"mesh": args.mesh, "query_block": args.query_block, "db_block": args.db_block}


# ---------------------------------------------------------------------------------------------------
# steps
def run_embed(args) -> None:
    from dinov2_jax.eval.features import make_feature_fn
    from dinov2_jax.pretrained import from_pretrained

    pre = from_pretrained(args.weights, image_size=args.image_size, dtype=args.dtype)
    fn = make_feature_fn(pre.model)
    from dinov2_jax.curate.embeddings import embed_dataset

    embed_dataset(args.dataset, store_dir(args.out, args.name), fn, model_name=args.weights,
                  dim=pre.config.embed_dim, shard_size=args.shard_size, batch_size=args.batch_size,
                  image_size=args.image_size, num_workers=args.num_workers, distributed=args.distributed)


def run_dedup(args) -> None:
    from dinov2_jax.curate.dedup import dedup_pool
    from dinov2_jax.curate.search import knn_resumable, put_database

    store = open_store(args, args.pool)
    rows, source = input_rows(args, store)
    x = store.vectors()[rows]
    d = step_dir(args.out, "dedup")
    report = {"input": source, "pool": len(rows)}
    drop = np.zeros(0, np.int64)
    if args.protected:
        prot = open_store(args, args.protected).vectors()
        sims, ids = knn_resumable(d, "protected", x, put_database(prot, args.mesh, db_block=args.db_block), 1,
                                  write=args.is_writer, query_block=args.query_block)
        drop = np.flatnonzero(sims[:, 0] >= args.protected_threshold)
        report.update(protected_set=len(prot), protected_threshold=args.protected_threshold,
                      removed_near_protected=len(drop))
    k = min(args.k, len(rows))
    nb = knn_resumable(d, "pool", x, put_database(x, args.mesh, db_block=args.db_block), k,
                       write=args.is_writer, query_block=args.query_block)
    res = dedup_pool(x, args.threshold, k=k, drop=drop, neighbours=nb)
    comp_sizes = np.bincount(res.component)
    report.update(threshold=args.threshold, k=k, duplicate_pairs=res.edges,
                  duplicate_groups=int(np.sum(comp_sizes > 1)), largest_group=int(comp_sizes.max()),
                  removed_duplicates=int(len(rows) - len(drop) - len(res.keep)), kept=len(res.keep),
                  saturated_rows=res.saturated)
    if res.saturated:
        logger.warning("dedup: %d images still had a neighbour above the threshold at rank k=%d; a larger --k "
                       "may find more duplicates", res.saturated, k)
    finish_step(args, "dedup", store, rows[res.keep], report)


def run_retrieve(args) -> None:
    from dinov2_jax.curate.retrieve import retrieve_by_cluster, retrieve_knn

    store = open_store(args, args.pool)
    rows, source = input_rows(args, store)
    x = store.vectors()[rows]
    seeds_store = open_store(args, args.seeds)
    seeds = seeds_store.vectors()
    report = {"input": source, "pool": len(rows), "seeds": len(seeds), "mode": args.mode}
    if args.mode == "knn":
        sel, _, _ = retrieve_knn(seeds, x, args.k, min_similarity=args.min_similarity, **search_kw(args))
        report.update(k=args.k, min_similarity=args.min_similarity)
    else:
        from dinov2_jax.curate.kmeans import kmeans

        path = os.path.join(step_dir(args.out, "retrieve"), f"pool_kmeans_{args.pool_clusters}.npz")
        if os.path.isfile(path):
            with np.load(path) as z:
                cents, assign = z["centroids"], z["assign"]
        else:
            res = kmeans(x, args.pool_clusters, iters=args.iters, init=args.init, seed=args.seed, mesh=args.mesh)
            cents, assign = res.centroids, res.assign
            if args.is_writer:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                np.savez(path, centroids=cents, assign=assign)
        sel, hit = retrieve_by_cluster(seeds, cents, assign, args.per_cluster, seed=args.seed, **search_kw(args))
        report.update(pool_clusters=args.pool_clusters, per_cluster=args.per_cluster, clusters_hit=len(hit))
    report["retrieved"] = len(sel)
    extra = seeds_store.row_refs(range(len(seeds))) if args.include_seeds and has_paths(seeds_store) else None
    if args.include_seeds:
        report["seed_images_listed"] = len(extra or [])
    finish_step(args, "retrieve", store, rows[sel], report, extra_refs=extra)


def run_kmeans(args) -> None:
    from dinov2_jax.curate.kmeans import Hierarchy, balanced_sample, resampled_kmeans
    from dinov2_jax.curate.report import flatness

    store = open_store(args, args.pool)
    rows, source = input_rows(args, store)
    x = store.vectors(np.float32)[rows]
    d = step_dir(args.out, "kmeans")
    os.makedirs(d, exist_ok=True)
    steps = _per_level(args.resample_steps, len(args.levels), "--resample-steps")
    sizes = _per_level(args.resample_size, len(args.levels), "--resample-size")
    cents, assigns, pts = [], [], x
    for t, k in enumerate(args.levels):
        path = os.path.join(d, f"level_{t}.npz")
        if os.path.isfile(path):  # resume: a finished level is loaded
            with np.load(path) as z:
                c, a = z["centroids"], z["assign"]
        else:
            if k > len(pts):
                raise SystemExit(f"--levels: level {t} asks for {k} clusters of {len(pts)} points")
            res = resampled_kmeans(pts, k, iters=args.iters, resample_steps=steps[t] if sizes[t] else 0,
                                   resample_size=sizes[t], init=args.init, seed=args.seed + 1000 * t,
                                   mesh=args.mesh, block=args.db_block)
            c, a = res.centroids, res.assign
            if args.is_writer:
                np.savez(path + ".tmp.npz", centroids=c, assign=a)
                os.replace(path + ".tmp.npz", path)
        print(f"kmeans level {t}: {len(pts)} -> {k} clusters", flush=True)
        cents.append(c)
        assigns.append(a)
        pts = c
    h = Hierarchy(cents, assigns)
    top = h.point_clusters(h.levels - 1)
    k_top = len(cents[-1])
    before = np.bincount(top, minlength=k_top)
    sel = balanced_sample(h, args.sample, seed=args.seed) if args.sample else np.arange(len(rows))
    after = np.bincount(top[sel], minlength=k_top)
    report = {"input": source, "pool": len(rows), "levels": args.levels, "iters": args.iters, "init": args.init,
              "resample_steps": steps, "resample_size": sizes, "sample": args.sample, "kept": len(sel),
              "top_cluster_sizes_before": before.tolist(), "top_cluster_sizes_after": after.tolist(),
              "flatness_before": flatness(before), "flatness_after": flatness(after)}
    finish_step(args, "kmeans", store, rows[sel], report)


def _per_level(values, n: int, flag: str) -> list:
    if values is None:
        return [None] * n
    if len(values) == 1:
        return list(values) * n
    if len(values) != n:
        raise SystemExit(f"{flag}: give one value or one per level ({n}), got {values}")
    return list(values)


def run_report(args) -> None:
    from dinov2_jax.curate.report import cluster_size_picture, load_step_reports, write_markdown

    reports = load_step_reports(args.out)
    if not reports:
        raise SystemExit(f"no finished step in {args.out!r}: nothing to report")
    pictures = {}
    if "kmeans" in reports:
        km = reports["kmeans"]
        pictures["cluster sizes"] = cluster_size_picture(km["top_cluster_sizes_before"], km["top_cluster_sizes_after"],
                                                         os.path.join(args.out, "cluster_sizes.png"),
                                                         "top-level cluster sizes, pool vs balanced sample")
        store = open_store(args, args.pool)
        if has_paths(store):
            pictures["clusters"] = _cluster_sheet(args, store, km)
    path = write_markdown(args.out, reports, pictures)
    print(f"report: {path}", flush=True)


def _cluster_sheet(args, store: EmbeddingStore, km: dict) -> str:
    """Contact sheet: the images closest to the centroid of a few of the largest finest-level clusters."""
    from dinov2_jax.curate.report import contact_sheet

    rows = np.arange(len(store.ids())) if km["input"] == "all" else np.load(
        os.path.join(step_dir(args.out, km["input"]), "rows.npy"))
    with np.load(os.path.join(step_dir(args.out, "kmeans"), "level_0.npz")) as z:
        cents, assign = z["centroids"], z["assign"]
    x = store.vectors(np.float32)[rows]
    sizes = np.bincount(assign, minlength=len(cents))
    groups, labels = [], []
    for c in np.argsort(-sizes, kind="stable")[: args.sheet_clusters]:
        members = np.flatnonzero(assign == c)
        dist = ((x[members] - cents[c]) ** 2).sum(1)
        near = members[np.argsort(dist, kind="stable")[: args.sheet_images]]
        groups.append(store.row_refs(rows[near]))
        labels.append(f"cluster {c}\n{sizes[c]} images")
    return contact_sheet(groups, os.path.join(args.out, "clusters.png"), labels=labels)


# ---------------------------------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m dinov2_jax.curate", description="DINOv2-style data curation (JAX)")
    sub = p.add_subparsers(dest="step", required=True)

    def common(q):
        q.add_argument("--out", required=True, help="curation folder (all steps read and write here)")
        q.add_argument("--force", action="store_true", help="rerun a finished step")
        q.add_argument("--distributed", action="store_true", help="join a multi-process job (jax.distributed)")
        q.add_argument("--pool", default="pool", help="embedding name of the uncurated pool")

    def search(q):
        q.add_argument("--input", default="auto", choices=["auto", "all", "dedup", "retrieve"],
                       help="pool rows to start from (auto: dedup's result if it exists, else all)")
        q.add_argument("--query-block", type=int, default=1024, help="queries per search program")
        q.add_argument("--db-block", type=int, default=4096, help="database rows per matmul block (per device)")

    e = sub.add_parser("embed", help="images -> normalised float16 embeddings")
    common(e)
    e.add_argument("--dataset", required=True, help="dataset spec: folder:PATH, list:FILE, tfds:..., demo")
    e.add_argument("--weights", required=True, help="anything dinov2_jax.pretrained.from_pretrained loads")
    e.add_argument("--name", default="pool", help="store name (pool, eval, seeds, ...)")
    e.add_argument("--image-size", type=int, default=224)
    e.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--shard-size", type=int, default=65536, help="images per shard (the unit of resuming)")
    e.add_argument("--num-workers", type=int, default=0, help="decoding worker processes")

    d = sub.add_parser("dedup", help="remove near-duplicates (pool-internal, and near a protected set)")
    common(d)
    search(d)
    d.add_argument("--threshold", type=float, default=0.6, help="cosine at or above which two pool images are copies")
    d.add_argument("--k", type=int, default=64, help="neighbours searched per image")
    d.add_argument("--protected", default=None, help="embedding name of images whose copies must go (eval sets)")
    d.add_argument("--protected-threshold", type=float, default=0.45)

    r = sub.add_parser("retrieve", help="pool images near curated seed images")
    common(r)
    search(r)
    r.add_argument("--seeds", required=True, help="embedding name of the curated seed set")
    r.add_argument("--mode", default="knn", choices=["knn", "cluster"])
    r.add_argument("--k", type=int, default=4, help="knn mode: neighbours per seed image")
    r.add_argument("--min-similarity", type=float, default=None, help="knn mode: drop neighbours below this cosine")
    r.add_argument("--pool-clusters", type=int, default=1000, help="cluster mode: k-means clusters of the pool")
    r.add_argument("--per-cluster", type=int, default=100, help="cluster mode: images drawn per cluster hit")
    r.add_argument("--iters", type=int, default=20)
    r.add_argument("--init", default="kmeans++", choices=["kmeans++", "random"])
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--include-seeds", action="store_true", help="list the seed images too (LVD-142M does)")

    k = sub.add_parser("kmeans", help="hierarchical k-means and balanced sampling")
    common(k)
    search(k)
    k.add_argument("--levels", type=int, nargs="+", required=True, help="clusters per level, decreasing")
    k.add_argument("--iters", type=int, default=20)
    k.add_argument("--init", default="kmeans++", choices=["kmeans++", "random"])
    k.add_argument("--resample-steps", type=int, nargs="+", default=None, help="per level (or one for all)")
    k.add_argument("--resample-size", type=int, nargs="+", default=None, help="points per cluster per resampling")
    k.add_argument("--sample", type=int, default=None, help="balanced sample of this many images (default: keep all)")
    k.add_argument("--seed", type=int, default=0)

    rp = sub.add_parser("report", help="report.md, cluster-size picture, contact sheet")
    common(rp)
    rp.add_argument("--sheet-clusters", type=int, default=6)
    rp.add_argument("--sheet-images", type=int, default=8)
    return p


STEP_FNS = {"embed": run_embed, "dedup": run_dedup, "retrieve": run_retrieve, "kmeans": run_kmeans,
            "report": run_report}


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = get_args_parser().parse_args(argv)
    if args.distributed:
        from dinov2_jax.parallel.distributed import initialize_from_env

        initialize_from_env()
    import jax

    args.is_writer = jax.process_index() == 0
    args.mesh = None
    if args.step == "embed" and args.force and args.is_writer:
        shutil.rmtree(store_dir(args.out, args.name), ignore_errors=True)
    if args.step in ("dedup", "retrieve", "kmeans"):
        if is_done(args.out, args.step) and not args.force:
            print(f"{args.step}: already done in {step_dir(args.out, args.step)} (--force to rerun)", flush=True)
            return 0
        if args.force and args.is_writer:
            shutil.rmtree(step_dir(args.out, args.step), ignore_errors=True)
        from dinov2_jax.curate.search import default_mesh

        args.mesh = default_mesh()
    try:
        STEP_FNS[args.step](args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
