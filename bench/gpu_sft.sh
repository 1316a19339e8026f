#!/usr/bin/env bash
# GPU check of the SFT loop against Hugging Face Trainer (see ../shared/GPU.md for the machine).
# Build the wheels first on a machine with the package registry: bash ../shared/tools/gpu-wheels.sh
# Then run on the GPU machine from the project root, with .whl carried:  bash bench/gpu_sft.sh
set -euo pipefail
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl
export PYTHONPATH=$PWD/.site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for shape in "smollm2-135m-shape 32" "smollm2-1.7b-shape 8"; do
    set -- $shape
    python3 -m bench.bench_sft --gpu --model "$1" --batch "$2" --seq 512 --steps 30 --zero 2 | tail -4
done
