#!/usr/bin/env bash
# GPU check (run through the device tool, or on any CUDA machine from the repo root):
# a 640x512 x 100-frame hard-sequence fit with fit time and peak GPU memory, the 256x192 hard
# sequence on the GPU, then the ROS-free test suite with `device: auto` resolving to CUDA.
# Needs python3 with torch (CUDA), opencv, scipy, pyyaml, tqdm, matplotlib, jaxtyping, pytest.
# Results go to $OUT (default out/gpu_check). Each step has its own timeout so later ones still run.
set -u
OUT=${OUT:-out/gpu_check}
DEVICE=${DEVICE:-cuda}
BIG=${BIG:-640x512}; BIG_FRAMES=${BIG_FRAMES:-100}; BIG_BUDGET_S=${BIG_BUDGET_S:-150}; BIG_TIMEOUT_S=${BIG_TIMEOUT_S:-290}
SMALL_BUDGET_S=${SMALL_BUDGET_S:-90}; SMALL_TIMEOUT_S=${SMALL_TIMEOUT_S:-150}; TEST_TIMEOUT_S=${TEST_TIMEOUT_S:-100}
RUN_SMALL=${RUN_SMALL:-1}  # 0: skip the 256x192 sequence (a short device lease)
TESTS=${TESTS:-test}     # the test paths the CUDA suite runs
WORK=${WORK:-/tmp/gpu_check}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"
  python3 -c "import torch, cv2, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'opencv', cv2.__version__, 'numpy', numpy.__version__)"
  nproc
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

bench() {  # name size frames budget timeout methods...
  local name=$1 size=$2 frames=$3 budget=$4 limit=$5; shift 5
  local t0=$SECONDS
  timeout "$limit" python3 -m surg_invnerf_ros bench --out "$WORK/$name" --preset hard --seeds 0 --size "$size" \
    --frames "$frames" --methods "$@" --no-speed --no-ros --no-kinematics --device "$DEVICE" \
    --time-budget-s "$budget" > "$OUT/$name.log" 2>&1
  echo "$name: exit $? after $((SECONDS - t0)) s"
  cp "$WORK/$name/hard/bench.md" "$OUT/$name.md" 2>/dev/null && sed -n '/## Mean over/,/## Per sequence/p;/## Fits/,$p' "$OUT/$name.md"
  tail -3 "$OUT/$name.log"
}

bench big "$BIG" "$BIG_FRAMES" "$BIG_BUDGET_S" "$BIG_TIMEOUT_S" lk dis invnerf
[ "$RUN_SMALL" = 1 ] && bench small 256x192 48 "$SMALL_BUDGET_S" "$SMALL_TIMEOUT_S" dis invnerf

t0=$SECONDS
timeout "$TEST_TIMEOUT_S" python3 -m pytest -q -p no:cacheprovider -n 8 --ignore=test/ros $TESTS > "$OUT/pytest.log" 2>&1
echo "pytest: exit $? after $((SECONDS - t0)) s"
grep -E "passed|failed|error" "$OUT/pytest.log" | tail -15
