"""Retrieval: revisited-protocol AP against hand computations, and the CLI on a synthetic set with planted
matches (exact copies of the queries in the database) scored against an independent recomputation."""
import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from dinov2_jax.eval import retrieval as rt

from heads_synthetic import tiny_backbone_dir


def test_average_precision_by_hand():
    # junk 7 removed -> [5, 3, 1, 0]: positives at ranks 1, 2.
    # trapezoid: (0/1 + 1/2)/2 + (1/2 + 2/3)/2 = 1/4 + 7/12 = 5/6, / 2 positives = 5/12
    assert rt.average_precision([5, 3, 7, 1, 0], [3, 1], [7]) == pytest.approx(5 / 12)
    assert rt.average_precision([2, 0, 1], [2]) == 1.0
    # positive at rank 2 of 3 (no junk): (0/2 + 1/3)/2 = 1/6
    assert rt.average_precision([0, 1, 2], [2]) == pytest.approx(1 / 6)
    assert np.isnan(rt.average_precision([0, 1], []))
    # protocols: medium = easy + hard vs junk; hard = hard vs junk + easy
    g = {"easy": [0], "hard": [2], "junk": [1]}
    assert rt.protocol_sets(g, "medium") == ([0, 2], [1]) and rt.protocol_sets(g, "hard") == ([2], [1, 0])
    # ranking [1, 2, 0]: medium: 1 junk -> [2, 0] both positives -> 1.0; hard: [2] -> 1.0
    m, aps = rt.mean_average_precision([[1, 2, 0], [0, 1, 2]], [g, {"easy": [1], "hard": [], "junk": []}], "hard")
    assert aps[0] == 1.0 and np.isnan(aps[1]) and m == 1.0  # query without hard positives left out
    m, aps = rt.mean_average_precision([[1, 2, 0], [0, 1, 2]], [g, {"easy": [1], "hard": [], "junk": []}], "medium")
    # query 2: positive 1 at rank 1 -> (0 + 1/2)/2 = 1/4
    np.testing.assert_allclose(aps, [1.0, 0.25])
    assert m == pytest.approx(0.625)


def _blocky(rng, size=56):
    return np.kron(rng.uniform(0, 255, (4, 4, 3)), np.ones((size // 4, size // 4, 1))).astype(np.uint8)


def test_cli_planted_matches(tmp_path):
    from dinov2_jax.convert import load_converted

    rng = np.random.default_rng(0)
    img = tmp_path / "jpg"
    img.mkdir()
    imlist, qimlist, gnd = [], [], []
    bases = [_blocky(rng) for _ in range(4)]
    for i in range(6):  # distractors
        imlist.append(f"d{i}")
        Image.fromarray(_blocky(rng)).save(img / f"d{i}.jpg")  # official names: no extension -> .jpg
    for q, base in enumerate(bases):
        # query = base inside a white frame, with a box around the base (the protocol crops queries)
        framed = np.full((76, 76, 3), 255, np.uint8)
        framed[10:66, 10:66] = base
        Image.fromarray(framed).save(img / f"q{q}.png")
        qimlist.append(f"q{q}.png")
        easy = len(imlist)
        imlist.append(f"copy{q}.png")  # planted exact match
        Image.fromarray(base).save(img / f"copy{q}.png")
        noisy = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
        imlist.append(f"noisy{q}.png")
        Image.fromarray(noisy).save(img / f"noisy{q}.png")
        gnd.append({"bbx": [10, 10, 66, 66], "easy": [easy], "hard": [easy + 1], "junk": [q]})  # a distractor as junk
    # a hand-computable query: two exact copies of it in the database, the first (lower index, so first among
    # the tied scores) NOT listed as a match, the second listed as its only (easy) positive:
    # ranking [neg twin, pos twin, ...] -> medium AP = (0/1 + 1/2) / 2 = 0.25; hard: no positive -> left out
    twin = _blocky(rng)
    Image.fromarray(twin).save(img / "twin_q.png")
    Image.fromarray(twin).save(img / "twin_neg.png")
    Image.fromarray(twin).save(img / "twin_pos.png")
    imlist += ["twin_neg.png", "twin_pos.png"]
    qimlist.append("twin_q.png")
    gnd.append({"bbx": None, "easy": [len(imlist) - 1], "hard": [], "junk": []})
    gnd_path = str(tmp_path / "gnd.pkl")
    with open(gnd_path, "wb") as f:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, f)
    wdir = tiny_backbone_dir(str(tmp_path / "backbone"))
    out = str(tmp_path / "out")
    assert rt.main(["--weights", wdir, "--images", str(img), "--gnd", gnd_path, "--image-size", "56",
                    "--batch-size", "4", "--out-dir", out]) == 0
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert m["ap_medium"][-1] == pytest.approx(0.25) and m["ap_hard"][-1] is None
    # independent recomputation: the model's cls token (official forward) on the same inputs, numpy ranking
    model = load_converted(wdir)
    load = lambda n, b=None: rt.load_image(rt.image_path(str(img), n), 56, b)  # noqa: E731
    db = np.asarray(model(np.stack([load(n) for n in imlist])))
    qs = np.asarray(model(np.stack([load(n, g["bbx"]) for n, g in zip(qimlist, gnd)])))
    sims = (qs / np.linalg.norm(qs, axis=1, keepdims=True)) @ (db / np.linalg.norm(db, axis=1, keepdims=True)).T
    for protocol in ("medium", "hard"):
        aps = []
        for s, g in zip(sims, gnd):
            pos, ign = rt.protocol_sets(g, protocol)
            keep = np.setdiff1d(np.arange(len(imlist)), ign)
            order = keep[np.argsort(-s[keep], kind="stable")]
            ranks = np.flatnonzero(np.isin(order, pos))
            j = np.arange(len(ranks))
            prec0 = np.where(ranks == 0, 1.0, j / np.maximum(ranks, 1))
            aps.append(np.sum((prec0 + (j + 1) / (ranks + 1)) / 2) / len(pos) if len(pos) else np.nan)
        got = np.array([np.nan if v is None else v for v in m[f"ap_{protocol}"]])
        np.testing.assert_allclose(got, aps, rtol=1e-9)
        assert m[f"mAP_{protocol}"] == pytest.approx(np.nanmean(aps))
    # the planted copy is the cropped query itself: always first
    assert (np.argmax(sims[:4], 1) == [imlist.index(f"copy{q}.png") for q in range(4)]).all()
    assert os.path.getsize(os.path.join(out, "topk.png")) > 0
    with pytest.raises(ValueError, match="no 'gnd'"):
        json.dump({"imlist": [], "qimlist": []}, open(tmp_path / "bad.json", "w"))
        rt.load_gnd(str(tmp_path / "bad.json"))
