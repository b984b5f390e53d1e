#!/usr/bin/env bash
# The GPU figures of the README, in one pass on one GPU machine (issue targets: determinism on
# CUDA, evaluation time, the mnist-all grid with --workers auto, the equal-budget tuned table).
#
#   benchmarks/gpu_check.sh DATA_DIR OUT_DIR [BUDGET_S]
#
# DATA_DIR holds mnist/; everything is written under OUT_DIR (logs, speed JSON, phases.tsv and
# results.tar.gz, the results folders without checkpoints and embeddings; bundle them into one
# archive if your machine limits the files that come back). Phases run in order,
# each under its own time limit, so a short budget still returns the first ones.
# PHASES picks them (default: all): det speed npair gputest ddp mnist_all tune test. RESUME=results.tar.gz
# continues from an earlier pass (a cut-short tune resumes from its study.db).
# DEV=cpu QUICK=1 runs the same commands on a CPU with tiny budgets (a check of this script).
set -u
DATA=$(realpath "${1:?DATA_DIR}")
OUT=$(realpath -m "${2:?OUT_DIR}")
BUDGET=${3:-560}
DEV=${DEV:-cuda}
QUICK=${QUICK:-0}
TRIALS=${TRIALS:-30}
TUNE_WORKERS=${TUNE_WORKERS:-12}
mkdir -p "$OUT"
PHASES=" ${PHASES:-det speed npair gputest ddp mnist_all tune test} "
# The results folders, tarred into OUT at the end; a fixed path, so a resumed tune's study
# (which records its suite folder) finds the same conditions.
W=${WORK:-/tmp/dmlbench-gpu-check}
rm -rf "$W"; mkdir -p "$W"
[ -n "${RESUME:-}" ] && tar -xzf "$RESUME" -C "$W"
want() { [[ "$PHASES" == *" $1 "* ]]; }
T0=$(date +%s)
export PYTHONUNBUFFERED=1
BENCH=${BENCH:-bench}
PY=${PY:-python3}
SMALL=()
SEEDS=0,1,2; TEST_SEEDS=0,1,2,3,4; ONE_EPOCH=(--epochs 1)
[ "$QUICK" = 1 ] && SMALL=(--steps 3 --test-triplets 200) && SEEDS=0 && TEST_SEEDS=0 && ONE_EPOCH=()

left() { echo $((BUDGET - ($(date +%s) - T0))); }
stamp() { while IFS= read -r line; do printf '%s %s\n' "$(date +%T.%3N)" "$line"; done; }
# phase NAME LIMIT CMD...: run CMD under min(LIMIT, time left), its output to OUT/NAME.log,
# and record the exit status and wall time in OUT/phases.tsv.
phase() {
  local name=$1 limit=$2; shift 2
  local l; l=$(left)
  ((limit > l - 15)) && limit=$((l - 15))
  if ((limit < 10)); then printf '%s\tskipped\t0\n' "$name" >>"$OUT/phases.tsv"; echo "== $name skipped"; return 1; fi
  echo "== $name (limit ${limit}s) at $(date +%T)"
  local s; s=$(date +%s%N)
  timeout -k 5 "$limit" "$@" 2>&1 | stamp >"$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  local ms=$((($(date +%s%N) - s) / 1000000))
  printf '%s\t%s\t%s\n' "$name" "$rc" "$ms" >>"$OUT/phases.tsv"
  echo "== $name rc=$rc wall=${ms}ms"
  tail -n 3 "$OUT/$name.log"
  return "$rc"
}

printf 'phase\trc\twall_ms\n' >"$OUT/phases.tsv"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true
  "$PY" -c 'import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda,
torch.backends.cudnn.version() if torch.cuda.is_available() else None)'
  nproc; } >"$OUT/env.log" 2>&1
phase import_torch 60 "$PY" -c 'import time; t=time.perf_counter(); import torch; a=time.perf_counter();
torch.zeros(1, device="'"$DEV"'"); print(f"import torch {a-t:.2f}s, device init {time.perf_counter()-a:.2f}s")'

# 1. Determinism: two fresh runs with the same seed and config must give bitwise-equal metrics;
#    a third with --no-deterministic gives the cost. The three run at once (same contention for
#    each), so this costs one run's time.
DET=(run --methods triplet-hinge --dataset mnist --seeds 0 "${ONE_EPOCH[@]}" --device "$DEV" --threads 4
     --data-dir "$DATA" "${SMALL[@]}")
if want det; then
echo "== det (three runs at once) at $(date +%T)"
s=$(date +%s%N)
for r in a b c; do
  flag=(); [ $r = c ] && flag=(--no-deterministic)
  timeout -k 5 $(($(left) > 150 ? 150 : $(left))) "$BENCH" "${DET[@]}" "${flag[@]}" --out "$W/det_$r" >"$OUT/det_$r.log" 2>&1 &
done
wait
printf 'det\t-\t%s\n' $((($(date +%s%N) - s) / 1000000)) >>"$OUT/phases.tsv"
"$PY" - "$W" >"$OUT/determinism.json" <<'EOF'
import json, sys, glob
w = sys.argv[1]
def metrics(name):
    found = glob.glob(f"{w}/{name}/**/triplet-hinge/*/metrics.json", recursive=True)
    return json.load(open(found[0])) if found else None
a, b, c = (metrics(n) for n in ("det_a", "det_b", "det_c"))
timing = ("train_seconds", "eval_seconds")
same = None if a is None or b is None else all(a[k] == b.get(k) for k in a if k not in timing)
print(json.dumps({"bitwise_equal_a_b": same, "a": a, "b": b, "no_deterministic": c}, indent=1))
EOF
fi

# 2. One MNIST evaluation (all metrics) on the device, and the harness against a bare loop.
want speed && phase speed 150 "$PY" benchmarks/speed.py --data-dir "$DATA" --device "$DEV" --parts eval,train --threads 8 \
  --steps "$([ "$QUICK" = 1 ] && echo 5 || echo 300)" --methods triplet-hinge,npair,tvae --out "$OUT/speed-$DEV.json"
want npair && phase npair_loss 60 "$PY" benchmarks/npair_loss.py --device "$DEV"
want gputest && phase gputest 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_neighbors.py tests/test_probe.py \
  tests/test_trainer.py -k "cuda or gpu"

# 2b. A run as several processes (issue #29): every method on the bundled digits, 20 steps of one
#     step an epoch (history.csv holds each step), as 1 process and as 2 ranks sharing one GPU (gloo);
#     with 2 GPUs or more also NCCL (rank r on cuda:r). ddp.json: per method, the largest difference
#     of a step's loss terms (the CPU tests hold 1e-5) and of a metric (1e-4), and the world.
if want ddp; then
  DDP=(run --methods siamese,triplet-softmax,triplet-hinge,npair,vae,tvae --seeds 0 --threads 4 --steps 20
       --epoch-size 128 --test-triplets 300)
  phase ddp_one 120 "$BENCH" "${DDP[@]}" --device "${DEV/cuda/cuda:0}" --out "$W/ddp_one"
  phase ddp_gloo 150 "$BENCH" "${DDP[@]}" --device "${DEV/cuda/cuda:0}" --nproc-per-run 2 --out "$W/ddp_gloo"
  NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
  if [ "$DEV" = cuda ] && [ "$NGPU" -ge 2 ]; then
    phase ddp_nccl 150 "$BENCH" "${DDP[@]}" --device cuda --nproc-per-run 2 --out "$W/ddp_nccl"
  fi
  "$PY" - "$W" >"$OUT/ddp.json" <<'EOF'
import glob, json, sys
import numpy as np, pandas as pd
w = sys.argv[1]
def runs(name):
    out = {}
    for f in glob.glob(f"{w}/{name}/**/metrics.json", recursive=True):
        cfg = json.load(open(f.replace("metrics.json", "config.json")))
        h = pd.read_csv(f.replace("metrics.json", "history.csv")) if cfg["steps"] else None
        terms = None if h is None else h.drop(columns=["epoch", "step", "lr", "seconds", "images_per_s"]).to_numpy()
        out[cfg["method"]] = (json.load(open(f)), terms, cfg.get("distributed"))
    return out
one = runs("ddp_one")
res = {}
for name in ("ddp_gloo", "ddp_nccl"):
    got = runs(name)
    res[name] = {m: {"max_metric_difference": max(abs(v - one[m][0][k]) for k, v in got[m][0].items()
                                                  if isinstance(v, float) and not k.endswith("_seconds") and k in one[m][0]),
                     "max_step_loss_difference": None if got[m][1] is None else float(np.abs(got[m][1] - one[m][1]).max()),
                     "world": got[m][2]} for m in got if m in one}
print(json.dumps(res, indent=1))
EOF
  cat "$OUT/ddp.json"
fi

# 3. The mnist-all grid: 7 methods x 3 seeds, --workers auto (4 runs on the GPU at once).
want mnist_all && phase mnist_all 240 "$BENCH" run --preset mnist-all --seeds "$SEEDS" --device "$DEV" --workers auto \
  --data-dir "$DATA" --out "$W/res" --suite mnist-all-cuda "${SMALL[@]}"

# 4. The equal-budget comparison: TRIALS trials per method on validation, then 5 test seeds.
#    --timeout stops starting trials when the budget runs short (running ones finish); the methods
#    are then evened to the largest count, so every method still gets the same number of trials.
TUNE=(--preset mnist-tuned --device "$DEV" --data-dir "$DATA" --out "$W/res" "${SMALL[@]}")
TUNED="$W/res/mnist/mnist-tuned"
RESERVE=${RESERVE:-200}              # seconds kept for the test runs
LIMIT=$(($(left) - RESERVE + 60)); STOP=$(($(left) - RESERVE)); ((STOP < 20)) && STOP=20
want tune && phase tune "$LIMIT" "$BENCH" tune "${TUNE[@]}" --trials "$TRIALS" --workers "$TUNE_WORKERS" --timeout "$STOP"
if want test && [ -f "$TUNED/tuned.json" ]; then
  TOP=$("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); c=[m["trials"] for m in d["methods"].values()]
print(max(c) if min(c) < max(c) else 0)' "$TUNED/tuned.json")
  [ "$TOP" -gt 0 ] && phase tune_even 90 "$BENCH" tune "${TUNE[@]}" --trials "$TOP" --workers "$TUNE_WORKERS"
  phase tuned_test 400 "$BENCH" run "${TUNE[@]}" --tuned "$TUNED" --seeds "$TEST_SEEDS" --workers "$TUNE_WORKERS"
fi

tar -czf "$OUT/results.tar.gz" -C "$W" --exclude=checkpoint.pt --exclude=embeddings.npz --exclude=.lock --exclude='*/trials/*/per_query.npz' \
  --exclude='*.tmp' . 2>/dev/null
echo "total $(($(date +%s) - T0))s"
cat "$OUT/phases.tsv"
