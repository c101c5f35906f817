"""`python -m dinov2_jax.curate` end to end on a folder of generated images with a tiny random backbone:
embed -> dedup (copies in the pool and of the eval images) -> kmeans + balanced sample -> report, and the
list file reads as a `list:` dataset."""
import json
import os
import shutil

import pytest

from curate_synthetic import pattern_images, tiny_backbone_dir, write_images
from dinov2_jax.curate.__main__ import main


def test_curate_folder_end_to_end(tmp_path, capsys):
    weights = tiny_backbone_dir(str(tmp_path / "tiny"))
    pool_dir, eval_dir, out = tmp_path / "pool", tmp_path / "eval", str(tmp_path / "cur")
    images = pattern_images(40, size=32, seed=0)
    paths = write_images(str(pool_dir), images)
    for i in range(5):  # five byte-identical copies inside the pool
        shutil.copy(paths[i], pool_dir / f"copy_{i}.png")
    write_images(str(eval_dir), images[30:33], prefix="eval")  # three pool images are eval images
    common = ["--out", out]
    emb = ["--weights", weights, "--image-size", "28", "--batch-size", "16", "--shard-size", "20"]
    assert main(["embed", *common, "--dataset", f"folder:{pool_dir}", *emb]) == 0
    assert "images/s" in capsys.readouterr().out
    assert main(["embed", *common, "--dataset", f"folder:{eval_dir}", "--name", "eval", *emb]) == 0
    # random tiny backbone: distinct images reach cosine 0.993, copies >= 0.9998 (float16 store, other batch)
    assert main(["dedup", *common, "--threshold", "0.999", "--k", "8", "--protected", "eval",
                 "--protected-threshold", "0.999"]) == 0
    rep = json.load(open(os.path.join(out, "dedup", "report.json")))
    assert rep["pool"] == 45 and rep["removed_near_protected"] == 3 and rep["removed_duplicates"] == 5
    kept = open(os.path.join(out, "files.txt")).read().splitlines()
    names = {os.path.basename(p) for p in kept}
    assert len(kept) == 37
    assert all(len(names & {f"copy_{i}.png", f"img_{i:04d}.png"}) == 1 for i in range(5))  # one of each pair
    assert not any(os.path.basename(p) in {"img_0030.png", "img_0031.png", "img_0032.png"} for p in kept)
    # a finished step is skipped
    assert main(["dedup", *common]) == 0 and "already done" in capsys.readouterr().out
    assert main(["kmeans", *common, "--levels", "6", "2", "--iters", "5", "--sample", "20"]) == 0
    km = json.load(open(os.path.join(out, "kmeans", "report.json")))
    assert km["input"] == "dedup" and km["kept"] == 20 and sum(km["top_cluster_sizes_before"]) == 37
    assert main(["report", *common]) == 0
    for name in ("report.md", "cluster_sizes.png", "clusters.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    from dinov2_jax.data.sources import make_source

    src = make_source(f"list:{os.path.join(out, 'files.txt')}")
    assert len(src) == 20 and src[0][0].size == (32, 32)
    # what the trainer does with --config.train.dataset_path=list:DIR/files.txt: a batch of crops
    from configs.ssl_default import get_config
    from dinov2_jax.data.pipeline import make_train_loader

    cfg = get_config()
    cfg.train.dataset_path = f"list:{os.path.join(out, 'files.txt')}"
    cfg.crops.global_crops_size, cfg.crops.local_crops_size, cfg.crops.local_crops_number = 32, 16, 2
    cfg.student.patch_size = 8
    batch = next(make_train_loader(cfg, process_index=0, process_count=1, batch_size_per_process=4, num_workers=0))
    assert batch["collated_global_crops"].shape[0] == 8


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["dedup", "--out", str(tmp_path)]) == 2
    assert "curate embed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["kmeans", "--out", str(tmp_path)])  # --levels is required
