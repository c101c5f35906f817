"""Instance retrieval with frozen DINOv2 features, revisited Oxford / Paris protocol (Radenovic et al. 2018).

  python -m dinov2_jax.eval.retrieval --weights W --images roxford5k/jpg --gnd roxford5k/gnd_roxford5k.pkl \
      --image-size 224 --out-dir retr_out

--gnd: the revisited ground truth (`gnd_r{oxford5k,paris6k}.pkl`, or the same structure as .json):
{"imlist": [database names], "qimlist": [query names], "gnd": [{"bbx": [x1, y1, x2, y2] or null,
"easy": [...], "hard": [...], "junk": [...]} per query]}, indices into imlist; images are
<images>/<name>.jpg. Queries are cropped to their box (the protocol's cropped queries).
Descriptor: the final-norm cls token of the image resized to --image-size square, L2-normalised; ranking by
cosine similarity. mAP protocols: medium: positives easy+hard, junk ignored; hard: positives hard, junk +
easy ignored. AP is the revisited-protocol one: ignored images are removed from the ranking, then the
precision before and after each positive is averaged (trapezoid), per positive, divided by #positives.
Queries without positives under a protocol are left out of its mean.
Writes out_dir/{metrics.json, topk.png} (query | top-k, border green = positive, red = negative, grey = junk).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import sys

import numpy as np

logger = logging.getLogger("dinov2_jax.eval.retrieval")

PROTOCOLS = ("medium", "hard")


def average_precision(ranking, positives, ignore=()) -> float:
    """ranking: database indices best first; -> revisited-protocol AP (nan if no positives)."""
    positives, ignore = set(int(i) for i in positives), set(int(i) for i in ignore) - set(int(i) for i in positives)
    if not positives:
        return float("nan")
    ranks, kept = [], 0  # 0-based ranks of positives in the ranking with ignored images removed
    for idx in ranking:
        idx = int(idx)
        if idx in ignore:
            continue
        if idx in positives:
            ranks.append(kept)
        kept += 1
    ap = 0.0
    for j, r in enumerate(ranks):  # j positives before this one
        before = 1.0 if r == 0 else j / r
        after = (j + 1) / (r + 1)
        ap += (before + after) / 2.0
    return ap / len(positives)


def protocol_sets(g: dict, protocol: str) -> tuple[list, list]:
    """(positives, ignored) of one query's ground truth under `protocol`."""
    easy, hard, junk = list(g.get("easy", [])), list(g.get("hard", [])), list(g.get("junk", []))
    if protocol == "medium":
        return easy + hard, junk
    if protocol == "hard":
        return hard, junk + easy
    raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")


def mean_average_precision(rankings, gnd, protocol: str) -> tuple[float, np.ndarray]:
    """rankings [Q, N] (best first), gnd list of dicts -> (mAP over queries with positives, AP per query [Q])."""
    aps = np.array([average_precision(r, *protocol_sets(g, protocol)) for r, g in zip(rankings, gnd)])
    valid = ~np.isnan(aps)
    return (float(aps[valid].mean()) if valid.any() else float("nan")), aps


def rank_database(query_feats, db_feats) -> np.ndarray:
    """Cosine similarity ranking: [Q, D], [N, D] -> database indices [Q, N], best first (stable on ties)."""
    q = query_feats / np.linalg.norm(query_feats, axis=1, keepdims=True)
    d = db_feats / np.linalg.norm(db_feats, axis=1, keepdims=True)
    return np.argsort(-(q @ d.T), axis=1, kind="stable")


def load_gnd(path: str) -> dict:
    """Revisited ground truth from .pkl (the official files; pickle: only open files you trust) or .json."""
    if path.endswith(".json"):
        with open(path) as f:
            cfg = json.load(f)
    elif path.endswith(".pkl"):
        with open(path, "rb") as f:
            cfg = pickle.load(f)
    else:
        raise ValueError(f"--gnd {path!r}: expected the revisited .pkl or a .json of the same structure")
    for k in ("imlist", "qimlist", "gnd"):
        if k not in cfg:
            raise ValueError(f"--gnd {path!r} has no {k!r} (keys: {sorted(cfg)})")
    if len(cfg["gnd"]) != len(cfg["qimlist"]):
        raise ValueError(f"--gnd: {len(cfg['gnd'])} ground-truth entries for {len(cfg['qimlist'])} queries")
    return cfg


def load_image(path: str, size: int, bbx=None) -> np.ndarray:
    """Image (cropped to bbx [x1, y1, x2, y2] if given) -> normalised float32 [size, size, 3]."""
    from PIL import Image

    from dinov2_jax.eval.dense import load_resized_image

    if bbx is None:
        return load_resized_image(path, (size, size))
    from dinov2_jax.data.augmentations import normalize

    with Image.open(path) as im:
        x1, y1, x2, y2 = (int(round(float(v))) for v in bbx)
        return normalize(im.convert("RGB").crop((x1, y1, x2, y2)).resize((size, size), Image.BICUBIC))


def image_path(images_dir: str, name: str) -> str:
    p = os.path.join(images_dir, name if os.path.splitext(name)[1] else name + ".jpg")
    if not os.path.isfile(p):
        raise FileNotFoundError(f"image {p!r} (listed in --gnd) not found under --images")
    return p


def save_topk_picture(cfg, rankings, images_dir: str, path: str, k: int = 5, n_queries: int = 4,
                      protocol: str = "medium", thumb: int = 96, pad: int = 6) -> None:
    from PIL import Image, ImageOps

    n = min(n_queries, len(rankings))
    canvas = Image.new("RGB", ((k + 1) * (thumb + pad) + pad + pad, n * (thumb + pad) + pad), (255, 255, 255))
    for qi in range(n):
        g = cfg["gnd"][qi]
        pos, ign = (set(s) for s in protocol_sets(g, protocol))
        y = pad + qi * (thumb + pad)
        with Image.open(image_path(images_dir, cfg["qimlist"][qi])) as q:
            q = q.convert("RGB")
            if g.get("bbx") is not None:
                q = q.crop(tuple(int(round(float(v))) for v in g["bbx"]))
            canvas.paste(q.resize((thumb, thumb)), (pad, y))
        for j, idx in enumerate(rankings[qi][:k]):
            colour = (40, 170, 60) if idx in pos else (150, 150, 150) if idx in ign else (210, 40, 40)
            with Image.open(image_path(images_dir, cfg["imlist"][idx])) as im:
                t = ImageOps.expand(im.convert("RGB").resize((thumb - 6, thumb - 6)), border=3, fill=colour)
            canvas.paste(t, (2 * pad + (j + 1) * (thumb + pad), y))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path)


def retrieval_eval(model, images_dir: str, cfg: dict, *, image_size: int = 224, batch_size: int = 32) -> dict:
    """Extract descriptors, rank, score. -> {"mAP_medium", "mAP_hard", "rankings", "ap_medium", "ap_hard"}."""
    from dinov2_jax.eval import dense

    fn = dense.make_frozen_feature_fn(model, lambda m, x: m.forward_features(x)["x_norm_clstoken"])

    def describe(items):  # items: (name, bbx or None); images read batch by batch
        out = []
        for s in range(0, len(items), batch_size):
            ims = np.stack([load_image(image_path(images_dir, n), image_size, b) for n, b in items[s:s + batch_size]])
            out.append(dense.batched(fn, ims, batch_size))
        return np.concatenate(out)

    db = describe([(n, None) for n in cfg["imlist"]])
    qs = describe([(n, g.get("bbx")) for n, g in zip(cfg["qimlist"], cfg["gnd"])])
    rankings = rank_database(qs, db)
    out = {"rankings": rankings}
    for p in PROTOCOLS:
        out[f"mAP_{p}"], out[f"ap_{p}"] = mean_average_precision(rankings, cfg["gnd"], p)
    return out


def get_args_parser() -> argparse.ArgumentParser:
    from dinov2_jax.eval import dense

    p = argparse.ArgumentParser("python -m dinov2_jax.eval.retrieval",
                                description="Revisited Oxford/Paris retrieval mAP with DINOv2 cls tokens")
    dense.add_model_args(p)
    p.add_argument("--images", required=True, help="folder holding <name>.jpg for every database and query name")
    p.add_argument("--gnd", required=True, help="revisited ground truth gnd_r*.pkl (or .json)")
    p.add_argument("--image-size", type=int, default=224, help="square resize (multiple of the patch size)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--top-k", type=int, default=5, help="neighbours shown in the picture")
    p.add_argument("--out-dir", required=True)
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = get_args_parser().parse_args(argv)
    from dinov2_jax.eval import dense

    cfg = load_gnd(args.gnd)
    model = dense.load_model(args)
    dense.check_size(args.image_size, model.patch_size)
    res = retrieval_eval(model, args.images, cfg, image_size=args.image_size, batch_size=args.batch_size)
    metrics = {f"mAP_{p}": res[f"mAP_{p}"] for p in PROTOCOLS}
    metrics.update({f"ap_{p}": [None if np.isnan(v) else float(v) for v in res[f"ap_{p}"]] for p in PROTOCOLS})
    metrics.update(n_database=len(cfg["imlist"]), n_queries=len(cfg["qimlist"]), image_size=args.image_size)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    save_topk_picture(cfg, res["rankings"], args.images, os.path.join(args.out_dir, "topk.png"), k=args.top_k)
    print(f"mAP medium {100 * metrics['mAP_medium']:.2f}  hard {100 * metrics['mAP_hard']:.2f}  "
          f"({len(cfg['qimlist'])} queries, {len(cfg['imlist'])} database images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
