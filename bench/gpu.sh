#!/usr/bin/env bash
# The GPU benchmarks of issue 11 (items 1, 2 and 4) and issue 18's feature cache at full size in ONE prepared run
# of at most about 9.5 minutes
# (each bench has its own time limit), for a single H100/H200 machine with no internet whose Python has torch,
# timm, transformers, peft and accelerate but not diffusers: the wheels travel with the working tree in .whl/
# (git-ignored). Fetch them here:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       diffusers==0.42.1 importlib_metadata==10.2.0 open_clip_torch==3.3.0
#
# then run `bash bench/gpu.sh` there (results go to $OUT, or /tmp/gpu-bench). It prints each bench's own table
# and one summary table at the end; copy that into bench/RESULTS.md with the card's name and the date.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-bench}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "could not install the carried wheels in .whl/" >&2; exit 2; }
export PYTHONPATH="/tmp/site:$PWD" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, diffusers, timm; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'timm', timm.__version__)"

# Each bench rewrites its JSON after every row, so a bench cut off by its time limit keeps the rows it finished.
# 1. LoRA training step: ours vs the diffusers example's per-step work, SD1.5 architecture, 512 px, bf16;
#    the torch.compile row comes last (its compilation is the slowest part)
timeout 240 python3 bench/train_step.py --full-size --device cuda --resolution 512 --mixed-precision bf16 \
    --batch-size 8 --images 16 --warmup 3 --steps 24 --rounds 3 --compile --json "$OUT/train_step.json"
# 2. generation: ours (batched, fp16, SDPA, fused QKV; then with the feature cache at intervals 2 and 3, depth 1;
#    then + compiled UNet and VAE decoder, without cache) vs the plain pipeline once per image, 512 px, 25 steps,
#    CFG 7. Issue 18's target: 12 images/s at 512 px with CFG on one H100-class card.
timeout 210 python3 bench/generate.py --full-size --device cuda --dtype fp16 --batch-sizes 32 --images 48 \
    --baseline-images 8 --repeats 2 --cache-intervals 2,3 --cache-depth 1 --compile --json "$OUT/generate.json"
# 4. classifiers: ViT-B/16 and MobileNetV2 at 224 px, bf16, decoding and augmentation included
timeout 100 python3 bench/classifier.py --device cuda --json "$OUT/classifier.json"

python3 bench/gpu_summary.py "$OUT"
