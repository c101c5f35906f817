"""Curation report: counts per step (report.md), cluster-size picture, contact sheet of a few clusters."""
from __future__ import annotations

import json
import os

import numpy as np

STEPS = ("embed", "dedup", "retrieve", "kmeans")


def flatness(counts) -> dict:
    """How even a distribution over clusters is: {"max_over_mean", "normalised_entropy" (1 = uniform
    over the non-empty clusters), "nonempty"} of the per-cluster counts."""
    c = np.asarray(counts, np.float64)
    c = c[c > 0]
    if len(c) == 0:
        return {"max_over_mean": 0.0, "normalised_entropy": 0.0, "nonempty": 0}
    p = c / c.sum()
    ent = float(-(p * np.log(p)).sum() / np.log(len(c))) if len(c) > 1 else 1.0
    return {"max_over_mean": float(c.max() / c.mean()), "normalised_entropy": ent, "nonempty": int(len(c))}


def cluster_size_picture(before, after, path: str, title: str = "cluster sizes") -> str:
    """PNG: histogram of cluster sizes before balancing, and sizes by rank before / after (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before, after = np.asarray(before), np.asarray(after)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.hist(before, bins=min(50, max(5, len(before) // 2)), color="tab:blue", alpha=0.8, label="pool")
    if after is not None and len(after):
        a.hist(after, bins=min(50, max(5, len(after) // 2)), color="tab:orange", alpha=0.7, label="sampled")
    a.set_xlabel("images per cluster")
    a.set_ylabel("clusters")
    a.legend()
    b.semilogy(np.sort(before)[::-1] + 1e-9, label="pool", color="tab:blue")
    if after is not None and len(after):
        b.semilogy(np.sort(after)[::-1] + 1e-9, label="sampled", color="tab:orange")
    b.set_xlabel("cluster rank")
    b.set_ylabel("images")
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def contact_sheet(groups: list[list[str]], path: str, thumb: int = 64, labels: list[str] | None = None) -> str:
    """PNG grid: one row per group (e.g. a cluster), one thumbnail per image path (unreadable: grey)."""
    from PIL import Image, ImageDraw

    from dinov2_jax.data.sources import decode_image

    if not groups:
        raise ValueError("contact sheet: no group to draw")
    cols = max(len(g) for g in groups)
    pad, label_w = 2, 90
    sheet = Image.new("RGB", (label_w + cols * (thumb + pad), len(groups) * (thumb + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, group in enumerate(groups):
        y = r * (thumb + pad)
        if labels:
            draw.text((4, y + thumb // 2 - 6), labels[r], fill="black")
        for c, p in enumerate(group):
            try:
                im = decode_image(p)
                im.thumbnail((thumb, thumb))
            except Exception:  # noqa: BLE001 - a missing / broken file is drawn as a grey tile
                im = Image.new("RGB", (thumb, thumb), (160, 160, 160))
            sheet.paste(im, (label_w + c * (thumb + pad), y))
    sheet.save(path)
    return path


def load_step_reports(out: str) -> dict:
    res = {}
    for step in STEPS:
        p = os.path.join(out, step, "report.json")
        if os.path.isfile(p):
            with open(p) as f:
                res[step] = json.load(f)
    return res


def write_markdown(out: str, reports: dict, pictures: dict) -> str:
    """DIR/report.md: counts removed / kept per step and the pictures."""
    lines = ["# Curation report", ""]
    for step, r in reports.items():
        lines.append(f"## {step}")
        for key, value in r.items():
            if isinstance(value, (list, dict)) and len(json.dumps(value)) > 200:
                continue  # long arrays stay in the step's report.json
            lines.append(f"- {key}: {value}")
        lines.append("")
    for name, p in pictures.items():
        lines += [f"![{name}]({os.path.relpath(p, out)})", ""]
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path
