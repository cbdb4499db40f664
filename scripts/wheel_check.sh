#!/usr/bin/env bash
# Build the weightinit wheel and check that it works outside the development venv:
#   1. build the wheel from a clean copy of the source tree (tracked + untracked, not ignored),
#   2. create an EMPTY venv in a temp dir, install the torch pin from requirements-dev.txt
#      (the CPU build) first, then the wheel with its declared dependencies,
#   3. from a temp working directory outside the repo (so the source tree can not be imported):
#      a. `weightinit init examples/configs/resnet50.py --out ... --report ...` (the CLI's main
#         job: needs every run-time dependency, numpy included, to be declared),
#      b. a `torchvision://` lookup, no network (needs checkpoint/torchvision.json packaged).
# All the checks of step 3 run; any failure is shown and makes the script exit 1. It prints a
# one-line summary and removes its temp dir.
#   bash scripts/wheel_check.sh            (run by `bash scripts/run.sh test` after pytest)
#   PYTHON=/path/to/python bash scripts/wheel_check.sh   (interpreter that builds / makes the venv)
#   WHEEL_CHECK_KEEP=1 ...                 keep the temp dir for inspection
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
START=$SECONDS

if [ -n "${PYTHON:-}" ]; then
    BASE_PY="$PYTHON"
elif [ -x "$REPO/.venv/bin/python" ]; then
    BASE_PY="$REPO/.venv/bin/python"
else
    BASE_PY=python3
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/weightinit-wheel-check.XXXXXX")"
cleanup() {
    if [ -n "${WHEEL_CHECK_KEEP:-}" ]; then
        echo "wheel check: kept $TMP" >&2
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT

LOG="$TMP/step.log"
FAILED=()
TIMES=""
fail() {
    echo "wheel check FAILED: $*" >&2
    exit 1
}
# check KEY STEP CMD...: run CMD with its output in $LOG; on failure show the log's tail, record
# STEP as failed and return 1. KEY names the step's time in the summary.
check() {
    local key="$1" step="$2" t0=$SECONDS
    shift 2
    if ! "$@" >"$LOG" 2>&1; then
        # Its output: from the last Python traceback on, else the last 40 lines (pip's noise about
        # index locations left out).
        grep -v "is ignored: it is neither a file nor a directory" "$LOG" >"$LOG.shown" || true
        echo "---- wheel check: step '$step' failed; its output (end) ----" >&2
        if grep -q '^Traceback' "$LOG.shown"; then
            awk '/^Traceback/ { n = 0 } { line[n++] = $0 } END { for (i = 0; i < n; i++) print line[i] }' \
                "$LOG.shown" >&2
        else
            tail -n 40 "$LOG.shown" >&2
        fi
        echo "----" >&2
        FAILED+=("$step")
        return 1
    fi
    TIMES="$TIMES $key $((SECONDS - t0))s"
}
# run KEY STEP CMD...: the same, but a failure stops the whole check at once.
run() {
    check "$@" || fail "$2"
}

# The torch pin (the CPU build) from requirements-dev.txt; installed first, and a constraint when
# the wheel is installed, so that its `torch>=2.1` never pulls the multi-GB CUDA build.
TORCH_PIN="$(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$REPO/requirements-dev.txt" \
    | grep -E '^torch==' | head -n 1 || true)"
[ -n "$TORCH_PIN" ] || fail "no 'torch==VERSION' line in requirements-dev.txt"
echo "$TORCH_PIN" >"$TMP/constraints.txt"

# 1. Build the wheel from a clean copy, so stale build/ or egg-info files in the checkout can not
#    leak into (or hide something missing from) the wheel.
SRC="$TMP/src"
mkdir -p "$SRC" "$TMP/dist"
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done \
        | xargs -0 cp --parents -t "$SRC")
else
    (cd "$REPO" && tar --exclude=./.git --exclude=./.venv --exclude='./.venv-*' \
        --exclude=./build --exclude=./dist --exclude='*.egg-info' --exclude=__pycache__ \
        --exclude=./out -cf - .) | (cd "$SRC" && tar -xf -)
fi
run build "build the wheel" "$BASE_PY" -m pip wheel --no-deps --disable-pip-version-check \
    -w "$TMP/dist" "$SRC"
WHEELS=("$TMP"/dist/weightinit-*.whl)
[ -f "${WHEELS[0]}" ] || fail "pip wheel made no weightinit-*.whl in $TMP/dist"
WHEEL="${WHEELS[0]}"

# 2. An empty venv: the torch pin first, then the wheel and its declared dependencies.
VENV="$TMP/venv"
VPY="$VENV/bin/python"
run venv "create an empty venv" "$BASE_PY" -m venv "$VENV"
export PIP_DISABLE_PIP_VERSION_CHECK=1
run torch "install $TORCH_PIN" "$VPY" -m pip install "$TORCH_PIN"
run wheel "install the wheel" "$VPY" -m pip install -c "$TMP/constraints.txt" "$WHEEL"

# 3. Run from outside the repo, with nothing but the venv on the path.
WORK="$TMP/work"
mkdir -p "$WORK"
cd "$WORK"
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP
export PYTHONNOUSERSITE=1 PYTHONSAFEPATH=1
export WEIGHTINIT_CACHE="$TMP/cache"   # the torchvision check must not touch the user's cache

check import "import weightinit from the venv" "$VPY" - "$VENV" "$REPO" <<'PYEOF' || true
import os, sys
venv, repo = (os.path.realpath(p) for p in sys.argv[1:3])
import weightinit
where = os.path.realpath(weightinit.__file__)
if not where.startswith(venv + os.sep) or where.startswith(repo + os.sep):
    sys.exit(f"weightinit was imported from {where}, not from the venv {venv}")
print("weightinit from", where)
PYEOF

# a. The CLI's main job on the bundled example config; the checkpoint must read back.
NTENSORS="?"
if check init "weightinit init examples/configs/resnet50.py" "$VENV/bin/weightinit" init \
    "$REPO/examples/configs/resnet50.py" --out "$WORK/resnet50.safetensors" \
    --report "$WORK/r.md"; then
    for f in "$WORK/resnet50.safetensors" "$WORK/r.md"; do
        if [ ! -s "$f" ]; then
            echo "wheel check: weightinit init exited 0 but did not write $f" >&2
            FAILED+=("weightinit init writes $(basename "$f")")
        fi
    done
    if [ -s "$WORK/resnet50.safetensors" ] && check readback \
        "read back resnet50.safetensors" "$VPY" - "$WORK/resnet50.safetensors" <<'PYEOF'
import sys
from safetensors.torch import load_file
n = len(load_file(sys.argv[1]))
if n == 0:
    sys.exit(f"{sys.argv[1]} holds no tensors")
print(n, "tensors")
PYEOF
    then
        NTENSORS="$(tail -n 1 "$LOG" | cut -d' ' -f1)"
    fi
fi

# b. torchvision:// names, from the JSON table shipped in the wheel (no network: the known name
#    resolves to a file put in the cache; a misspelled one gets the did-you-mean error).
NNAMES="?"
if check torchvision "torchvision:// lookup (packaged torchvision.json)" "$VPY" - <<'PYEOF'
import sys
from pathlib import Path
from weightinit.checkpoint import resolve, torchvision_urls
from weightinit.checkpoint.sources import cached_path
from weightinit.errors import CheckpointNotFoundError

urls = torchvision_urls()
url = urls.get("resnet50", "")
if not url.startswith("https://") or not url.endswith(".pth"):
    sys.exit(f"torchvision_urls()['resnet50'] is {url!r}, expected an https://....pth URL")
cached = cached_path(url)
cached.parent.mkdir(parents=True, exist_ok=True)
cached.write_bytes(b"")
got = resolve("torchvision://resnet50")
if Path(got) != cached:
    sys.exit(f"torchvision://resnet50 resolved to {got!r}, expected the cached {str(cached)!r}")
try:
    resolve("torchvision://resnet5")
except CheckpointNotFoundError as err:
    if "Did you mean" not in str(err) or "'resnet50'" not in str(err):
        sys.exit(f"torchvision://resnet5: error without the did-you-mean hint: {err}")
else:
    sys.exit("torchvision://resnet5 (misspelled) did not raise CheckpointNotFoundError")
print(len(urls), "names")
PYEOF
then
    NNAMES="$(tail -n 1 "$LOG" | cut -d' ' -f1)"
fi

if [ "${#FAILED[@]}" -gt 0 ]; then
    fail "$(basename "$WHEEL") in an empty venv: ${#FAILED[@]} check(s) failed:" \
        "$(printf '[%s] ' "${FAILED[@]}")($((SECONDS - START)) s)"
fi
echo "wheel check OK: $(basename "$WHEEL") in an empty venv ($TORCH_PIN): weightinit init" \
    "resnet50 -> $NTENSORS tensors + report; torchvision:// table $NNAMES names;" \
    "$((SECONDS - START)) s (steps:$TIMES)"
