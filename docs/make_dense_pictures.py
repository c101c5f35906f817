"""Make the pictures of docs/dense.md: the segmentation, depth and retrieval CLIs on the synthetic sets of
tests/heads (tiny random-init backbone: no pretrained weights on this machine).

  PYTHONPATH=$PWD python docs/make_dense_pictures.py
writes docs/dense_segmentation.png, docs/dense_depth.png, docs/dense_retrieval.png and prints the metrics.
"""
import os
import pickle
import shutil
import sys
import tempfile

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "heads"))

from heads_synthetic import (colour_regions, depth_planes, tiny_backbone_dir, write_depth_folder,  # noqa: E402
                             write_seg_folder)

from dinov2_jax.eval import depth, retrieval, segmentation  # noqa: E402


def main():
    tmp = tempfile.mkdtemp()
    w = tiny_backbone_dir(os.path.join(tmp, "backbone"))
    for split, seed, n in (("train", 0, 24), ("val", 1, 8)):
        write_seg_folder(os.path.join(tmp, "seg"), split, *colour_regions(n, cell=28, seed=seed))
        write_depth_folder(os.path.join(tmp, "depth"), split, *depth_planes(n, seed=seed))
    segmentation.main(["--weights", w, "--data", os.path.join(tmp, "seg"), "--layout", "folder", "--num-classes", "4",
                       "--image-size", "56", "--iters", "150", "--lr", "1e-2", "--out-dir", os.path.join(tmp, "so")])
    shutil.copy(os.path.join(tmp, "so", "seg.png"), os.path.join(HERE, "dense_segmentation.png"))
    depth.main(["--weights", w, "--data", os.path.join(tmp, "depth"), "--layout", "folder", "--max-depth", "10",
                "--image-size", "56", "--iters", "300", "--lr", "1e-2", "--out-dir", os.path.join(tmp, "do")])
    shutil.copy(os.path.join(tmp, "do", "depth.png"), os.path.join(HERE, "dense_depth.png"))
    # retrieval: 4 queries, each with an exact copy (easy) and a noisy copy (hard) among 6 distractors
    rng = np.random.default_rng(0)
    blocky = lambda: np.kron(rng.uniform(0, 255, (4, 4, 3)), np.ones((14, 14, 1))).astype(np.uint8)  # noqa: E731
    img = os.path.join(tmp, "jpg")
    os.makedirs(img)
    imlist, qimlist, gnd = [], [], []
    for i in range(6):
        imlist.append(f"d{i}.png")
        Image.fromarray(blocky()).save(os.path.join(img, f"d{i}.png"))
    for q in range(4):
        base = blocky()
        Image.fromarray(base).save(os.path.join(img, f"q{q}.png"))
        Image.fromarray(base).save(os.path.join(img, f"copy{q}.png"))
        noisy = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(os.path.join(img, f"noisy{q}.png"))
        gnd.append({"bbx": None, "easy": [len(imlist)], "hard": [len(imlist) + 1], "junk": []})
        imlist += [f"copy{q}.png", f"noisy{q}.png"]
        qimlist.append(f"q{q}.png")
    with open(os.path.join(tmp, "gnd.pkl"), "wb") as f:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, f)
    retrieval.main(["--weights", w, "--images", img, "--gnd", os.path.join(tmp, "gnd.pkl"), "--image-size", "56",
                    "--out-dir", os.path.join(tmp, "ro")])
    shutil.copy(os.path.join(tmp, "ro", "topk.png"), os.path.join(HERE, "dense_retrieval.png"))
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
