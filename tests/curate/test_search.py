"""Exact blocked k-NN (`dinov2_jax/curate/search.py`): identical to faiss, no [N, N] buffer, resumable,
the same on 8 simulated devices."""
import json
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from curate_synthetic import unit
from dinov2_jax.curate.search import (knn, knn_resumable, largest_buffer_elements, put_database,
                                      search_hlo_shapes)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _faiss_knn(q, x, k):
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(np.ascontiguousarray(x, np.float32))
    return index.search(np.ascontiguousarray(q, np.float32), k)


@pytest.mark.parametrize("db_block,query_block", [(512, 128), (1000, 77)])  # blocks that do not divide N or Q
def test_knn_identical_to_faiss(db_block, query_block):
    rng = np.random.default_rng(0)
    x = unit(rng.normal(size=(3001, 48)))
    # float16 round trip: the store keeps float16, both searches get the same float32 values
    x = x.astype(np.float16).astype(np.float32)
    q = unit(rng.normal(size=(301, 48)))
    sims, ids = knn(q, x, 10, db_block=db_block, query_block=query_block)
    fs, fi = _faiss_knn(q, x, 10)
    np.testing.assert_array_equal(ids, fi)
    np.testing.assert_allclose(sims, fs, atol=1e-5)
    assert np.all(np.diff(sims, axis=1) <= 0)
    _, ids16 = knn(q, x.astype(np.float16), 10, db_block=db_block, query_block=query_block)  # float16 on device
    np.testing.assert_array_equal(ids16, fi)


def test_knn_self_search_finds_itself_and_checks_arguments():
    x = unit(np.random.default_rng(1).normal(size=(200, 16)))
    sims, ids = knn(x, x, 1, db_block=64)
    np.testing.assert_array_equal(ids[:, 0], np.arange(200))
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="k=201"):
        knn(x, x, 201)
    with pytest.raises(ValueError, match="queries"):
        knn(x[:, :8], x, 3)


def test_search_program_has_no_n_by_n_buffer():
    n, qb, block, k = 4096, 256, 128, 16
    db = put_database(unit(np.random.default_rng(2).normal(size=(n, 32))), db_block=block)
    hlo, mem = search_hlo_shapes(db, k, qb)
    largest = largest_buffer_elements(hlo)
    # the biggest array is the database itself [N, D]; similarities exist only as [Q, block (+ k)] blocks
    assert largest == n * 32, largest
    assert f"[{qb},{n}]" not in hlo.replace(" ", "") and f"[{n},{n}]" not in hlo.replace(" ", "")
    assert mem.temp_size_in_bytes < 4 * qb * (block + k) * 4 + 4 * n * 32, mem
    assert mem.temp_size_in_bytes < n * n * 4 / 16


def test_knn_resumable_reuses_finished_parts(tmp_path):
    rng = np.random.default_rng(3)
    x = unit(rng.normal(size=(500, 16)))
    s1, i1 = knn_resumable(str(tmp_path), "pool", x, x, 5, part_size=128, db_block=100)
    parts = sorted(p.name for p in tmp_path.iterdir())
    assert parts == [f"pool_part_{p:05d}.npz" for p in range(4)]
    # a finished part is loaded, not searched again: tamper with one and it comes back as saved
    with np.load(tmp_path / parts[1]) as z:
        sims, ids = z["sims"].copy(), z["ids"].copy()
    ids[0, 0] = 499
    np.savez(tmp_path / parts[1], sims=sims, ids=ids)
    os.remove(tmp_path / parts[2])  # an unfinished part is searched
    s2, i2 = knn_resumable(str(tmp_path), "pool", x, x, 5, part_size=128, db_block=100)
    assert i2[128, 0] == 499
    np.testing.assert_array_equal(np.delete(i2, 128, 0), np.delete(i1, 128, 0))
    assert (tmp_path / parts[2]).exists()


def test_eight_simulated_devices_match_one():
    """Database split over 8 devices (and k-means over 8 devices): the same neighbours as faiss, per-device
    program without an [N, N] buffer (run in a subprocess: the device count is fixed at JAX start-up)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8",
               PYTHONPATH=str(ROOT) + os.pathsep + str(HERE))
    r = subprocess.run([sys.executable, str(HERE / "multidevice_check.py")], capture_output=True, text=True,
                       timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["devices"] == 8
    assert res["knn_equal_faiss"] and res["knn_equal_one_device"]
    assert res["largest_buffer"] <= res["db_elements"] // 8  # per device: its database share is the largest array
    assert res["db_bytes_per_device"] == res["db_bytes_total"] // 8
    assert res["kmeans_assign_equal"]
    assert abs(res["kmeans_objective"] - res["kmeans_objective_one_device"]) <= 1e-4 * res["kmeans_objective"]
