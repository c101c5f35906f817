#!/bin/bash
# DINOv2-JAX training on a SLURM cluster: one task (process) per GPU, all nodes run the same command.
#
#   sbatch launch/slurm.sh --config configs/ssl_default.py --config.train.output_dir=/checkpoints/run1
#
# Edit the #SBATCH lines for your cluster (nodes, GPUs per node = tasks per node, partition, time).
# dinov2_jax.parallel.distributed.initialize_from_env() reads SLURM_NTASKS / SLURM_PROCID /
# SLURM_STEP_NODELIST / SLURM_LOCALID: the coordinator is the first node of the step (port derived
# from the job id, or DINOV2_COORDINATOR_PORT) and each task uses the GPU SLURM_LOCALID.
# One task per node with all its GPUs also works: set --ntasks-per-node=1 (then every process sees
# all local GPUs). The batch size is per device: global batch = batch_size_per_gpu x total GPUs.
#
#SBATCH --job-name=dinov2_jax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=72:00:00
#SBATCH --output=%x-%j.out
#SBATCH --signal=TERM@120
# (--signal: SIGTERM 2 min before the time limit; the trainer saves a checkpoint and exits, and a
#  resubmission with the same output_dir resumes.)

set -euo pipefail
if [ -z "${SLURM_JOB_ID:-}" ]; then
  echo "launch/slurm.sh is an sbatch script: run 'sbatch launch/slurm.sh ARGS...'" >&2
  exit 2
fi
# Optional: activate the environment here, e.g. `source /path/to/venv/bin/activate`.
export PYTHONUNBUFFERED=1
# Do not let one process pre-allocate 75% of every GPU it can see.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
export DINOV2_DISTRIBUTED=${DINOV2_DISTRIBUTED:-slurm}

srun --kill-on-bad-exit=1 python -m dinov2_jax.train "$@"
