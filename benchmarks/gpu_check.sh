#!/usr/bin/env bash
# The one GPU check of sslkit: tests of every CUDA path + throughput, in one go (< 8 min on one H100/H200).
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--smoke] [any option of benchmarks/gpu_check.py]
#
# Output (at most 4 files): DIR/gpu_check.json, gpu_check.md, gpu_check_tests.xml, gpu_check.log;
# DIR defaults to $OUT, else ./gpu-check-out. Never uses the network: the packages the GPU machine
# lacks (kornia, kornia_rs, pycocotools, lightly, imgviz) come as wheels in .whl/ (see docs/gpu.md for
# the one `pip download` that fills it); they and sslkit itself (no dependencies) are installed into a
# temporary folder put on PYTHONPATH. --smoke runs everything on CPU at tiny sizes (CI does).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUTDIR=${OUT:-gpu-check-out}
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUTDIR="$2"; shift 2 ;;
    --out=*) OUTDIR="${1#--out=}"; shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_check.log"
export PYTHONUNBUFFERED=1
{
  echo "== sslkit gpu_check $(date -u +%FT%TZ) on $(hostname)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  SITE=$(mktemp -d /tmp/sslkit-site.XXXX)
  if ls .whl/*.whl >/dev/null 2>&1; then
    echo "== installing $(ls .whl/*.whl | wc -l) carried wheels and sslkit (no dependencies, no index) into $SITE"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
      || echo "!! wheel install failed"
    $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$SITE" . 2>/dev/null \
      || { echo "== pip could not build sslkit here (no setuptools?): copying the package instead"; cp -r sslkit "$SITE/"; }
  else
    echo "== no .whl/ folder: using the installed packages and this working tree"
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  [ -d "$SITE/sslkit" ] || export PYTHONPATH="$PWD:$PYTHONPATH"
  $PY benchmarks/gpu_check.py --out "$OUTDIR" "${ARGS[@]}"
  status=$?
  echo "== gpu_check exit $status"
  exit $status
} 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
