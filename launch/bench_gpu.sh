#!/usr/bin/env bash
# GPU checks and benchmarks for one NVIDIA card, with the CUDA image's Python (jax[cuda], torch):
#   cuDNN vs XLA attention agreement (test + table), and forward throughput next to transformers.
# Usage: launch/bench_gpu.sh [OUTDIR]   (prints everything; OUTDIR/gpu_bench.log keeps a copy)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"; mkdir -p "$out"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false
py="${PYTHON:-python3}"
{
  nvidia-smi -L
  $py -c "import jax, flax, torch, transformers; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, jax.devices())"
  $py -m pytest -q -p no:cacheprovider tests/models/test_attention.py
  $py -m polar_jax.bench.attention --batch 2 --seq 4096 --heads 16 --kv-heads 16 --head-dim 128
  $py -m polar_jax.bench.attention --batch 2 --seq 4096 --heads 16 --kv-heads 4 --head-dim 128
  for attn in cudnn xla; do
    $py -m polar_jax.bench.forward --random-weights --dtype bfloat16 --batch 4 --seq 512 --attention $attn
  done
  $py -m polar_jax.bench.forward --random-weights --dtype bfloat16 --batch 16 --seq 2048 --attention cudnn
  $py -m polar_jax.bench.forward --random-weights --dtype float32 --batch 4 --seq 512 --attention auto
} 2>&1 | tee "$out/gpu_bench.log"
