# Sourced by the device scripts (tools/device_bench.sh, tools/device_quality.sh) with NAME set:
# moves to the repository root, sets OUT (default /tmp/${NAME}_out), LOG and T_START, and
# installs the wheels carried in .whl/ when the GPU host lacks the modules named in NEEDS.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-/tmp/${NAME}_out}
mkdir -p "$OUT"
LOG="$OUT/$NAME.log"
T_START=$(date +%s)
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
if [ -d .whl ] && ! KERAS_BACKEND=jax python3 -c "import ${NEEDS:-keras}" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "wheel install failed" | tee -a "$LOG"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
