"""`python -m dinov2_jax.curate ... --distributed` over 2 processes (each embedding its own shards, the search
and k-means split over both processes' devices) curates the same images as one process."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from curate_synthetic import pattern_images, tiny_backbone_dir, write_images

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path, out, args, processes: int):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if processes == 1:
        cmd = [sys.executable, "-m", "dinov2_jax.curate", *args, "--out", out]
    else:
        cmd = [sys.executable, str(ROOT / "launch" / "local_multiprocess.py"), "-n", str(processes),
               "--devices-per-process", "2", "--timeout", "400", "--",
               "-m", "dinov2_jax.curate", *args, "--out", out, "--distributed"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=500, cwd=ROOT, env=env)
    assert r.returncode == 0, (cmd, r.stdout[-3000:], r.stderr[-3000:])
    return r.stdout


@pytest.mark.heavy  # 2 x 4 process starts, each compiling a tiny ViT or the search: a few minutes on 2 cores
def test_two_processes_curate_like_one(tmp_path):
    weights = tiny_backbone_dir(str(tmp_path / "tiny"))
    pool_dir, eval_dir = tmp_path / "pool", tmp_path / "eval"
    images = pattern_images(45, size=32, seed=0)  # 50 pool images in 5 shards: uneven per process
    paths = write_images(str(pool_dir), images)
    for i in range(5):
        shutil.copy(paths[i], pool_dir / f"copy_{i}.png")
    write_images(str(eval_dir), images[30:33], prefix="eval")
    emb = ["--weights", weights, "--image-size", "28", "--batch-size", "8", "--shard-size", "10"]
    outs = {}
    for n in (1, 2):
        out = str(tmp_path / f"cur{n}")
        _run(tmp_path, out, ["embed", "--dataset", f"folder:{pool_dir}", *emb], n)
        _run(tmp_path, out, ["embed", "--dataset", f"folder:{eval_dir}", "--name", "eval", *emb], n)
        _run(tmp_path, out, ["dedup", "--threshold", "0.999", "--k", "8", "--protected", "eval",
                             "--protected-threshold", "0.999"], n)
        dedup = open(os.path.join(out, "files.txt")).read().splitlines()
        _run(tmp_path, out, ["kmeans", "--levels", "6", "2", "--iters", "5", "--sample", "20"], n)
        outs[n] = dict(out=out, dedup=dedup, kmeans=open(os.path.join(out, "files.txt")).read().splitlines(),
                       report=json.load(open(os.path.join(out, "dedup", "report.json"))))
    one, two = outs[1], outs[2]
    store = lambda o: sorted(p for p in os.listdir(os.path.join(o, "embeddings", "pool")))  # noqa: E731
    assert store(one["out"]) == store(two["out"])  # every shard written once, by one of the processes
    assert one["report"]["removed_duplicates"] == two["report"]["removed_duplicates"] == 5
    assert one["report"]["removed_near_protected"] == two["report"]["removed_near_protected"] == 3
    assert one["dedup"] == two["dedup"] and len(one["dedup"]) == 42
    assert len(two["kmeans"]) == 20 and one["kmeans"] == two["kmeans"]
    from dinov2_jax.curate.embeddings import EmbeddingStore

    a, b = (EmbeddingStore(os.path.join(o["out"], "embeddings", "pool")) for o in (one, two))
    assert a.row_refs(range(50)) == b.row_refs(range(50))
    np.testing.assert_allclose(a.vectors(np.float32), b.vectors(np.float32), atol=2e-3)
