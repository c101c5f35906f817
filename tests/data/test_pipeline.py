"""Grain pipelines: batch contract, determinism, exact resume, sharding, corrupt files, eval loader."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from configs.ssl_default import get_config
from dinov2_jax.data.augmentations import eval_transform
from dinov2_jax.data.masking import mask_upperbound
from dinov2_jax.data.pipeline import make_eval_loader, make_train_loader, shuffled_shard, train_upperbound
from dinov2_jax.data.sources import make_source

KEYS = {"collated_global_crops", "collated_local_crops", "collated_masks", "mask_indices_list", "masks_weight",
        "n_masked_patches"}


def _cfg(path):
    cfg = get_config()
    cfg.train.dataset_path = path
    cfg.crops.global_crops_size = 32
    cfg.crops.local_crops_size = 16
    cfg.crops.local_crops_number = 2
    cfg.student.patch_size = 8
    cfg.train.seed = 3
    return cfg


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c in range(3):
        os.makedirs(root / f"class{c}")
        for i in range(5):
            arr = rng.integers(0, 256, (24 + i, 30, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / f"class{c}" / f"{i}.png")
    (root / "class1" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return str(root)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batch_contract_and_determinism(folder):
    cfg = _cfg(f"folder:{folder}")
    B = 4
    it = make_train_loader(cfg, process_index=0, process_count=1, batch_size_per_process=B, num_workers=0)
    batches = _take(it, 5)  # 20 samples > 15 good images: crosses an epoch and the broken file
    ub = mask_upperbound(B, 16)
    assert ub == train_upperbound(cfg, B)
    for b in batches:
        assert set(b) == KEYS
        assert b["collated_global_crops"].shape == (2 * B, 32, 32, 3) and b["collated_global_crops"].dtype == np.float32
        assert b["collated_local_crops"].shape == (2 * B, 16, 16, 3)
        assert b["collated_masks"].shape == (2 * B, 16) and b["collated_masks"].dtype == bool
        assert b["mask_indices_list"].shape == (1, ub) and b["masks_weight"].shape == (1, ub)  # 1 device: 1 group
        n = int(b["n_masked_patches"][0])
        np.testing.assert_array_equal(b["mask_indices_list"][0, :n], np.flatnonzero(b["collated_masks"]))
        # 4x4 grid: targets int(16 * ratio) can be < the 4-patch minimum block, so <= B crops get a mask
        assert 1 <= (b["collated_masks"].sum(1) > 0).sum() <= B
    again = _take(make_train_loader(cfg, process_index=0, process_count=1, batch_size_per_process=B,
                                    num_workers=0), 5)
    _assert_batches_equal(batches, again)
    other = next(make_train_loader(cfg, seed=4, process_index=0, process_count=1, batch_size_per_process=B,
                                   num_workers=0))
    assert not np.array_equal(other["collated_global_crops"], batches[0]["collated_global_crops"])
    # 2 per-device groups of 2 images: each group masked on its own, group-local indices
    two = next(make_train_loader(cfg, process_index=0, process_count=1, batch_size_per_process=B, num_workers=0,
                                 groups=2))
    assert two["mask_indices_list"].shape == (2, train_upperbound(cfg, B, groups=2)) == (2, mask_upperbound(2, 16))
    for k in range(2):
        n = int(two["n_masked_patches"][k])
        np.testing.assert_array_equal(two["mask_indices_list"][k, :n],
                                      np.flatnonzero(two["collated_masks"][4 * k:4 * (k + 1)]))
    with pytest.raises(ValueError, match="per-device batches"):
        make_train_loader(cfg, process_index=0, process_count=1, batch_size_per_process=B, num_workers=0, groups=3)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_exact(folder, num_workers):
    cfg = _cfg(f"folder:{folder}")
    kw = dict(process_index=0, process_count=1, batch_size_per_process=3, num_workers=num_workers)
    it = make_train_loader(cfg, **kw)
    _take(it, 3)
    state = json.loads(json.dumps(it.get_state()))  # stored with the checkpoint as JSON
    expected = _take(it, 4)
    fresh = make_train_loader(cfg, **kw)
    fresh.set_state(state)
    _assert_batches_equal(_take(fresh, 4), expected)


def test_shards_are_disjoint_and_reshuffled_per_epoch():
    n = 12
    src = list(range(n))
    s0 = shuffled_shard(src, 7, 0, 2)
    s1 = shuffled_shard(src, 7, 1, 2)
    e0 = [s0[i] for i in range(n // 2)]
    e1 = [s1[i] for i in range(n // 2)]
    assert sorted(e0 + e1) == list(range(n))  # one epoch: every element once over both processes
    nxt = [s0[i] for i in range(n // 2, n)] + [s1[i] for i in range(n // 2, n)]
    assert sorted(nxt) == list(range(n))
    assert nxt != e0 + e1  # new permutation in the second epoch
    assert [shuffled_shard(src, 7, 0, 2)[i] for i in range(n)] == [s0[i] for i in range(n)]


def test_demo_train_loader():
    cfg = _cfg("demo")
    b = next(make_train_loader(cfg, process_index=0, process_count=1, batch_size_per_process=2, num_workers=0))
    assert b["collated_global_crops"].shape == (4, 32, 32, 3)


def test_eval_loader(folder):
    src = make_source(f"folder:{folder}")
    n = len(src)  # 16 files, one broken
    loaders = [make_eval_loader(f"folder:{folder}", 3, resize_size=40, crop_size=32, process_index=p,
                                process_count=2) for p in range(2)]
    assert len(loaders[0]) == len(loaders[1]) == 3  # ceil(ceil(16/2)/3)
    seen = []
    for p, loader in enumerate(loaders):
        rows = 0
        for imgs, labels, valid in loader:
            assert imgs.shape == (3, 32, 32, 3) and imgs.dtype == np.float32
            assert labels.dtype == np.int32 and valid.dtype == bool
            for r in range(3):
                idx = p + 2 * rows
                rows += 1
                if idx >= n:
                    assert not valid[r] and labels[r] == -1
                    continue
                sample = src[idx]
                if sample is None:
                    assert not valid[r]
                    continue
                assert valid[r] and labels[r] == sample[1]
                np.testing.assert_array_equal(imgs[r], eval_transform(sample[0], 40, 32))
                seen.append(idx)
    broken = [i for i, f in enumerate(src.files) if f.endswith("broken.jpg")]
    assert sorted(seen + broken) == list(range(n))


def test_unreadable_dataset_fails_fast(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="could be decoded"):
        make_train_loader(_cfg(f"folder:{tmp_path}"), process_index=0, process_count=1, batch_size_per_process=2,
                          num_workers=0)


def test_processes_draw_augmentations_of_the_global_stream(tmp_path):
    """Process p's i-th image is global stream element i*P+p with *that element's* random crops, so
    processes never share augmentation draws (they would if RNGs came from the per-process index)."""
    rng = np.random.default_rng(1)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    cfg = _cfg(f"folder:{tmp_path}")
    whole = next(make_train_loader(cfg, process_index=0, process_count=1, batch_size_per_process=4,
                                   num_workers=0))["collated_global_crops"]
    whole = whole.reshape(2, 4, *whole.shape[1:])  # [crop, image, ...], crop-major
    for p in range(2):
        part = next(make_train_loader(cfg, process_index=p, process_count=2, batch_size_per_process=2,
                                      num_workers=0))["collated_global_crops"]
        np.testing.assert_array_equal(part.reshape(2, 2, *part.shape[1:]), whole[:, p::2])
