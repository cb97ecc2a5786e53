#!/usr/bin/env bash
# Training throughput on one GPU, in under 5 minutes: benchmarks/train_throughput.py --device cuda.
#
# SimCLR on the small-image ResNet-18 (32 px, batch 256) and ViT-Tiny (4 px patches), each as
# (a) a plain loop on in-memory views and (b) the pretrain stage through Ray Train (1 worker with
# every CPU, on-device augmentation, loader processes that only decode), with bf16 autocast,
# channels_last, fused AdamW and pinned, non-blocking copies (sslcore turns these on for CUDA).
# Prints images/s and achieved TFLOP/s (counted forward+backward FLOPs) against the card's peak.
#
#   bash benchmarks/gpu.sh                  # one repeat: 166 s on an H200 (2026-11-27)
#   REPEATS=2 bash benchmarks/gpu.sh        # medians of 2: 6.5 minutes (391 s) on an H100, 2026-11-27
#   COMPILE=1 bash benchmarks/gpu.sh        # also a torch.compile run: 356 s in all on an H200
#   LOADER_WORKERS=14 bash benchmarks/gpu.sh
#   PYTHON=python3 bash benchmarks/gpu.sh   # an interpreter that already has CUDA PyTorch and the
#                                           # project's runtime packages (a GPU image), no .venv
#
# Writes nothing outside the repository but one temporary folder, removed on exit (Ray's session
# files, compile caches and $HOME-relative caches included); creates .venv if it is missing and
# PYTHON is not set.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
work="$(mktemp -d -t sslpipe-gpu-XXXXXX)"
trap 'rm -rf "$work"' EXIT

if [[ -n "${PYTHON:-}" ]]; then
    python="$PYTHON"
    export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"  # the project from this checkout, uninstalled
else
    python=.venv/bin/python
    if [[ ! -x "$python" ]]; then
        echo "== creating .venv (python3.11 -m venv .venv && .venv/bin/pip install -e .)"
        python3.11 -m venv .venv
        PIP_CACHE_DIR="$work/pip" .venv/bin/pip install --quiet -e .
    fi
fi

export HOME="$work/home" TMPDIR="$work/tmp" RAY_TMPDIR="$work/ray"
export TORCHINDUCTOR_CACHE_DIR="$work/inductor" TRITON_CACHE_DIR="$work/triton" XDG_CACHE_HOME="$work/cache"
export RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
mkdir -p "$HOME" "$TMPDIR" "$RAY_TMPDIR"

if ! command -v nvidia-smi >/dev/null; then
    echo "nvidia-smi not found: this script needs an NVIDIA GPU" >&2
    exit 1
fi
echo "== GPU"
nvidia-smi --query-gpu=index,name,memory.total,driver_version,power.limit,clocks.max.sm --format=csv
nvidia-smi --query-gpu=utilization.gpu,memory.used,temperature.gpu --format=csv,noheader
"$python" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")'

cores="$("$python" -c 'from sslcore.resources import available_cpus; print(available_cpus())')"
loaders="${LOADER_WORKERS:-$((cores > 4 ? cores - 2 : 2))}"  # all cores but the training process and Ray's
args=(
    --device cuda
    --models resnet vit
    --batch-size 256
    --warmup 20 --steps 150 --epoch-steps 50  # stage: 4 epochs of 50 steps, the first untimed
    --repeats "${REPEATS:-1}"  # each stage run pays ~52 s of start-up on an H100
    --loader --loader-workers "$loaders"
    --set augment.on_device=true
)
start=$SECONDS
echo "== eager: $cores CPUs, $loaders loader processes"
"$python" benchmarks/train_throughput.py "${args[@]}"
if [[ "${COMPILE:-0}" == 1 ]]; then
    echo "== torch.compile (its compile time falls in the warm-up steps and the stage's first epoch)"
    "$python" benchmarks/train_throughput.py "${args[@]}" --repeats 1 --compile
fi
echo "== done in $((SECONDS - start)) s"
