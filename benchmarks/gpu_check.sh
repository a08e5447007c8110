#!/usr/bin/env bash
# GPU check, within about 7 minutes: the card, the throughput benchmark at the study's settings
# (bf16, channels_last, eager and torch.compile) and a short real training of both models with
# the study preset, all written into one results folder.
#
#   bash benchmarks/gpu_check.sh [RESULTS_DIR]
#
# RESULTS_DIR: the argument, else benchmarks/results/gpu_<card-name>/.
# Environment:
#   DATA_ROOT      folder data set (images/, masks/), e.g. ../shared/datasets/figshare-brain-tumor-png256;
#                  synthetic 256x256 slices when unset or absent
#   TRAIN_TIME     training budget per model, Lightning's DD:HH:MM:SS (default 00:00:01:30)
#   BENCH_TIMEOUT  seconds per model for the throughput benchmark (default 120)
#   WORKERS        data-loader workers (default 6)
#   GPU_CHECK_DRY  1: on the CPU with the smoke preset and a few steps (checks this script)
# On a machine without internet, packages it lacks (hydra-core, omegaconf, albumentations, ...)
# can come as wheels in .whl/ at the repository root: they are installed into /tmp/site when an
# import fails.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY="${GPU_CHECK_DRY:-0}"
TRAIN_TIME="${TRAIN_TIME:-00:00:01:30}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-120}"
WORKERS="${WORKERS:-6}"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export WANDB_MODE=offline PYTHONWARNINGS=ignore
START=$SECONDS

if ! "$PY" -c "import hydra, omegaconf, albumentations" 2>/dev/null; then
    if [ -d .whl ]; then
        echo "installing the missing packages from .whl/ into /tmp/site"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl
        export PYTHONPATH="/tmp/site:$PYTHONPATH"
    fi
    "$PY" -c "import hydra, omegaconf, albumentations" || {
        echo "hydra-core, omegaconf or albumentations is missing: pip install -e . first" >&2
        exit 1
    }
fi

if [ "$DRY" = 1 ]; then
    CARD="dry-cpu"
else
    CARD="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)"
    [ -n "$CARD" ] || { echo "no GPU: nvidia-smi lists none (GPU_CHECK_DRY=1 for a CPU check)" >&2; exit 1; }
fi
SLUG="$(echo "$CARD" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-+|-+$//g')"
RESULTS="${1:-benchmarks/results/gpu_$SLUG}"
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
WORK="$(mktemp -d /tmp/gpu_check.XXXXXX)"
echo "card: $CARD -> $RESULTS"

{
    echo "card: $CARD"
    nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not available"
    "$PY" -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'lightning', pl.__version__)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
} > "$RESULTS/machine.txt" 2>&1
cat "$RESULTS/machine.txt"

# 1. Throughput, one model per call so that a slow compilation costs only its own model.
if [ "$DRY" = 1 ]; then
    BENCH=(--device cpu --preset smoke --steps 1 --warmup 1 --rounds 1 --workers 0
           --loader-batches 1 --latency-iters 3 --infer-batch 2 --infer-iters 1)
else
    BENCH=(--device cuda --preset study --compile --channels-last on --precision bf16-mixed
           --workers 0 2 "$WORKERS")
fi
for MODEL in unet fpn; do
    echo "== throughput $MODEL ($(( SECONDS - START )) s)"
    timeout "$BENCH_TIMEOUT" "$PY" benchmarks/throughput.py "${BENCH[@]}" --models "$MODEL" \
        --data-dir "$WORK/data" --out "$RESULTS/throughput_$MODEL.json" \
        > "$RESULTS/throughput_$MODEL.log" 2>&1
    echo "exit $? (log: throughput_$MODEL.log)"
    grep -E '^\||^   ' "$RESULTS/throughput_$MODEL.log"
done

# The preset's sweep at the measured rates: 5 seeds of each model (throughput.py's --seeds).
"$PY" - "$RESULTS" <<'EOF' | tee "$RESULTS/projection.txt"
import json, pathlib, sys
runs, epochs = {}, set()
for model in ("unet", "fpn"):
    try:
        path = pathlib.Path(sys.argv[1]) / f"throughput_{model}.json"
        measured = json.loads(path.read_text())["models"][0]
        runs[model] = measured["projected_run_s"]
        epochs.add(measured["settings"]["projected_run"]["epochs"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        runs[model] = None
if None in runs.values():
    print(f"no projection: a model was not measured at the study's settings ({runs})")
else:
    each = ", ".join(f"{model} {seconds / 60:.1f} min" for model, seconds in runs.items())
    print(f"projected sweep, 5 seeds x {'/'.join(map(str, sorted(epochs)))} epochs per model: "
          f"{5 * sum(runs.values()) / 60:.0f} min (one run: {each})")
EOF

# 2. Short real training of both models with the study preset.
if [ "$DRY" = 1 ]; then
    TRAIN=(experiment=smoke trainer.max_epochs=1 "+trainer.max_time=$TRAIN_TIME")
    DATA=()
else
    TRAIN=(experiment=study pretrained=false "+trainer.max_time=$TRAIN_TIME"
           "data.num_workers=$WORKERS" trainer.enable_progress_bar=false)
    if [ -n "${DATA_ROOT:-}" ] && [ -d "${DATA_ROOT}/images" ]; then
        DATA=(data=folder "data.root=$(cd "$DATA_ROOT" && pwd)")
    else
        echo "DATA_ROOT unset or without images/: synthetic 256x256 slices"
        DATA=(data=synthetic data.image_size=256 data.source.size=256 data.source.num_slices=512)
    fi
fi
for MODEL in unet fpn; do
    echo "== train $MODEL ($(( SECONDS - START )) s)"
    RUN="$WORK/runs/$MODEL"
    "$PY" -m brainseg.train "${TRAIN[@]}" "${DATA[@]}" "model=$MODEL" logger=csv \
        "paths.data_dir=$WORK/data" "hydra.run.dir=$RUN" > "$RESULTS/train_$MODEL.log" 2>&1
    echo "exit $? (log: train_$MODEL.log)"
    cp "$RUN/metrics.json" "$RESULTS/train_${MODEL}_metrics.json" 2>/dev/null || true
    cp "$RUN/csv/metrics.csv" "$RESULTS/train_${MODEL}_epochs.csv" 2>/dev/null || true
    cp "$RUN/error.txt" "$RESULTS/train_${MODEL}_error.txt" 2>/dev/null || true
    "$PY" - "$RESULTS/train_${MODEL}_metrics.json" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except OSError:
    sys.exit("no metrics.json")
t = r["test"]
print(f"epochs {r['epochs']}, {r['wall_time_s']:.0f} s, test dice {t.get('dice', float('nan')):.3f}, "
      f"batch-1 {t.get('inference_ms_median', float('nan')):.2f} ms, {r['trainer_precision']}")
EOF
done

rm -rf "$WORK"
echo "done in $(( SECONDS - START )) s: $RESULTS"
ls "$RESULTS"
