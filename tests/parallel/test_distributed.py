"""Multi-process start-up (`dinov2_jax/parallel/distributed.py`) and the local launcher.

`plan_from_env` is pure: tested on fake environments. The real run starts 2 processes on localhost
(gloo over TCP, 2 CPU devices each) with launch/local_multiprocess.py; see dist_worker.py.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dinov2_jax.parallel.distributed import DistributedPlan, plan_from_env, slurm_first_host

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "launch" / "local_multiprocess.py"


@pytest.mark.parametrize("nodelist,host", [
    ("node001", "node001"), ("node001,host2", "node001"), ("gpu[003-005,9],cpu1", "gpu003"),
    ("gpu[7,9-12]", "gpu7"), ("a-b-1", "a-b-1"),
])
def test_slurm_first_host(nodelist, host):
    assert slurm_first_host(nodelist) == host


def test_no_launcher_is_single_process():
    assert plan_from_env({}) == DistributedPlan("none")
    # a one-task SLURM allocation (e.g. salloc + python) stays single process
    assert plan_from_env({"SLURM_JOB_ID": "5", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}).method == "none"
    assert plan_from_env({"TPU_WORKER_HOSTNAMES": "localhost"}).method == "none"  # single-host TPU VM


def test_explicit_env_and_jax_names():
    p = plan_from_env({"DINOV2_COORDINATOR": "10.0.0.1:1234", "DINOV2_NUM_PROCESSES": "4",
                       "DINOV2_PROCESS_ID": "3", "DINOV2_LOCAL_DEVICE_IDS": "0,1"})
    assert p == DistributedPlan("explicit", "10.0.0.1:1234", 4, 3, (0, 1))
    assert p.initialize_kwargs() == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                                     "process_id": 3, "local_device_ids": [0, 1]}
    p = plan_from_env({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"})
    assert p == DistributedPlan("explicit", "h:1", 2, 0, None)


@pytest.mark.parametrize("env,match", [
    ({"DINOV2_COORDINATOR": "h:1", "DINOV2_NUM_PROCESSES": "2"}, "missing: \\['DINOV2_PROCESS_ID'\\]"),
    ({"DINOV2_COORDINATOR": "h", "DINOV2_NUM_PROCESSES": "2", "DINOV2_PROCESS_ID": "0"}, "host:port"),
    ({"DINOV2_COORDINATOR": "h:1", "DINOV2_NUM_PROCESSES": "2", "DINOV2_PROCESS_ID": "2"}, "must be in"),
    ({"DINOV2_COORDINATOR": "h:1", "DINOV2_NUM_PROCESSES": "two", "DINOV2_PROCESS_ID": "0"}, "integer"),
    ({"DINOV2_DISTRIBUTED": "mpi"}, "use one of"),
    ({"DINOV2_DISTRIBUTED": "slurm"}, "run the program with srun"),
])
def test_bad_env_errors(env, match):
    with pytest.raises(ValueError, match=match):
        plan_from_env(env)


def test_slurm_plan():
    env = {"SLURM_JOB_ID": "12345", "SLURM_NTASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1",
           "SLURM_STEP_NODELIST": "gpu[010-011]", "SLURM_STEP_NUM_NODES": "2"}
    p = plan_from_env(env)
    assert p == DistributedPlan("slurm", f"gpu010:{61440 + 12345 % 4096}", 16, 9, (1,))
    # one task per node: the process keeps all its GPUs
    env1 = dict(env, SLURM_NTASKS="2", SLURM_PROCID="1", SLURM_LOCALID="0")
    assert plan_from_env(env1).local_device_ids is None
    assert plan_from_env(dict(env, DINOV2_COORDINATOR_PORT="999")).coordinator_address == "gpu010:999"
    # explicit coordinator wins over SLURM; DINOV2_DISTRIBUTED=none wins over everything
    env2 = dict(env, DINOV2_COORDINATOR="h:1", DINOV2_NUM_PROCESSES="2", DINOV2_PROCESS_ID="1")
    assert plan_from_env(env2).method == "explicit"
    assert plan_from_env(dict(env2, DINOV2_DISTRIBUTED="none")).method == "none"


def test_tpu_pod_plan():
    assert plan_from_env({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}) == DistributedPlan("tpu")
    assert plan_from_env({"DINOV2_DISTRIBUTED": "auto"}).initialize_kwargs() == {}


def _launch(args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, str(LAUNCHER), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def test_launcher_propagates_failure_and_stops_others():
    code = ("import os,sys,time\n"
            "if os.environ['DINOV2_PROCESS_ID']=='1': sys.exit(3)\n"
            "time.sleep(60)\n")
    r = _launch(["-n", "2", "--timeout", "50", "--", "-c", code], timeout=40)
    assert r.returncode == 3, r.stdout + r.stderr


def test_two_process_localhost_run(tmp_path):
    r = _launch(["-n", "2", "--devices-per-process", "2", "--timeout", "240", "--",
                 str(Path(__file__).parent / "dist_worker.py"), str(tmp_path)])
    out = r.stdout
    assert r.returncode == 0, out[-4000:] + r.stderr[-4000:]
    assert out.count("WORKER_OK") == 2, out[-4000:]
    checks = {}
    for line in out.splitlines():
        if " CHECK " in line:
            pid, _, name, value = line.split(maxsplit=3)
            checks.setdefault(name, {})[pid] = value
    for pid in ("[0]", "[1]"):
        assert checks["method"][pid] == "explicit"
        assert checks["process_count"][pid] == "2" and checks["device_count"][pid] == "4"
        assert int(checks["sharded_leaves"][pid]) > 0
        assert float(checks["max_loss_diff"][pid]) < 1e-5
        assert float(checks["max_param_diff"][pid]) < 1e-5
        assert checks["restored_sharded"][pid] == "True"
        assert float(checks["resume_max_diff"][pid]) == 0.0  # resume is bit-exact
        assert checks["differing_replicated_raises"][pid] == "True"
        for name, vals in checks.items():
            if name.startswith("dinov2_"):
                assert vals[pid] == "True", name


TINY_TRAIN = [
    "--config", "configs/quickstart.py", "--config.student.embed_dim=32", "--config.student.depth=2",
    "--config.student.num_heads=2", "--config.student.patch_size=8", "--config.crops.global_crops_size=32",
    "--config.crops.local_crops_size=16", "--config.crops.local_crops_number=2",
    "--config.train.batch_size_per_gpu=4", "--config.dino.head_n_prototypes=64", "--config.dino.head_hidden_dim=64",
    "--config.dino.head_bottleneck_dim=32", "--config.ibot.head_n_prototypes=64", "--config.ibot.head_hidden_dim=64",
    "--config.ibot.head_bottleneck_dim=32", "--config.train.OFFICIAL_EPOCH_LENGTH=4", "--config.optim.epochs=3",
    "--config.train.log_period=1", "--config.evaluation.eval_period_iterations=0",
    "--config.evaluation.evaluators.knn.at_start=False", "--config.train.num_workers=0", "--config.train.checkpoint_period=3",
]


def _train_2proc(out, max_iterations, *extra):
    r = _launch(["-n", "2", "--timeout", "800", "--", "-m", "dinov2_jax.train", *TINY_TRAIN,
                 f"--config.train.output_dir={out}", f"--config.train.max_iterations={max_iterations}", *extra],
                timeout=900)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-3000:]
    return r.stdout


def _losses(out):
    import json

    got = {}
    for line in open(os.path.join(out, "training_metrics.json")):
        rec = json.loads(line)
        got[rec["iteration"]] = rec["last_total_loss"]  # this iteration's loss ("total_loss" is a window median)
    return got


@pytest.mark.heavy
def test_two_process_trainer_checkpoint_resume(tmp_path):
    """The real trainer (python -m dinov2_jax.train) in 2 processes on localhost: 6 iterations straight
    vs 3 + resume to 6 from the checkpoint; the resumed losses equal the straight run's."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _train_2proc(straight, 6)
    _train_2proc(resumed, 3)
    assert sorted(os.listdir(resumed / "ckpt")) == ["3"]
    log = _train_2proc(resumed, 6)
    assert "Resuming from" in log
    a, b = _losses(straight), _losses(resumed)
    assert sorted(a) == list(range(6)) and sorted(b) == list(range(6))
    for it in range(6):
        assert abs(a[it] - b[it]) <= 1e-6 * abs(a[it]), (it, a[it], b[it])


@pytest.mark.heavy
def test_two_process_fsdp_run_exports_and_evaluates_once(tmp_path):
    """Parameters sharded over both processes (fsdp=2, one device each, FSDP for arrays >= 256
    elements): the periodic teacher export and k-NN gather them, and only process 0 writes."""
    out = tmp_path / "run"
    _train_2proc(out, 3, "--config.mesh.data=1", "--config.mesh.fsdp=2", "--config.mesh.fsdp_min_size=256",
                 "--config.evaluation.eval_period_iterations=2", "--config.evaluation.evaluators.knn.max_samples=40")
    import json

    knn = [json.loads(line) for line in open(out / "knn_metrics.json")]
    assert [k["iteration"] for k in knn] == [1], knn  # one line: process 1 did not evaluate too
    assert knn[0]["('full', 10) Top 1"] > 0
    from dinov2_jax.convert import load_converted

    model, heads = load_converted(str(out / "eval" / "training_1"), with_heads=True)
    assert model.embed_dim == 32 and set(heads) == {"dino_head"}
    assert (out / "eval" / "training_1" / "pca.png").exists()
    assert (out / "training_curves.png").exists()
