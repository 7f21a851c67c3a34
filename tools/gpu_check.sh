#!/usr/bin/env bash
# GPU check, at most ~5 minutes on one GPU: the device, the latency benchmark of the GPU pipeline (PyTorch weights,
# fp16) at batch 1 / 8 / 32 against the naive baseline, and the BCCD test detection table through the GPU path.
# Everything goes under one folder (default out/gpu_check):
#   bash tools/gpu_check.sh [OUT_DIR]            # on a CUDA machine, after `make setup`
#   GPU_CHECK_DEVICE=cpu bash tools/gpu_check.sh  # the same steps on the CPU, up to the CUDA calls (tests use it)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-out/gpu_check}"
DEV="${GPU_CHECK_DEVICE:-cuda}"
PY="${PYTHON:-.venv/bin/python}"
HALF=$([ "$DEV" = "cuda" ] && echo "--half" || echo "")
REPEAT="${GPU_CHECK_REPEAT:-3}"
LIMIT="${GPU_CHECK_LIMIT:-0}"
mkdir -p "$OUT"
{
  echo "date: $(date -u +%FT%TZ)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "nvidia-smi: not found"
  "$PY" -c "import torch, onnxruntime as ort; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''); print('onnxruntime', ort.__version__, ort.get_available_providers())"
} | tee "$OUT/device.txt"
if [ "$DEV" = "cuda" ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: CUDA is not available to torch here" >&2; exit 2
fi
"$PY" tools/benchmark.py latency --dataset bccd --split test --config configs/pipeline/gpu.yaml --device "$DEV" $HALF \
  --batches 1 8 32 --repeat "$REPEAT" --limit "$LIMIT" --out "$OUT/latency" 2>&1 | tee "$OUT/latency.log"
"$PY" tools/eval_detector.py --dataset bccd --split test --run "$OUT/det_bccd_test" \
  --config configs/pipeline/eval_detection_gpu.yaml --device "$DEV" 2>&1 | tee "$OUT/detection.log"
echo "gpu check written to $OUT"
