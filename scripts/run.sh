#!/usr/bin/env bash
# Set up a virtual environment in .venv (if needed) and run a job in it.
#   make demo   (bash scripts/run.sh example)   weightinit init the bundled ResNet-50: print the report,
#                                               write out/resnet50.safetensors and out/resnet50-report.md
#   make test   (bash scripts/run.sh test)      lint, build the API reference (mkdocs --strict),
#                                               run the whole test suite, again with numpy 1.x
#                                               in .venv-numpy1 and on the oldest Python and torch in
#                                               .venv-oldest (MATRIX=0 skips both), the real
#                                               OpenMMLab models in .venv-openmmlab (numpy 1.x;
#                                               tests/openmmlab; OPENMMLAB=0 skips it), the real
#                                               MMCV 1.x models in .venv-mmcv1 (numpy 1.x;
#                                               tests/mmcv1; MMCV1=0 skips it),
#                                               torchtitan's Llama 3 under its tensor parallelism
#                                               and FSDP2 on 4 gloo ranks in .venv-torchtitan
#                                               (tests/torchtitan; TORCHTITAN=0 skips it), then
#                                               build the wheel and check it in an empty venv
#                                               (scripts/wheel_check.sh; WHEEL_CHECK=0 skips it)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
PY="$VENV/bin/python"

# setup_venv DIR REQS [NODEPS_REQS [FLAGS]]: make the venv DIR (if needed) and install REQS
# into it, then NODEPS_REQS without their dependencies (and with FLAGS), then weightinit itself
# (editable). Skipped while DIR/.installed is newer than every requirements file and
# pyproject.toml.
setup_venv() {
    local dir="$1" reqs="$2" nodeps="${3:-}" flags="${4:-}" stamp="$1/.installed" stale=0 f
    if [ ! -x "$dir/bin/python" ]; then
        "${VENV_PYTHON:-python3}" -m venv "$dir"
    fi
    for f in $reqs $nodeps requirements-dev.txt pyproject.toml; do
        if [ ! -f "$stamp" ] || [ "$f" -nt "$stamp" ]; then stale=1; fi
    done
    if [ "$stale" = 1 ]; then
        "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -r "$reqs"
        if [ -n "$nodeps" ]; then
            # shellcheck disable=SC2086
            "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
                $flags -r "$nodeps"
        fi
        "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e .
        touch "$stamp"
    fi
}

setup() {
    setup_venv "$VENV" requirements-dev.txt
}

# The support matrix (README, "Supported versions"): besides .venv (the pinned CPU torch with
# numpy 2), the main suite runs in .venv-numpy1 (the same torch with numpy 1.x, as OpenMMLab
# installs pin it) and in .venv-oldest (the oldest Python and torch declared, numpy 1.x), and the
# OpenMMLab suite in .venv-openmmlab (numpy 1.x too): real
# MMPretrain/MMDetection/MMSegmentation models initialized through weightinit.mmengine and
# compared with MMEngine (tests/openmmlab/). The OpenMMLab packages go in without their
# dependencies (requirements-openmmlab-nodeps.txt explains why). The torchtitan suite runs in
# .venv-torchtitan: torchtitan's Llama 3 debugmodel laid out by its own parallelize function,
# initialized by its init_weights through weightinit.run on 4 gloo ranks and compared with
# one process (tests/torchtitan/).
# The oldest Python declared (pyproject.toml: requires-python >= 3.10), for .venv-oldest:
# python3.10 on the PATH, else pyenv's 3.10; without either, python3 (said on stderr).
oldest_python() {
    local found
    found="$(command -v python3.10 2>/dev/null || true)"
    if [ -n "$found" ] && "$found" -V >/dev/null 2>&1; then echo "$found"; return; fi
    if command -v pyenv >/dev/null 2>&1; then
        for found in "$(pyenv root)"/versions/3.10*/bin/python3.10; do
            if [ -x "$found" ]; then echo "$found"; return; fi
        done
    fi
    echo "matrix: no Python 3.10 here; .venv-oldest uses $(python3 -V 2>&1)" >&2
    echo python3
}

MMVENV=.venv-openmmlab
MMPY="$MMVENV/bin/python"
NP1VENV=.venv-numpy1
OLDVENV=.venv-oldest
TTVENV=.venv-torchtitan
MMCV1VENV=.venv-mmcv1

# Build the API reference (mkdocs.yml) into a temp dir, offline; any warning fails it.
build_docs() {
    local site rc=0
    site="$(mktemp -d "${TMPDIR:-/tmp}/weightinit-site.XXXXXX")"
    "$PY" -m mkdocs build --strict --site-dir "$site" || rc=$?
    rm -rf "$site"
    return "$rc"
}

case "${1:-}" in
    example)
        setup
        shift
        "$VENV/bin/weightinit" init examples/configs/resnet50.py \
            --out out/resnet50.safetensors --report out/resnet50-report.md "$@"
        ;;
    test)
        setup
        shift
        "$PY" -m ruff check src tests benchmarks examples
        echo "docs: mkdocs build --strict (API reference from the docstrings, warnings are errors)"
        build_docs
        "$PY" -m pytest "$@"
        if [ "${MATRIX:-1}" != 0 ]; then
            echo "matrix: the main suite with numpy 1.x (.venv-numpy1)"
            setup_venv "$NP1VENV" requirements-numpy1.txt
            "$NP1VENV/bin/python" -m pytest -p no:cacheprovider -q "$@"
            echo "matrix: the main suite on the oldest Python and torch declared, numpy 1.x (.venv-oldest)"
            VENV_PYTHON="$(oldest_python)" setup_venv "$OLDVENV" requirements-oldest.txt
            "$OLDVENV/bin/python" -c 'import sys, torch, numpy; print("  python", sys.version.split()[0], "torch", torch.__version__, "numpy", numpy.__version__)'
            "$OLDVENV/bin/python" -m pytest -p no:cacheprovider -q "$@"
        fi
        if [ "${OPENMMLAB:-1}" != 0 ]; then
            echo "openmmlab: real OpenMMLab models through weightinit.mmengine, numpy 1.x (.venv-openmmlab)"
            setup_venv "$MMVENV" requirements-openmmlab.txt requirements-openmmlab-nodeps.txt
            "$MMPY" -m pytest tests/openmmlab -p no:cacheprovider
        fi
        if [ "${MMCV1:-1}" != 0 ]; then
            echo "mmcv1: real MMCV 1.x models (mmdet 2.x, mmcls 0.x, mmseg 0.x) through weightinit.mmcv, numpy 1.x (.venv-mmcv1)"
            # mmcv 1.7 is an sdist: built as pure Python (no compiled ops) against the venv's own
            # torch and setuptools (pinned in requirements-mmcv1.txt: its setup.py imports
            # pkg_resources); the flag and variable leave the wheels of that list alone
            MMCV_WITH_OPS=0 setup_venv "$MMCV1VENV" requirements-mmcv1.txt \
                requirements-mmcv1-nodeps.txt --no-build-isolation
            "$MMCV1VENV/bin/python" -m pytest tests/mmcv1 -p no:cacheprovider
        fi
        if [ "${TORCHTITAN:-1}" != 0 ]; then
            echo "torchtitan: torchtitan's Llama 3 under its TP and FSDP2 on 4 gloo ranks (.venv-torchtitan)"
            setup_venv "$TTVENV" requirements-torchtitan.txt
            "$TTVENV/bin/python" -c 'import torch, torchtitan.models.llama3; from importlib.metadata import version; print("  torch", torch.__version__, "torchtitan", version("torchtitan"))'
            "$TTVENV/bin/python" -m pytest tests/torchtitan -p no:cacheprovider
        fi
        if [ "${WHEEL_CHECK:-1}" != 0 ]; then
            PYTHON="$PWD/$PY" bash scripts/wheel_check.sh
        fi
        ;;
    *)
        echo "usage: bash scripts/run.sh {example|test} [args...]" >&2
        exit 2
        ;;
esac
