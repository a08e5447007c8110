#!/usr/bin/env bash
# GPU check in two phases, each bounded and writing at most 8 files into OUT:
#
#   bash benchmarks/gpu_check.sh speed OUT          # at most 160 s, synthetic 256x256 slices
#   bash benchmarks/gpu_check.sh study OUT DATA     # at most 490 s, the folder data set DATA
#
# speed: the card; for both study networks (bf16, channels_last, batch 16, 256²) the training
#   rate of brainseg against a bare loop and where a step's time goes, whole steps with the data
#   on the device and from the loader, host syncs per step, batch-1 latency per path (eager,
#   CUDA graph; fp32 and bf16); the test stage's choice of batch-1 path; with the time left, the
#   U-Net's training step compiled (reduce-overhead: CUDA graphs). Files: machine.txt,
#   throughput_<model>.json, latency_paths.json, compiled_train.json, speed.log.
# study: seed 0 of both networks with the study preset (80 epochs, pretrained=false, data on the
#   device, validation in batches of 64, CSV logs), the two at once on the one GPU, each stopped
#   by a time limit that leaves room for its test stage and the report. Files: study_runs.tar.gz
#   (run folders and report, no checkpoints), study.log, gpu_use.txt (nvidia-smi dmon).
# Each phase prints a summary last. Environment:
#   GPU_CHECK_DRY  1: on the CPU with the smoke preset and a few steps (checks this script)
#   SPEED_BUDGET   seconds the speed phase may take (default 160)
#   STUDY_BUDGET   seconds the study phase may take (default 490)
#   WORKERS        loader workers where the loader is measured (default 8)
# Only the study's two networks are built: segmentation_models_pytorch and monai are not
# needed (a check at the start refuses to import them). Packages the machine lacks
# (hydra-core, omegaconf, albumentations, ...) are installed from wheels in .whl/ at the
# repository root into /tmp/site when an import fails.
set -uo pipefail
cd "$(dirname "$0")/.."

PHASE="${1:-}"
OUT="${2:-}"
case "$PHASE" in speed | study) ;; *)
    echo "usage: gpu_check.sh speed OUT | gpu_check.sh study OUT DATA" >&2
    exit 2
    ;;
esac
[ -n "$OUT" ] || { echo "gpu_check.sh $PHASE: give the output folder" >&2; exit 2; }
DRY="${GPU_CHECK_DRY:-0}"
SPEED_BUDGET="${SPEED_BUDGET:-160}"
STUDY_BUDGET="${STUDY_BUDGET:-490}"
WORKERS="${WORKERS:-8}"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export WANDB_MODE=offline PYTHONWARNINGS=ignore
START=$SECONDS
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d /tmp/gpu_check.XXXXXX)"
LOG="$OUT/$PHASE.log"
: > "$LOG"
say() { echo "[$(( SECONDS - START )) s] $*" | tee -a "$LOG"; }
left() { echo $(( $1 - (SECONDS - START) )); }  # seconds left of a budget

if ! "$PY" -c "import hydra, omegaconf, albumentations" 2>/dev/null; then
    if [ -d .whl ]; then
        say "installing the missing packages from .whl/ into /tmp/site"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl >> "$LOG" 2>&1
        export PYTHONPATH="/tmp/site:$PYTHONPATH"
    fi
    "$PY" -c "import hydra, omegaconf, albumentations" || {
        say "hydra-core, omegaconf or albumentations is missing: pip install -e . first"
        exit 1
    }
fi
# The study's networks without the optional libraries: an import of them fails here as there.
"$PY" - >> "$LOG" 2>&1 <<'PYCHECK' || say "WARNING: building the study networks failed (see $PHASE.log)"
import sys
sys.modules["segmentation_models_pytorch"] = None  # import fails, as where it is absent
sys.modules["monai"] = None
import brainseg.data, brainseg.report, brainseg.train  # noqa: E401, F401
from brainseg.config import compose
from brainseg.module import build_module
for model in ("unet", "fpn"):
    cfg = compose(["experiment=smoke", f"model={model}", "paths.output_dir=unused"])
    build_module(cfg, load_pretrained=False)
print("study networks build without segmentation_models_pytorch and monai")
PYCHECK
if [ "$DRY" != 1 ] && ! nvidia-smi -L > /dev/null 2>&1; then
    say "no GPU: nvidia-smi lists none (GPU_CHECK_DRY=1 for a CPU check)"
    exit 1
fi

if [ "$PHASE" = speed ]; then
    {
        nvidia-smi -L 2>/dev/null || echo "card: dry-cpu"
        "$PY" -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'lightning', pl.__version__)"
        echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
        nproc
    } > "$OUT/machine.txt" 2>&1
    cat "$OUT/machine.txt" | tee -a "$LOG"
    if [ "$DRY" = 1 ]; then
        BENCH=(--device cpu --preset smoke --steps 2 --warmup 1 --rounds 1 --workers 0
               --augment-on device --loader-batches 1 --latency-iters 2 --infer-batch 2
               --infer-iters 1 --pipeline-workers 0)
        PATHS=(--device cpu --preset smoke --iters 2 --batch 2)
        PER_MODEL=120
    else
        BENCH=(--device cuda --preset study --channels-last on --precision bf16-mixed
               --steps 20 --warmup 6 --rounds 2 --workers 0 "$WORKERS" --augment-on device
               --loader-batches 20 --latency-iters 100 --infer-batch 64 --infer-iters 5
               --pipeline-workers "$WORKERS" --no-compile)
        PATHS=(--device cuda --preset study --channels-last true --iters 100 --batch 16)
        PER_MODEL=55
    fi
    for MODEL in unet fpn; do
        LIMIT=$(left $(( SPEED_BUDGET - 30 )))
        [ "$LIMIT" -gt "$PER_MODEL" ] && LIMIT=$PER_MODEL
        if [ "$LIMIT" -lt 10 ]; then say "no time left for throughput $MODEL"; continue; fi
        say "throughput $MODEL, ${LIMIT} s at most"
        timeout -k 5 "$LIMIT" "$PY" benchmarks/throughput.py "${BENCH[@]}" --models "$MODEL" \
            --data-dir "$WORK/data" --out "$OUT/throughput_$MODEL.json" >> "$LOG" 2>&1
        say "exit $?"
    done
    LIMIT=$(left $(( SPEED_BUDGET - 5 )))
    [ "$LIMIT" -gt 25 ] && LIMIT=25
    if [ "$LIMIT" -ge 8 ]; then
        say "test-stage batch-1 path choice, both networks, ${LIMIT} s at most"
        timeout -k 5 "$LIMIT" "$PY" benchmarks/latency_paths.py "${PATHS[@]}" \
            --out "$OUT/latency_paths.json" >> "$LOG" 2>&1
        say "exit $?"
    fi
    # Compiling takes the longest and may not finish: last, with what time is left. On a CPU
    # it takes minutes: the dry run leaves it out.
    LIMIT=$(left $(( SPEED_BUDGET - 5 )))
    if [ "$DRY" != 1 ] && [ "$LIMIT" -gt 20 ]; then
        say "U-Net training step compiled (reduce-overhead), ${LIMIT} s at most"
        timeout -k 5 "$LIMIT" "$PY" benchmarks/throughput.py "${BENCH[@]}" --models unet \
            --compile-only --compile-mode reduce-overhead --data-dir "$WORK/data" \
            --out "$OUT/compiled_train.json" >> "$LOG" 2>&1
        say "exit $?"
    else
        say "compiled training step left out (dry run, or ${LIMIT} s left)"
    fi
    "$PY" benchmarks/gpu_summary.py speed "$OUT" | tee -a "$LOG"
else
    DATA="${3:-}"
    if [ "$DRY" = 1 ]; then
        SETTINGS=(experiment=smoke trainer.max_epochs=1)
        DATA_ARGS=()
    else
        [ -d "$DATA/images" ] || { say "no data set at '$DATA' (images/, masks/)"; exit 2; }
        SETTINGS=(experiment=study pretrained=false data.augment_on=device data.on_device=true
                  data.num_workers=0 data.eval_batch_size=64 trainer.enable_progress_bar=false)
        DATA_ARGS=(data=folder "data.root=$(cd "$DATA" && pwd)")
    fi
    COMMON=("${SETTINGS[@]}" "${DATA_ARGS[@]}" seed=0 logger=csv "paths.data_dir=$WORK/data")
    say "cache"
    timeout -k 5 120 "$PY" -m brainseg.data prepare "${COMMON[@]}" >> "$LOG" 2>&1
    say "exit $?"
    if [ "$DRY" != 1 ]; then
        nvidia-smi dmon -s um -d 5 > "$OUT/gpu_use.txt" 2>&1 &
        DMON=$!
    fi
    # Each run: killed at RUN_LIMIT s; its training stops MARGIN s earlier, which leaves room
    # for the start (data onto the device), the test stage and metrics.json. 40 s for the report.
    RUN_LIMIT=$(left $(( STUDY_BUDGET - 40 )))
    MARGIN=60
    [ "$DRY" = 1 ] && RUN_LIMIT=300
    TRAIN_S=$(( RUN_LIMIT - MARGIN ))
    [ "$TRAIN_S" -lt 30 ] && TRAIN_S=30
    MAX_TIME=$(printf "00:00:%02d:%02d" $(( TRAIN_S / 60 )) $(( TRAIN_S % 60 )))
    for MODEL in unet fpn; do
        say "train $MODEL (both at once), training stopped after $MAX_TIME, killed at ${RUN_LIMIT} s"
        timeout -k 10 "$RUN_LIMIT" "$PY" -m brainseg.train "${COMMON[@]}" "model=$MODEL" \
            "+trainer.max_time=$MAX_TIME" "hydra.run.dir=$WORK/runs/$MODEL" \
            > "$WORK/train_$MODEL.log" 2>&1 &
        eval "PID_$MODEL=$!"
    done
    wait "$PID_unet"; say "unet exit $?"
    wait "$PID_fpn"; say "fpn exit $?"
    [ -n "${DMON:-}" ] && kill "$DMON" 2>/dev/null
    for MODEL in unet fpn; do
        tail -n 40 "$WORK/train_$MODEL.log" > "$WORK/runs/$MODEL/train_tail.log" 2>/dev/null
    done
    say "report"
    timeout -k 5 25 "$PY" -m brainseg.report "$WORK/runs" --no-wandb --no-qualitative \
        --resamples 200 >> "$LOG" 2>&1
    say "exit $?"
    tar -czf "$OUT/study_runs.tar.gz" --exclude='*.ckpt' -C "$WORK" runs
    "$PY" benchmarks/gpu_summary.py study "$OUT" "$WORK/runs" | tee -a "$LOG"
fi
rm -rf "$WORK"
say "done: $(ls "$OUT" | tr '\n' ' ')"
