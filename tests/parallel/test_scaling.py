"""Does the train step split its work over a mesh? XLA's cost / memory analysis and the compiled HLO's
collectives on 8 simulated CPU devices (benchmarks/scaling.py; numbers in docs/benchmarks.md)."""
import pytest

from test_sharding import run_on_8_cpu_devices  # tests/parallel is on sys.path (pytest rootdir mode)


def _check_rows(rows):
    for r in rows:
        where = (r["mesh"], r["drop_path"])
        # each device does ~1/8 of the one-device work (ideal 8x; replicated optimizer update costs a bit)
        assert r["split"] >= 7.0, (where, r["split"])
        # bytes moved by collectives stay within 1.5x of the analytic data/FSDP/tensor budget
        assert r["collective_total"] <= 1.5 * r["budget"], (where, r["collectives"], r["budget"])


def test_data_parallel_split_at_vitl_drop_path_and_sharded_state_creation():
    res = run_on_8_cpu_devices("scaling_check.py", "quick", timeout=900)
    # stochastic depth at the ViT-L rate 0.4 used to leave 1.75x on data=8 (global subset gather)
    _check_rows(res["rows"])
    # the HLO parser counts a known all-gather (64x32 f32) and all-reduce (16 f32) exactly
    assert res["parser"]["all-gather"] == 64 * 32 * 4 and res["parser"]["all-reduce"] == 16 * 4, res["parser"]
    # bf16 compute: the kernels' gradients are all-reduced in bf16 (where GSPMD forms them, on the backward
    # dot), so the gradient traffic shrinks; float32 compute reduces everything in float32
    red = res["reduce"]
    assert red["float32"]["bf16"] == 0 and red["float32"]["n"] > 0, red
    assert red["bfloat16"]["bf16"] > 0, red
    assert red["bfloat16"]["all_reduce"] < 0.7 * red["float32"]["all_reduce"], red
    # the ViT-g/14 state (student + teacher + Adam, ~18 GiB) created born sharded on fsdp=8 needs about
    # 1/8 of it per device (replicated small arrays and the init's temporaries are the margin)
    init = res["init"]
    assert init["state_bytes"] > 15 * 2**30, init
    assert init["fraction"] <= 0.125 + 0.015, init


@pytest.mark.heavy
def test_every_mesh_splits_the_step_at_both_drop_path_rates():
    res = run_on_8_cpu_devices("scaling_check.py", "full", timeout=1800)
    assert {(tuple(r["mesh"]), r["drop_path"]) for r in res["rows"]} == {
        (m, d) for m in ((8, 1, 1), (1, 8, 1), (2, 4, 1), (2, 2, 2)) for d in (0.0, 0.4)}
    _check_rows(res["rows"])
