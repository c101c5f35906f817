#!/usr/bin/env bash
# One GPU, one command: the GPU performance measurements in the order that matters, each with its own time limit.
#   1. GPU attention tests (cuDNN and Pallas vs XLA vs float64), tests/models/layers/test_attention_gpu.py,
#      and the device photometric augmentation vs the host path, run on the GPU backend
#      (tests/data/test_device_augment.py; needs grain and ml_collections installed)
#   2. ViT-L/14 backbone train step, bf16, batch 64: cuDNN (scan and loop), XLA, Pallas
#   3. the same step in PyTorch (eager SDPA, then torch.compile) on the same GPU
#   4. the full DINOv2 step (ViT-L/14, 2x224 + 8x98 crops, 65536 prototypes), batch 32, cuDNN
#   5. host augmentation per core vs the device photometric function on the GPU (benchmarks/data.py)
# Every benchmark's `RESULT {json}` line goes to $RESULTS; at the end a markdown table of them is printed
# (step time, images/s, MFU, peak memory, JAX/PyTorch ratio) for docs/benchmarks.md.
#
#   bash benchmarks/gpu_suite.sh                      # all steps
#   ARCH=vit_base BATCH=128 bash benchmarks/gpu_suite.sh
#   SKIP_TESTS=1 SKIP_COMPILE=1 bash benchmarks/gpu_suite.sh
set -u -o pipefail
cd "$(dirname "$0")/.."

PY=${PY:-python3}
ARCH=${ARCH:-vit_large}
PATCH=${PATCH:-14}
IMG=${IMG:-224}
BATCH=${BATCH:-64}
DINO_BATCH=${DINO_BATCH:-32}
STEPS=${STEPS:-10}
LIMIT=${LIMIT:-300}                 # seconds per benchmark command
RESULTS=${RESULTS:-gpu_suite_results.jsonl}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda,cpu}
export PYTHONUNBUFFERED=1
: > "$RESULTS"

run() {  # run a command under the time limit, keep its RESULT line, never stop the suite
  echo "=== $*"
  timeout "$LIMIT" "$@" 2>&1 | tee /dev/stderr | grep '^RESULT ' | sed 's/^RESULT //' >> "$RESULTS"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || echo "!!! exit code $rc (124 = ran past ${LIMIT}s): $*"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import jax, jaxlib; print('jax', jax.__version__, 'devices', jax.devices())"

if [ -z "${SKIP_TESTS:-}" ]; then
  echo "=== GPU tests"
  timeout "$LIMIT" "$PY" -m pytest -q -m gpu -rs tests/models/layers/test_attention_gpu.py \
    || echo "!!! GPU tests failed or timed out"
  echo "=== device augmentation vs host path, on the GPU backend"
  timeout "$LIMIT" "$PY" -m pytest -q tests/data/test_device_augment.py \
    || echo "!!! device augmentation tests failed or timed out"
fi

common=(--arch "$ARCH" --patch-size "$PATCH" --img-size "$IMG" --batch-size "$BATCH" --dtype bfloat16 --steps "$STEPS")
run "$PY" benchmarks/train_step.py "${common[@]}" --attn cudnn
run "$PY" benchmarks/train_step.py "${common[@]}" --attn cudnn --no-scan-blocks
run "$PY" benchmarks/train_step.py "${common[@]}" --attn xla
run "$PY" benchmarks/train_step.py "${common[@]}" --attn pallas
run "$PY" benchmarks/train_step_torch.py "${common[@]}"
[ -n "${SKIP_COMPILE:-}" ] || run "$PY" benchmarks/train_step_torch.py "${common[@]}" --compile
run "$PY" benchmarks/train_step.py --mode dinov2 --arch "$ARCH" --patch-size "$PATCH" --img-size "$IMG" \
  --batch-size "$DINO_BATCH" --dtype bfloat16 --attn cudnn --steps "$STEPS"

echo "=== data pipeline: host per core vs device photometric function"
timeout "$LIMIT" "$PY" benchmarks/data.py --n-images 128 --device-mode --device-batch 64 \
  || echo "!!! data benchmark failed or timed out"

"$PY" - "$RESULTS" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
torch = [r for r in rows if r["framework"] == "torch" and r.get("mode", "backbone") == "backbone"]
best_torch = min((r["step_time_s"] for r in torch), default=None)
print("\n| framework | mode | attn | scan | compile | batch | step ms | img/s | MFU | peak GiB | vs best torch |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    ratio = (f"{best_torch / r['step_time_s']:.2f}x" if best_torch and r["framework"] == "jax"
             and r.get("mode") == "backbone" else "")
    mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") else "n/a"
    mem = f"{r['peak_memory_gib']:.1f}" if r.get("peak_memory_gib") else "n/a"
    print(f"| {r['framework']} | {r.get('mode', 'backbone')} | {r.get('attn', 'sdpa')} | {r.get('scan_blocks', '')} "
          f"| {r.get('compile', '')} | {r['batch']} | {1000 * r['step_time_s']:.1f} | {r['images_per_s']:.1f} "
          f"| {mfu} | {mem} | {ratio} |")
EOF
