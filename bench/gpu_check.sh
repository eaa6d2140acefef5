#!/usr/bin/env bash
# GPU check: the runtime benchmark for eager fp32, fp16, bf16, compiled (CUDA graphs),
# compiled-bf16 and (when torch-tensorrt is importable) TensorRT fp16 on the first NVIDIA
# GPU, writing JSON. Sized to finish in under 8 minutes on one GPU. It needs only the model
# stack (torch, safetensors, scikit-learn, tokenizers, transformers, pydantic, sqlmodel,
# typer, rich), not the queues or databases. Without a GPU it runs the CPU fallback (eager
# vs int8, quick) so the script itself stays tested.
#   bench/gpu_check.sh [OUT_DIR]        (default bench/results)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
mkdir -p "$out"
py=${PYTHON:-python3}
[ -x .venv/bin/python ] && py=.venv/bin/python
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  backends=eager,fp16,bf16,compiled,compiled-bf16
  if "$py" -c 'import torch_tensorrt' 2>/dev/null; then
    backends=$backends,tensorrt
  else
    echo "torch-tensorrt is not importable: TensorRT skipped (pip install 'scoring-workers[gpu]')"
  fi
  # One model per run, each under its own limit, so a slow compile cannot cost both.
  timeout 150 "$py" -m bench.runtime --models demo --backends "$backends" --rounds 5 \
    --out "$out/runtime-gpu-demo.json" || echo "demo run failed or timed out ($?)"
  timeout 300 "$py" -m bench.runtime --models minilm --backends "$backends" --rounds 5 \
    --out "$out/runtime-gpu-minilm.json" || echo "minilm run failed or timed out ($?)"
else
  echo "no NVIDIA GPU: CPU fallback (quick)"
  timeout 450 "$py" -m bench.runtime --models demo --backends eager,int8 --quick \
    --out "$out/runtime-cpu-fallback.json"
fi
