#!/usr/bin/env bash
# Set up a virtual environment in .venv (if needed) and run a job in it.
#   make demo   (bash scripts/run.sh example)   weightinit init the bundled ResNet-50: print the report,
#                                               write out/resnet50.safetensors and out/resnet50-report.md
#   make test   (bash scripts/run.sh test)      lint, build the API reference (mkdocs --strict),
#                                               run the whole test suite, then build the
#                                               wheel and check it in an empty venv
#                                               (scripts/wheel_check.sh; WHEEL_CHECK=0 skips it),
#                                               and the real OpenMMLab models in .venv-openmmlab
#                                               (tests/openmmlab; OPENMMLAB=0 skips it)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
PY="$VENV/bin/python"

setup() {
    if [ ! -x "$PY" ]; then
        python3 -m venv "$VENV"
    fi
    local stamp="$VENV/.installed"
    if [ ! -f "$stamp" ] || [ requirements-dev.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        "$PY" -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
        "$PY" -m pip install --quiet --disable-pip-version-check --no-deps -e .
        touch "$stamp"
    fi
}

# The OpenMMLab environment (.venv-openmmlab): real MMPretrain/MMDetection/MMSegmentation models
# initialized through weightinit.mmengine and compared with MMEngine (tests/openmmlab/). The
# packages go in without their dependencies (requirements-openmmlab-nodeps.txt explains why).
MMVENV=.venv-openmmlab
MMPY="$MMVENV/bin/python"

setup_openmmlab() {
    if [ ! -x "$MMPY" ]; then
        python3 -m venv "$MMVENV"
    fi
    local stamp="$MMVENV/.installed"
    if [ ! -f "$stamp" ] || [ requirements-openmmlab.txt -nt "$stamp" ] \
            || [ requirements-openmmlab-nodeps.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        "$MMPY" -m pip install --quiet --disable-pip-version-check -r requirements-openmmlab.txt
        "$MMPY" -m pip install --quiet --disable-pip-version-check --no-deps \
            -r requirements-openmmlab-nodeps.txt
        "$MMPY" -m pip install --quiet --disable-pip-version-check --no-deps -e .
        touch "$stamp"
    fi
}

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
        if [ "${OPENMMLAB:-1}" != 0 ]; then
            echo "openmmlab: real OpenMMLab models through weightinit.mmengine (.venv-openmmlab)"
            setup_openmmlab
            "$MMPY" -m pytest tests/openmmlab -p no:cacheprovider
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
