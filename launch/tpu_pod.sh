#!/bin/bash
# DINOv2-JAX training on a Cloud TPU VM pod slice: the same command on every worker (one process per host).
#
#   TPU_NAME=my-v4-64 ZONE=us-central2-b bash launch/tpu_pod.sh \
#       --config configs/ssl_default.py --config.train.output_dir=gs://my-bucket/dinov2/run1
#
# Needs: gcloud configured for the project, the repo at $REPO_DIR on every worker (e.g. cloned by a
# first `--command "git clone ... && pip install -e ..."` through the same ssh), the dataset and
# output_dir reachable from all workers (GCS or a shared disk). jax.distributed.initialize() with no
# arguments reads the TPU metadata (DINOV2_DISTRIBUTED=tpu), so no coordinator has to be given.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU zone, e.g. us-central2-b}"
REPO_DIR=${REPO_DIR:-'~/dinov2_jax'}
VENV=${VENV:-'~/dinov2_jax/.venv'}
PROJECT_ARG=${PROJECT:+--project=$PROJECT}

# Quote every training argument for the remote shell.
ARGS=""
for a in "$@"; do ARGS+=" $(printf '%q' "$a")"; done

CMD="cd $REPO_DIR && source $VENV/bin/activate && \
export DINOV2_DISTRIBUTED=tpu PYTHONUNBUFFERED=1 && \
python -m dinov2_jax.train$ARGS"

echo "running on all workers of $TPU_NAME: $CMD"
# shellcheck disable=SC2086
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_ARG --worker=all --command="$CMD"
