"""Sharded feature extraction: 2 processes, each reading its own part, give the features and k-NN metrics
of one process reading everything."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def extract_both(distributed: bool):
    """Tiny fixed-seed backbone on 61 demo:train / 23 demo:val images (odd counts: uneven process shares)."""
    from flax import nnx

    from dinov2_jax.eval.features import extract_features, make_feature_fn
    from dinov2_jax.eval.knn import knn_classify
    from dinov2_jax.models.vision_transformer import DinoVisionTransformer

    model = DinoVisionTransformer(img_size=28, patch_size=14, embed_dim=32, depth=2, num_heads=2,
                                  init_values=1.0, rngs=nnx.Rngs(0))
    fn = make_feature_fn(model)
    kw = dict(batch_size=8, image_size=28, resize_size=32, progress=False, distributed=distributed)
    train = extract_features(fn, "demo:train", max_samples=61, **kw)
    val = extract_features(fn, "demo:val", max_samples=23, **kw)
    res = knn_classify(*train, *val, nb_knn=[5, 10], n_per_class_list=[-1, 2], n_tries=2)
    return train, val, res


@pytest.mark.heavy  # two JAX processes compiling the same model: about a minute on the 2-core machine
def test_two_process_extraction_equals_one_process(tmp_path):
    out = tmp_path / "two.npz"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, str(ROOT / "launch" / "local_multiprocess.py"), "-n", "2", "--timeout", "500",
                        "--", str(Path(__file__).parent / "dist_extract_worker.py"), str(out)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert r.returncode == 0 and r.stdout.count("WORKER_OK") == 2, r.stdout[-3000:] + r.stderr[-3000:]
    z = np.load(out)
    (tr, ytr), (va, yva), res = extract_both(distributed=False)
    assert z["train"].shape == tr.shape == (61, 32) and z["val"].shape == va.shape == (23, 32)
    np.testing.assert_array_equal(z["train_labels"], ytr)
    np.testing.assert_array_equal(z["val_labels"], yva)
    np.testing.assert_allclose(z["train"], tr, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z["val"], va, rtol=1e-5, atol=1e-5)
    assert json.loads(str(z["results"])) == pytest.approx(res, abs=1e-9)


def test_single_process_distributed_flag_is_a_no_op():
    (tr, ytr), (va, yva), res = extract_both(distributed=True)  # process_count() == 1: same as reading all
    (tr2, ytr2), _, res2 = extract_both(distributed=False)
    np.testing.assert_array_equal(tr, tr2)
    np.testing.assert_array_equal(ytr, ytr2)
    assert res == res2 and len(ytr) == 61


@pytest.mark.heavy  # two processes + one, each running ViT-S/14 (random init, 28 px) on 80 demo images
def test_knn_cli_distributed_writes_once_and_matches_one_process(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = ["-m", "dinov2_jax.eval.knn", "--arch", "dinov2_vits14", "--allow-random-init", "--image-size", "28",
            "--train-dataset", "demo:train", "--val-dataset", "demo:val", "--max-samples", "40", "--nb-knn", "5",
            "--batch-size", "16"]
    two, one = tmp_path / "two.json", tmp_path / "one.json"
    r = subprocess.run([sys.executable, str(ROOT / "launch" / "local_multiprocess.py"), "-n", "2", "--timeout", "500",
                        "--", *args, "--distributed", "--output", str(two)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = subprocess.run([sys.executable, *args, "--output", str(one)], capture_output=True, text=True, timeout=600,
                       cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    lines2, lines1 = two.read_text().splitlines(), one.read_text().splitlines()
    assert len(lines2) == len(lines1) == 2  # written once (process 0), top-1 and top-5 lines
    for a, b in zip(lines2, lines1):
        (ka, va), = json.loads(a).items()
        (kb, vb), = json.loads(b).items()
        assert ka == kb and va == pytest.approx(vb, abs=1e-9)


def test_batch_split_over_local_devices_gives_the_same_features(tmp_path):
    """One process with 2 (virtual CPU) devices: each batch is sharded over both; same features."""
    code = ("import json, sys, numpy as np\n"
            "sys.path.insert(0, %r)\n"
            "import jax\n"
            "assert jax.local_device_count() == 2\n"
            "from test_sharded_extraction import extract_both\n"
            "(tr, _), (va, _), res = extract_both(distributed=False)\n"
            "np.savez(%r, train=tr, val=va, results=json.dumps(res))\n") % (str(Path(__file__).parent),
                                                                           str(tmp_path / "two_dev.npz"))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    z = np.load(tmp_path / "two_dev.npz")
    (tr, _), (va, _), res = extract_both(distributed=False)
    np.testing.assert_allclose(z["train"], tr, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z["val"], va, rtol=1e-5, atol=1e-5)
    assert json.loads(str(z["results"])) == pytest.approx(res, abs=1e-9)
