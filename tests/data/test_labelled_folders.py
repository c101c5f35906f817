"""Flat val folders labelled by a label file, and the official `ImageNet:split=...:root=...` strings."""
import os

import numpy as np
import pytest
from PIL import Image

from dinov2_jax.data.sources import FolderSource, make_source


def write_images(folder, names):
    os.makedirs(folder, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)).save(os.path.join(folder, name))


def test_flat_folder_with_labels_txt(tmp_path):
    write_images(tmp_path / "val", ["b.png", "a.png", "c.JPEG"])
    (tmp_path / "val" / "labels.txt").write_text("a.png n02\nb.png,n01\nc.JPEG n02\n")
    src = make_source(f"folder:{tmp_path / 'val'}")
    assert src.classes == ["n01", "n02"]
    names = [os.path.basename(f) for f in src.files]
    assert dict(zip(names, src.labels.tolist())) == {"a.png": 1, "b.png": 0, "c.JPEG": 1}
    assert src[names.index("b.png")][1] == 0


def test_kaggle_imagenet_layout_loc_val_solution(tmp_path):
    val = tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    write_images(val, ["ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG"])
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\nILSVRC2012_val_00000002,n01440764 1 2 3 4\n"
        "ILSVRC2012_val_00000001,n09999999 5 6 7 8 n09999999 1 1 2 2\n")
    src = FolderSource(str(val))
    assert src.classes == ["n01440764", "n09999999"] and src.labels.tolist() == [1, 0]


def test_unlabelled_image_and_flat_folder_without_labels(tmp_path):
    write_images(tmp_path / "v", ["x.png", "y.png"])
    (tmp_path / "v" / "labels.txt").write_text("x.png n01\n")
    with pytest.raises(ValueError, match=r"1 of 2 images have no label .*'y'"):
        FolderSource(str(tmp_path / "v"))
    write_images(tmp_path / "plain", ["x.png"])
    src = FolderSource(str(tmp_path / "plain"))  # SSL training data: unlabelled, as before
    assert src.labels.tolist() == [-1] and src.classes == []


def test_official_imagenet_dataset_string(tmp_path):
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            write_images(tmp_path / split / cls, [f"{cls}_{split}_1.JPEG"])
    src = make_source(f"ImageNet:split=VAL:root={tmp_path}:extra={tmp_path / 'extra'}")
    assert src.root == str(tmp_path / "val") and src.classes == ["n01", "n02"] and len(src) == 2
    assert make_source(f"ImageNet:split=TRAIN:root={tmp_path}").root == str(tmp_path / "train")
    with pytest.raises(ValueError, match="split must be one of"):
        make_source(f"ImageNet:split=TEST:root={tmp_path}")
    with pytest.raises(ValueError, match="only ImageNet"):
        make_source(f"ImageNet22k:root={tmp_path}")
    with pytest.raises(ValueError, match="needs root="):
        make_source("ImageNet:split=VAL")
    with pytest.raises(ValueError, match="tokens are"):
        make_source(f"ImageNet:split=VAL:root={tmp_path}:foo=1")
