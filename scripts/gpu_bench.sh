#!/usr/bin/env bash
# The GPU figures of docs/performance.md, a stage per device call (a lent GPU comes with
# minutes, not hours). Stages, run in the order given by STAGES:
#   levers   each speed option off and on, CIFAR-10 (5,000 images), the GPU's open questions first (5.5 min)
#   quality  time to MMD 1e-4 on MNIST-32 with configs/mnist.yaml, against the paper's first round (7 min)
#   mnist    ours (configs/mnist.yaml) against configs/paper.yaml on MNIST-32: throughput, share of peak
#   cifar10  the same on CIFAR-10
#   celeba   configs/celeba.yaml as it is on the 5,000 shared faces; its run folder (rounds.jsonl, grids) in OUT
# Each stage has a time cap, so that one slow stage cannot eat the others; its JSON lands in OUT
# as it is measured (a capped stage keeps what it finished).
#
#   bash scripts/gpu_bench.sh [DATA_DIR] [OUT_DIR]     # DATA_DIR defaults to ../shared/data
#   STAGES=levers bash scripts/gpu_bench.sh            # one stage per device call: each fits in 10 minutes
#   STAGES=celeba bash scripts/gpu_bench.sh            # the CelebA recipe whole (the issue's GPU run)
#
# EXTRA (environment) is appended to every train.py run, e.g. for a dry run on a CPU:
#   EXTRA="--trainer.accelerator cpu --data.source.num_images 600" SCALE=0.2 bash scripts/gpu_bench.sh
set -u
DATA=${1:-../shared/data}
OUT=${2:-gpu_bench}
STAGES=${STAGES:-levers quality mnist cifar10}
SCALE=${SCALE:-1}  # multiplies every stage's time cap
EXTRA=${EXTRA:-}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DATA=$(cd "$DATA" && pwd) || { echo "no data folder $DATA" >&2; exit 2; }
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the scripts import this checkout's package, installed or not

MNIST="--data.source NpzImages --data.source.path $DATA/mnist32_uint8.npz --data.source.num_images 5000"
CIFAR="--data.source NpzImages --data.source.path $DATA/cifar10_uint8.npz --data.source.num_images 5000"
CELEBA="--data.source NpzImages --data.source.path $DATA/celeba64_uint8.npz --data.source.num_images 5000"

# run NAME SECONDS CONFIG: train.py as it is under a time cap, its run folder in OUT/NAME (checkpoints left out)
run() {
  local name=$1 cap=$2 config=$3
  echo "== $name (at most $cap s)" | tee -a "$OUT/log.txt"
  local start=$SECONDS
  timeout "$cap" $PY train.py --config "$config" $CELEBA --logging.backend csv --trainer.enable_progress_bar false \
    --trainer.default_root_dir "$OUT/$name" $EXTRA >>"$OUT/log.txt" 2>&1
  echo "   $name: exit $? after $((SECONDS - start)) s" | tee -a "$OUT/log.txt"
  rm -rf "$OUT/$name/checkpoints" "$OUT/$name/state"
}

# stage NAME SECONDS ARGS...: bench_speed.py under a time cap; its JSON lines to the screen, all to OUT/log.txt
stage() {
  local name=$1 cap=$2; shift 2
  echo "== $name (at most $cap s)" | tee -a "$OUT/log.txt"
  local start=$SECONDS
  timeout "$cap" $PY scripts/bench_speed.py --out "$OUT/$name.json" "$@" 2>>"$OUT/log.txt" | tee -a "$OUT/log.txt"
  echo "   $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$OUT/log.txt"
}
cap() { $PY -c "print(int($1 * $SCALE))"; }

$PY - <<'PEAK' 2>&1 | tee "$OUT/device.txt"
import torch, platform
print("torch", torch.__version__, "python", platform.python_version())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).total_memory / 2**30, "GiB")
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    print(f"bf16 matmul 8192^3: {10 * 2 * 8192**3 / (start.elapsed_time(end) / 1e3) / 1e12:.0f} TFLOP/s")
PEAK

# 989 TFLOP/s: the H100/H200 SXM datasheet's dense bf16 peak (device.txt has the measured one).
for name in $STAGES; do
  case $name in
    levers) stage levers "$(cap 330)" --levers --config configs/cifar10.yaml --steps 40 --rounds 2 \
              --only "torch.compile" "CUDA graphs" "cuDNN autotuning" "state on the device" "fused AdamW" \
              "channels_last" "bf16 autocast" -- $CIFAR $EXTRA ;;
    # The whole of configs/mnist.yaml (13 rounds; MMD 1e-4 at round 12 on a CPU). The paper's recipe needs
    # 9,000 steps for its first MMD: its run is skipped, the ratio is a lower bound from its warm steps.
    quality) stage quality "$(cap 430)" --config configs/mnist.yaml --steps 60 --rounds 2 --peak-tflops 989 \
               --target-mmd 1e-4 --budget "$(cap 300)" --baseline-budget 0 -- $MNIST $EXTRA ;;
    mnist) stage mnist "$(cap 110)" --config configs/mnist.yaml --skip-quality --steps 60 --rounds 2 \
             --peak-tflops 989 -- $MNIST $EXTRA ;;
    cifar10) stage cifar10 "$(cap 130)" --config configs/cifar10.yaml --skip-quality --steps 60 --rounds 2 \
               --peak-tflops 989 -- $CIFAR $EXTRA ;;
    celeba) run celeba "$(cap 560)" configs/celeba.yaml ;;
    *) echo "unknown stage $name (levers, quality, mnist, cifar10, celeba)" >&2; exit 2 ;;
  esac
done
