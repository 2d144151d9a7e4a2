#!/usr/bin/env bash
# The reproduction jobs (jobs/reproduce/*.yaml: extract && sweep; compare) as a dry run on the
# small demo, on a CPU in a few minutes: random weights (--weights none), so only the machinery
# is checked, against heads/references/demo_dry_run.toml (made-up values, not from a paper).
# mean runs on 2 uniform resnet18 frames per video; stan is left without its scene features on
# purpose and vis4mer out of the sweep, so the comparison shows how missing cells read.
# tests/test_compare.py runs the same steps through the library.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
ROOT=${ROOT:-data/demo-small}
STORE=${STORE:-./store-reproduce-demo}
RUNS=${RUNS:-runs/reproduce/demo_dry_run}
.venv/bin/pipeline demo build --root "$ROOT" --variant small
.venv/bin/pipeline extract --dataset demo --variant small --data-root "$ROOT" \
    --backbone resnet18 --plan uniform --num-frames 2 --detector none \
    --weights none --precision fp32 --store "$STORE" \
  && .venv/bin/heads sweep --dataset demo --variant small --data-root "$ROOT" \
    --heads mean,stan --tasks most_screen_time,bunny_fraction --seeds 2 \
    --set epochs=2 --set mean.plan=uniform --store "$STORE" --runs-dir "$RUNS" \
  ; .venv/bin/heads compare "$RUNS" --table demo_dry_run
