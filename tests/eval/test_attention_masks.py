"""Attention-mask IoU evaluation: exact chance IoU vs Monte Carlo, the synthetic set and hand masks, and
(heavy) a reduced quickstart teacher's thresholded attention finds the pasted object better than chance."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from dinov2_jax.eval import attention_masks as am

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_chance_iou_matches_monte_carlo():
    rng = np.random.default_rng(0)
    pred = np.zeros((2, 6, 6), bool)
    pred.reshape(2, -1)[0, :5] = True
    pred.reshape(2, -1)[1, :20] = True
    gt = rng.random((2, 6, 6)) < 0.3
    exact = am.chance_iou(pred, gt)
    for i in range(2):
        k = pred[i].sum()
        sims = []
        for _ in range(20000):
            r = np.zeros(36, bool)
            r[rng.choice(36, k, replace=False)] = True
            sims.append(am.iou(r.reshape(6, 6), gt[i]))
        assert exact[i] == pytest.approx(np.mean(sims), abs=0.005)
    assert am.iou(gt, gt).tolist() == [1.0, 1.0] and am.iou(gt, ~gt).tolist() == [0.0, 0.0]


def test_synthetic_set_and_hand_masks():
    images, gt = am.synthetic_objects(6, size=64, patch=8, seed=1)
    assert images.shape == (6, 64, 64, 3) and gt.shape == (6, 8, 8)
    frac = gt.mean((1, 2))
    assert ((frac >= (2 / 8) ** 2) & (frac <= (4 / 8) ** 2 + 1e-9)).all()  # 30-55 % sides on an 8-patch grid
    # the pasted (sharp) square has more high-frequency detail than the blurred background around it
    detail = np.abs(np.diff(images, axis=2)).mean(-1)  # [6, 64, 63]
    up = np.repeat(np.repeat(gt, 8, 1), 8, 2)[:, :, 1:]
    assert all(detail[i][up[i]].mean() > 2 * detail[i][~up[i]].mean() for i in range(6))
    names, photos, masks = am.demo_photo_masks(128, 8)
    assert names == ["camera", "rocket", "coffee", "astronaut"] and photos.shape == (4, 128, 128, 3)
    assert masks.shape == (4, 16, 16) and 0.05 < masks.mean() < 0.9 and masks.any((1, 2)).all()
    with pytest.raises(ValueError, match="'rocket' outline covers no patch at size 64"):
        am.demo_photo_masks(64, 8)


# The first half of the quickstart (150 of its 300 iterations, schedules unchanged; export at iteration
# 149, a small k-NN). Shorter or smaller runs were tried and are not enough: iteration 99 of this run
# scores IoU 0.154 vs chance 0.125 (paired t 2.0), a 150-iteration schedule with batch 16 and 2 local
# crops 0.145 vs 0.131; iteration 149 scores 0.262 vs 0.119 (t 7.2); with the current recipe (Sinkhorn-Knopp,
# fast sharp teacher) 0.203 vs 0.097 (t 4.6). See docs/visualization.md.
HALF_QUICKSTART = ["--config.train.max_iterations=150", "--config.evaluation.eval_period_iterations=150",
                   "--config.evaluation.evaluators.knn.at_start=False",
                   "--config.evaluation.evaluators.knn.max_samples=40"]


@pytest.mark.heavy  # 6 min 56 s measured on the shared 2-core machine (load ~16); ~3 min expected idle
def test_half_quickstart_teacher_attention_finds_objects(tmp_path):
    from dinov2_jax.convert import load_converted
    from dinov2_jax.models.vision_transformer import DinoVisionTransformer

    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "dinov2_jax.train", "--config", "configs/quickstart.py",
                        f"--config.train.output_dir={out}", *HALF_QUICKSTART], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    teacher = load_converted(str(out / "eval" / "training_149"))
    arch = json.load(open(out / "eval" / "training_149" / "arch.json"))
    random_init = DinoVisionTransformer(**arch, rngs=nnx.Rngs(0))
    images, gt = am.synthetic_objects(100, size=64, patch=8, seed=0)
    trained = am.evaluate(teacher, images, gt)
    untrained = am.evaluate(random_init, images, gt)
    print("trained", {k: trained[k] for k in ("iou", "chance_iou", "gain_t")},
          "random init", {k: untrained[k] for k in ("iou", "chance_iou", "gain_t")})
    assert trained["iou"] > 1.5 * trained["chance_iou"] and trained["gain_t"] > 3
    assert trained["iou"] > untrained["iou"] + 0.05  # learned, not a property of the architecture
