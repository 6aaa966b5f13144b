#!/usr/bin/env bash
# The performance issue's GPU check, as one script: ViT-B/16 5-way 1-shot training step (5 queries per class,
# 8 frames, 224 px, random weights) in fp32, bf16, and bf16 + activation checkpointing, on the first CUDA device.
# Prints episodes/s, peak GPU memory and model-FLOP utilisation; writes the JSON to ${OUT:-output}/gpu_check.json.
# Usage (from the repository root, after `pip install -e .`): bash scripts/gpu_check.sh
set -euo pipefail
export HF_HUB_OFFLINE=1
out="${OUT:-output}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv
python runs/benchmark.py train-step \
    --cfg configs/projects/CLIPFSAR/ssv2_small/CLIPFSAR_SSv2_Small_1shot_ViT-B16.yaml \
    --repeats 5 --warmup 2 --flops --json "$out/gpu_check.json" \
    --variant "fp32=" \
    --variant "bf16=TRAIN.AUTOCAST bf16" \
    --variant "bf16+ckpt=TRAIN.AUTOCAST bf16 TRAIN.GRAD_CHECKPOINT True" \
    TRAIN.QUERY_PER_CLASS 5
