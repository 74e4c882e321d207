#!/usr/bin/env bash
# The GPU measurements of issue 6 in one command, on a machine with one NVIDIA GPU:
#   bash experiments/benchmarks/throughput/gpu.sh [cudnn|xla] [configs] [train_throughput.py flags]
#   bash experiments/benchmarks/throughput/gpu.sh ab [flag_ab.py flags]  (A/B, e.g. command buffers)
#   bash experiments/benchmarks/throughput/gpu.sh remat [remat_memory.py flags]  (what remat saves,
#     compile only; memory/remat_memory.py)
#   bash experiments/benchmarks/throughput/gpu.sh ab --config dit_xl2_latent@64 --dtype bfloat16 \
#     --attention cudnn --a_set=model.kwargs.lean_residuals=False --results ab_lean_residuals_gpu
#                                      (speed and memory of lean residuals against keeping all)
# Train-step images/s, MFU (XLA cost analysis / the chip's peak) and diffjax-vs-PyTorch
# (diffusers' twin networks, same batch, same run) for the DDPM CIFAR-10 UNet and DiT-B/2 and
# DiT-XL/2 on ImageNet-256 latent shapes, all in bf16. Writes
# experiments/benchmarks/throughput/results_gpu.{md,json} (and copies them to $OUT when set).
# Run from the repository root. Without internet, carry the Python packages the GPU image lacks
# as wheels in .whl/ (see the README's Benchmarks section and experiments/benchmarks/README.md).
set -euo pipefail
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1
# Each framework runs in a process of its own (--isolate); JAX still takes memory as it goes
# rather than 75% of the GPU up front, so the parent process holds none.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
if [ "${1:-}" = ab ]; then
  shift
  python3 experiments/benchmarks/throughput/flag_ab.py "$@"
  if [ -n "${OUT:-}" ]; then
    cp experiments/benchmarks/throughput/ab_*.md experiments/benchmarks/throughput/ab_*.json "$OUT/"
  fi
  exit
fi
if [ "${1:-}" = remat ]; then
  shift
  python3 experiments/benchmarks/memory/remat_memory.py --dtype bfloat16 \
    --configs cifar10_ddpm@128,dit_xl2_latent@128 --policies=,full,dots "$@"
  if [ -n "${OUT:-}" ]; then
    cp experiments/benchmarks/memory/remat_*.md experiments/benchmarks/memory/remat_*.json "$OUT/"
  fi
  exit
fi
attention=${1:-cudnn}
configs=${2:-cifar10_ddpm@128,dit_b2_latent@256,dit_xl2_latent@128}
shift $(( $# < 2 ? $# : 2 ))
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__)"
python3 experiments/benchmarks/throughput/train_throughput.py --configs "$configs" \
  --dtype bfloat16 --attention "$attention" --steps 10 --windows 3 --isolate "$@"
if [ -n "${OUT:-}" ]; then
  for f in experiments/benchmarks/throughput/results_gpu.md \
      experiments/benchmarks/throughput/results_gpu.json; do
    cp "$f" "$OUT/$(basename "${f%.*}")_${attention}.${f##*.}"
  done
fi
