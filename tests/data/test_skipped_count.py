"""The train loader's count of dropped unreadable images (`SkippedImageCount`), with and without
decoding workers and several processes, against the positions of the broken files in the stream."""
import os

import numpy as np
import pytest
from PIL import Image
from test_pipeline import _cfg

from dinov2_jax.data.pipeline import SkippedImageCount, make_train_loader, shuffled_stream
from dinov2_jax.data.sources import make_source


@pytest.fixture(scope="module")
def folder_with_broken(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c in range(2):
        os.makedirs(root / f"class{c}")
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    for name in ("class0/bad1.jpg", "class1/bad2.png", "class1/bad3.jpg"):
        (root / name).write_bytes(b"\xff\xd8\xff garbage")
    return str(root)


@pytest.mark.parametrize("num_workers,process_index,process_count", [(0, 0, 1), (0, 1, 2), (2, 1, 2)])
def test_skipped_count_matches_the_broken_positions(folder_with_broken, num_workers, process_index, process_count):
    cfg = _cfg(f"folder:{folder_with_broken}")
    B = 3
    it = make_train_loader(cfg, process_index=process_index, process_count=process_count, batch_size_per_process=B,
                           num_workers=num_workers, sample_index=True)
    counter = SkippedImageCount(process_index, process_count, num_workers, fresh_start=True)
    last = {}
    W = max(num_workers, 1)
    for _ in range(12):  # 36 images of this process: several epochs of the 13-image dataset
        idx = next(it)["sample_index"]
        counter.update(idx)
        for g in idx:
            w = (int(g) - process_index) // process_count % W
            last[w] = max(last.get(w, -1), int(g))
    # ground truth: the positions each worker went through (up to its last delivered one) that are broken
    src = make_source(f"folder:{folder_with_broken}")
    stream = shuffled_stream(src, cfg.train.seed)
    want = 0
    for g in range(process_index, max(last.values()) + 1, process_count):
        w = (g - process_index) // process_count % W
        if g <= last.get(w, -1) and stream[g] is None:
            want += 1
    assert want >= 3  # the test sees several broken images
    assert counter.count == want
