#!/usr/bin/env bash
# GPU check in two phases, each bounded and writing at most 8 files into OUT:
#
#   bash benchmarks/gpu_check.sh speed OUT          # about 3.5 minutes, synthetic 256x256 slices
#   bash benchmarks/gpu_check.sh study OUT DATA     # about 6.5 minutes, the folder data set DATA
#
# speed: the card; for both study networks (bf16, channels_last, batch 16, 256²) the training
#   rate of brainseg against a bare loop and where a step's time goes, whole steps with the data
#   on the device and from the loader, host syncs per step, batch-1 latency of every path
#   (eager, CUDA graph, compiled; fp32 and bf16). Files: machine.txt, throughput_<model>.json,
#   latency_compiled.json, speed.log.
# study: seed 0 of both networks with the study preset (80 epochs, pretrained=false, data on the
#   device, CSV logs), the two at once on the one GPU and stopped by STUDY_TIME if not done, then
#   the report. Files: study_runs.tar.gz (run folders and report, no checkpoints), study.log,
#   gpu_use.txt (nvidia-smi dmon).
# Each phase prints a summary last. Environment:
#   GPU_CHECK_DRY  1: on the CPU with the smoke preset and a few steps (checks this script)
#   STUDY_TIME     training budget of each study run, DD:HH:MM:SS (default 00:00:04:30)
#   SPEED_TIMEOUT  seconds per network for the throughput benchmark (default 90)
#   WORKERS        loader workers where the loader is measured (default 8)
# Packages the machine lacks (hydra-core, omegaconf, albumentations, ...) are installed from
# wheels in .whl/ at the repository root into /tmp/site when an import fails.
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
STUDY_TIME="${STUDY_TIME:-00:00:04:30}"
SPEED_TIMEOUT="${SPEED_TIMEOUT:-90}"
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
        # Compiling on a CPU takes minutes: the dry run times the eager path in its place.
        COMPILED=(--device cpu --preset smoke --latency-iters 2 --infer-batch 2 --infer-iters 1
                  --paths eager)
    else
        BENCH=(--device cuda --preset study --channels-last on --precision bf16-mixed
               --steps 30 --warmup 10 --rounds 3 --workers 0 "$WORKERS" --augment-on device
               --loader-batches 40 --latency-iters 200 --infer-batch 64 --infer-iters 10
               --pipeline-workers "$WORKERS" --no-compile)
        COMPILED=(--device cuda --preset study --channels-last on --latency-iters 200
                  --infer-batch 64 --infer-iters 10 --paths compiled)
    fi
    for MODEL in unet fpn; do
        say "throughput $MODEL"
        timeout "$SPEED_TIMEOUT" "$PY" benchmarks/throughput.py "${BENCH[@]}" --models "$MODEL" \
            --data-dir "$WORK/data" --out "$OUT/throughput_$MODEL.json" >> "$LOG" 2>&1
        say "exit $?"
    done
    # Compilation takes the longest and may not finish: last, with what time is left.
    LEFT=$(( 225 - (SECONDS - START) ))
    [ "$DRY" = 1 ] && LEFT=120
    if [ "$LEFT" -gt 20 ]; then
        say "compiled batch-1 latency, both networks, ${LEFT} s at most"
        timeout "$LEFT" "$PY" benchmarks/throughput.py "${COMPILED[@]}" --compile --latency-only \
            --data-dir "$WORK/data" --out "$OUT/latency_compiled.json" \
            >> "$LOG" 2>&1
        say "exit $?"
    else
        say "no time left for the compiled latency"
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
    "$PY" -m brainseg.data prepare "${COMMON[@]}" >> "$LOG" 2>&1
    say "exit $?"
    if [ "$DRY" != 1 ]; then
        nvidia-smi dmon -s um -d 5 > "$OUT/gpu_use.txt" 2>&1 &
        DMON=$!
    fi
    for MODEL in unet fpn; do
        say "train $MODEL (both at once)"
        timeout 330 "$PY" -m brainseg.train "${COMMON[@]}" "model=$MODEL" \
            "+trainer.max_time=$STUDY_TIME" "hydra.run.dir=$WORK/runs/$MODEL" \
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
    timeout 30 "$PY" -m brainseg.report "$WORK/runs" --no-wandb --no-qualitative \
        --resamples 200 >> "$LOG" 2>&1
    say "exit $?"
    tar -czf "$OUT/study_runs.tar.gz" --exclude='*.ckpt' -C "$WORK" runs
    "$PY" benchmarks/gpu_summary.py study "$OUT" "$WORK/runs" | tee -a "$LOG"
fi
rm -rf "$WORK"
say "done: $(ls "$OUT" | tr '\n' ' ')"
