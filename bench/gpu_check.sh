#!/usr/bin/env bash
# The GPU check: every path soupflow runs on CUDA, in one script of at most 8 minutes on one GPU.
#
#   bash bench/gpu_check.sh OUTDIR [--cpu-dry] [--only smoke,train,...] [--skip smoke,...] [--data FASHION]
#
# Parts (each behind its own `timeout`; a failing part is recorded and the next one runs):
#   smoke  the smoke workflow (tests/smoke.yaml, evaluation.device: cuda): every run on CUDA with bf16 autocast
#          (runs table, checkpoint metadata, job logs), every model job with Snakemake resource gpu=1
#   train  bench/run.py --only train on CUDA: soupflow's train() vs a bare loop, fp32 and bf16 (ratios)
#   files  224 px JPEGs through 8 DataLoader workers, resnet50 in bf16: img/s vs tensors already on the GPU
#   ddp    training.devices_per_run: 1 through torchrun (jobs.launch) vs the plain path; NCCL + DDP probe
#   soups  the smoke workflow's soups job on CUDA vs on CPU (seconds; the same soups?)
# --cpu-dry runs every part shrunk on the CPU (gloo instead of NCCL, bf16 autocast on CPU) in under 3 minutes:
# tests/test_gpu_check.py runs it so that this script cannot rot.
#
# Writes OUTDIR/<part>.json (figures), OUTDIR/logs/<part>.log, OUTDIR/status.tsv and OUTDIR/summary.txt (the
# table printed at the end); scratch (the workflow's results, JPEGs) goes to $GPU_CHECK_WORK or a temporary
# folder. Python: .venv/bin/python when it imports torch, else python3, with src/ on PYTHONPATH (soupflow need
# not be installed). Missing packages (Snakemake, jsonschema on a bare GPU image) are installed from the kit
# that bench/gpu_kit.sh builds in .gpu-kit/ (wheels; a Fashion-MNIST subset when the machine has none).
# Exit status: 0 when no part failed.
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ALL_PARTS="smoke train files ddp soups"

usage() { sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

[ $# -ge 1 ] || usage
case "$1" in -h|--help) usage 0 ;; esac
OUTDIR=$1
shift
DRY=0 ONLY="" SKIP="" DATA=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-dry) DRY=1 ;;
        --only) ONLY=${2:?--only needs parts}; shift ;;
        --skip) SKIP=${2:?--skip needs parts}; shift ;;
        --data) DATA=${2:?--data needs a folder}; shift ;;
        -h|--help) usage 0 ;;
        *) echo "unknown option $1" >&2; usage ;;
    esac
    shift
done
for part in ${ONLY//,/ } ${SKIP//,/ }; do
    case " $ALL_PARTS " in *" $part "*) ;; *) echo "unknown part $part (parts: $ALL_PARTS)" >&2; exit 2 ;; esac
done

mkdir -p "$OUTDIR/logs"
OUTDIR=$(cd "$OUTDIR" && pwd)
: >"$OUTDIR/status.tsv"
WORK=${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}
mkdir -p "$WORK"
BEGAN=$(date +%s)

# ---------------------------------------------------------------- python, packages, data
if [ -x "$ROOT/.venv/bin/python" ] && "$ROOT/.venv/bin/python" -c "import torch" 2>/dev/null; then
    PY="$ROOT/.venv/bin/python"
else
    PY=python3
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! "$PY" -c "import snakemake, jsonschema" 2>/dev/null; then
    SITE=${TMPDIR:-/tmp}/gpu-check-site
    if ls "$ROOT"/.gpu-kit/wheels/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "$ROOT"/.gpu-kit/wheels/*.whl >"$OUTDIR/logs/setup.log" 2>&1
        export PYTHONPATH="$PYTHONPATH:$SITE" PATH="$SITE/bin:$PATH"
    fi
    "$PY" -c "import snakemake, jsonschema" 2>>"$OUTDIR/logs/setup.log" \
        || echo "setup: $PY lacks snakemake/jsonschema and no .gpu-kit/wheels helped (bench/gpu_kit.sh)" >&2
fi
if [ -z "$DATA" ]; then
    DATA=/usr/share/datasets/fashion-mnist
    [ -e "$DATA/t10k-labels-idx1-ubyte.gz" ] || [ -e "$DATA/t10k-labels-idx1-ubyte" ] || DATA="$ROOT/.gpu-kit/fashion-mnist"
fi

if [ "$DRY" = 1 ]; then
    MODE=dry DEV=cpu CORES=2
    # a GPU the jobs are told of but never use (evaluation.device: cpu): Snakemake still gives each model job
    # its resource gpu=1, which the smoke part checks
    SMOKE_ENV="CUDA_VISIBLE_DEVICES=0"
    TRAIN_ARGS="--steps 3 --precisions fp32,bf16 --augmentations none --repeats 1"
    FILES_ARGS="--model resnet10t --size 64 --workers 2 --batch 16 --batches 3 --images 120 --files-precision bf16"
    T_SMOKE=100 T_TRAIN=60 T_FILES=60 T_DDP=60 T_SOUPS=60
else
    MODE=gpu DEV=cuda CORES=$(nproc)
    SMOKE_ENV=""
    TRAIN_ARGS="--steps 40 --precisions fp32,bf16 --augmentations none,flip_shift --repeats 3"
    FILES_ARGS="--model resnet50 --size 224 --workers 8 --batch 128 --batches 40 --images 6000"
    T_SMOKE=170 T_TRAIN=90 T_FILES=90 T_DDP=60 T_SOUPS=60  # 470 s at most: under 8 minutes
fi
cd "$ROOT" || exit 2
{
    echo "gpu_check: $(date -u +%FT%TZ), mode $MODE, python $PY, data $DATA, work $WORK"
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" 2>&1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
} | tee "$OUTDIR/logs/machine.log"

# ---------------------------------------------------------------- the parts
wanted() {
    case ",$SKIP," in *",$1,"*) return 1 ;; esac
    [ -z "$ONLY" ] && return 0
    case ",$ONLY," in *",$1,"*) return 0 ;; esac
    return 1
}

run_part() {  # run_part NAME SECONDS: run part_NAME under a timeout, log it, record status and seconds
    local name=$1 limit=$2 start rc status
    if ! wanted "$name"; then
        printf '%s\tskipped\t0\n' "$name" >>"$OUTDIR/status.tsv"
        return
    fi
    echo "== $name (at most $limit s)"
    start=$(date +%s)
    export -f "part_$name"
    timeout --kill-after=10 "$limit" bash -c "part_$name" >"$OUTDIR/logs/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status=FAIL; echo "timed out after $limit s" >>"$OUTDIR/logs/$name.log" ;;
        *) status=FAIL ;;
    esac
    [ "$status" = ok ] || tail -n 15 "$OUTDIR/logs/$name.log"
    printf '%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - start))" >>"$OUTDIR/status.tsv"
}

smoke_workflow() {  # smoke_workflow LOG: the smoke experiment's model jobs (init, fine-tunes, soups; no plots)
    mkdir -p "$WORK/smoke"
    "$PY" bench/gpu_check.py config --mode "$MODE" --data "$DATA" --out "$WORK/smoke/config.yaml" || return 1
    env $SMOKE_ENV "$PY" -m snakemake -s "$ROOT/Snakefile" --configfile "$WORK/smoke/config.yaml" \
        --directory "$WORK/smoke" --cores "$CORES" results/metrics/soups.parquet results/config.yaml >"$1" 2>&1
}

part_smoke() {
    set -x
    smoke_workflow "$OUTDIR/logs/smoke-snakemake.log" || { tail -n 40 "$OUTDIR/logs/smoke-snakemake.log"; return 1; }
    "$PY" bench/gpu_check.py smoke "$WORK" --device "$DEV" --precision bf16 --log "$OUTDIR/logs/smoke-snakemake.log" \
        --out "$OUTDIR/smoke.json"
}

part_train() {
    set -x
    "$PY" bench/run.py --only train --device "$DEV" --root "$DATA" --out "$WORK/train" $TRAIN_ARGS || return 1
    "$PY" bench/gpu_check.py train "$WORK" --device "$DEV" --out "$OUTDIR/train.json"
}

part_files() {
    set -x
    "$PY" bench/gpu_check.py files "$WORK" --device "$DEV" --data "$DATA" $FILES_ARGS --out "$OUTDIR/files.json"
}

part_ddp() {
    set -x
    "$PY" bench/gpu_check.py ddp "$WORK" --device "$DEV" --data "$DATA" --out "$OUTDIR/ddp.json"
}

part_soups() {
    set -x
    if [ ! -e "$WORK/smoke/results/metrics/runs.parquet" ]; then  # the smoke part was skipped or failed
        MODE=dry smoke_workflow "$OUTDIR/logs/soups-snakemake.log" || return 1
    fi
    "$PY" bench/gpu_check.py soups "$WORK" --device "$DEV" --out "$OUTDIR/soups.json"
}

export ROOT OUTDIR WORK PY DEV MODE CORES DATA SMOKE_ENV TRAIN_ARGS FILES_ARGS
export -f smoke_workflow
run_part smoke "$T_SMOKE"
run_part train "$T_TRAIN"
run_part files "$T_FILES"
run_part ddp "$T_DDP"
run_part soups "$T_SOUPS"

# ---------------------------------------------------------------- the table
{
    "$PY" bench/gpu_check.py summary "$OUTDIR" 2>&1 || cat "$OUTDIR/status.tsv"
    echo "total $(($(date +%s) - BEGAN)) s, mode $MODE; figures in $OUTDIR/*.json, logs in $OUTDIR/logs"
} >"$OUTDIR/summary.txt"
echo
cat "$OUTDIR/summary.txt"
! grep -q $'\tFAIL\t' "$OUTDIR/status.tsv"
