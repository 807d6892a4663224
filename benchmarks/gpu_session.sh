#!/usr/bin/env bash
# One device call for the GPU benchmarks: install the carried wheels (.whl/), then profile, generation and
# training within LIMIT seconds (default 570), most important first; logs and JSON under $OUT.
#   device run: bash benchmarks/gpu_session.sh   (carry .whl; timeout_s 600)
set -u
LIMIT=${LIMIT:-570}
OUT=${OUT:-benchmarks/out/gpu}
WORK=/tmp/cxrgen-gpu
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,memory.used --format=csv,noheader
# PROFILE_S, GENERATE_S: seconds for that part (0 skips it; TRAIN_S=0 skips training, which gets the rest);
# GENERATE_ONLY, TRAIN_ONLY pick rows by name
if [ "${PROFILE_S:-80}" != 0 ]; then
  timeout "${PROFILE_S:-80}" python3 benchmarks/gpu_profile.py --out "$OUT" >"$OUT/profile.log" 2>&1
  echo "profile rc=$? at ${SECONDS}s"
fi
if [ "${GENERATE_S:-210}" != 0 ]; then
  timeout "${GENERATE_S:-210}" python3 benchmarks/gpu_generate.py --out "$OUT" --work "$WORK" \
    --only "${GENERATE_ONLY:-16}" >"$OUT/generate.log" 2>&1
  echo "generate rc=$? at ${SECONDS}s"
fi
if [ "${TRAIN_S:-rest}" != 0 ]; then
  timeout $((LIMIT - SECONDS)) python3 benchmarks/gpu_train.py --out "$OUT" --work "$WORK" \
    --budget-s $((LIMIT - SECONDS - 5)) ${TRAIN_ONLY:+--only "$TRAIN_ONLY"} >"$OUT/train.log" 2>&1
  echo "train rc=$? at ${SECONDS}s"
fi
for log in profile generate train; do
  [ -f "$OUT/$log.log" ] || continue
  echo "== $log"
  grep -v -i "warn\|it/s\]\|step/s\]\|img/s\]" "$OUT/$log.log" | tail -n 22 | cut -c1-400
done
