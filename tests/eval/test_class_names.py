"""Train and val classes are matched by folder NAME; datasets are checked before any feature is extracted."""
import os

import numpy as np
import pytest
from PIL import Image

from dinov2_jax.eval import knn, linear

COLORS = {"apple": (220, 20, 20), "banana": (230, 220, 30), "cherry": (120, 0, 60), "grape": (60, 20, 140)}


def make_folder(root, classes, per_class=3):
    rng = np.random.default_rng(len(classes))
    for name in classes:
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):  # a flat colour per class plus a little noise
            px = np.clip(np.array(COLORS[name]) + rng.integers(-8, 9, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(os.path.join(root, name, f"{i}.png"))
    return f"folder:{root}"


def mean_colour(images):  # [B, H, W, 3] -> [B, 3]: a feature that separates the classes perfectly
    return np.asarray(images).mean(axis=(1, 2)) + 10.0  # shift: avoid sign flips after normalisation


def test_val_subset_of_classes_scores_100(tmp_path):
    train = make_folder(str(tmp_path / "train"), ["apple", "banana", "cherry", "grape"])
    # val holds 2 of the 4 classes: sorted-index matching would call "cherry" class 0 (= apple) -> 0 %
    val = make_folder(str(tmp_path / "val"), ["cherry", "grape"])
    res = knn.knn_eval(mean_colour, train, val, nb_knn=[1], image_size=16, resize_size=16, progress=False)
    assert res["('full', 1) Top 1"] == 100.0


def test_linear_probe_matches_class_names(tmp_path):
    import jax

    from dinov2_jax.eval.features import extract_features, load_train_val

    train = make_folder(str(tmp_path / "train"), ["apple", "banana", "cherry", "grape"])
    val = make_folder(str(tmp_path / "val"), ["banana", "grape"])
    train_src, val_src = load_train_val(train, val)
    assert train_src.classes == ["apple", "banana", "cherry", "grape"]
    _, labels = extract_features(mean_colour, val_src, image_size=16, resize_size=16, progress=False)
    np.testing.assert_array_equal(labels, [1, 1, 1, 3, 3, 3])  # banana = 1, grape = 3 as in train
    assert val_src.labels().tolist() == [1, 1, 1, 3, 3, 3]


def test_disjoint_or_extra_class_names_raise(tmp_path):
    train = make_folder(str(tmp_path / "train"), ["apple", "banana"])
    val = make_folder(str(tmp_path / "val"), ["cherry", "grape"])
    with pytest.raises(ValueError, match="share no class name"):
        knn.knn_eval(mean_colour, train, val, image_size=16, resize_size=16, progress=False)
    val2 = make_folder(str(tmp_path / "val2"), ["banana", "grape"])
    with pytest.raises(ValueError, match=r"val classes \['grape'\].*do not exist in the train set"):
        knn.knn_eval(mean_colour, train, val2, image_size=16, resize_size=16, progress=False)


def test_missing_or_empty_sets_fail_before_extraction(tmp_path):
    train = make_folder(str(tmp_path / "train"), ["apple", "banana"])
    os.makedirs(tmp_path / "empty")
    calls = []

    def counting(images):
        calls.append(1)
        return mean_colour(images)

    with pytest.raises(FileNotFoundError, match="val dataset 'folder:/nonexistent/val'"):
        knn.knn_eval(counting, train, "folder:/nonexistent/val", image_size=16, resize_size=16, progress=False)
    with pytest.raises(ValueError, match="val dataset .*no images"):
        knn.knn_eval(counting, train, f"folder:{tmp_path / 'empty'}", image_size=16, resize_size=16,
                     progress=False)
    assert calls == []  # the train set was never run through the model
    # the CLIs check the datasets before even loading the model
    for cli in (knn.main, linear.main):
        with pytest.raises(FileNotFoundError, match="train dataset"):
            cli(["--arch", "dinov2_vits14", "--allow-random-init", "--train-dataset", "folder:/nonexistent/train",
                 "--val-dataset", train])


def test_flat_val_folder_with_label_file_scores_100(tmp_path):
    """ImageNet-style val: flat images + LOC_val_solution.csv naming the class folders of train."""
    train = make_folder(str(tmp_path / "train"), ["apple", "banana", "cherry", "grape"])
    val = tmp_path / "val"
    rows = []
    for i, name in enumerate(["grape", "banana", "grape"]):
        make_folder(str(tmp_path / "tmp"), [name], per_class=1)
        os.makedirs(val, exist_ok=True)
        os.replace(tmp_path / "tmp" / name / "0.png", val / f"img_{i}.png")
        rows.append(f"img_{i},{name} 0 0 5 5")
    (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    res = knn.knn_eval(mean_colour, train, f"folder:{val}", nb_knn=[1], image_size=16, resize_size=16,
                       progress=False)
    assert res["('full', 1) Top 1"] == 100.0
