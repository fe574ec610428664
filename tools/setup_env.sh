#!/usr/bin/env bash
# Create ./.venv once and (re)install when the requirements or the Paddle choice changed.
# Used by run_demo.sh and run_tests.sh, so a fresh machine needs no manual step.
# Installs this repository too (`pip install -e .`: import paddlevit / engine from anywhere).
#
# Paddle is not in requirements.txt because its package depends on the machine:
#   PADDLE_PACKAGE    the pip requirement for Paddle; default: the CPU wheel from PyPI,
#                     "paddlepaddle>=3.0.0,<3.4" (the versions the test suite passed on)
#   PADDLE_INDEX_URL  an extra package index to look in; Paddle 3.x GPU wheels are not on
#                     PyPI but on Paddle's own index, one per CUDA version:
#                     https://www.paddlepaddle.org.cn/packages/stable/cu118/ (or cu126, ...)
# GPU machine with CUDA 12.6, for example:
#   PADDLE_PACKAGE='paddlepaddle-gpu>=3.0.0,<3.4' \
#   PADDLE_INDEX_URL=https://www.paddlepaddle.org.cn/packages/stable/cu126/ bash run_tests.sh
# The choice is kept in .venv/.paddle: later runs without the variables keep that Paddle.
# The CPU and the GPU wheel install the same `paddle` module, so switching one for the
# other uninstalls the first.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PADDLE_PACKAGE:-}" ] && [ -f .venv/.paddle ]; then
    { IFS= read -r PADDLE_PACKAGE; IFS= read -r PADDLE_INDEX_URL || true; } < .venv/.paddle
fi
PADDLE_PACKAGE=${PADDLE_PACKAGE:-'paddlepaddle>=3.0.0,<3.4'}
PADDLE_INDEX_URL=${PADDLE_INDEX_URL:-}

# the distribution name of PADDLE_PACKAGE: a requirement ("paddlepaddle-gpu==3.0.0") or a wheel file
paddle_name() {
    local spec=$1
    case "$spec" in
        *.whl) spec=$(basename "$spec"); spec=${spec%%-*} ;;
    esac
    printf '%s' "$spec" | sed -E 's/^[[:space:]]*([A-Za-z0-9._-]*[A-Za-z0-9]).*/\1/' | tr 'A-Z_.' 'a-z__' | tr '_' '-'
}

if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
want=$({ cat requirements.txt requirements-dev.txt requirements-onnx.txt pyproject.toml; echo "paddle: $PADDLE_PACKAGE $PADDLE_INDEX_URL"; } \
       | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.requirements.sha 2>/dev/null)" != "$want" ]; then
    pip=(.venv/bin/python -m pip)
    "${pip[@]}" install -q --upgrade pip
    name=$(paddle_name "$PADDLE_PACKAGE")
    for other in paddlepaddle paddlepaddle-gpu; do
        if [ "$other" != "$name" ] && "${pip[@]}" show "$other" >/dev/null 2>&1; then
            echo "setup_env: $PADDLE_PACKAGE asked for: uninstalling $other (same paddle module)"
            "${pip[@]}" uninstall -q -y "$other"
        fi
    done
    "${pip[@]}" install -q "$PADDLE_PACKAGE" ${PADDLE_INDEX_URL:+--extra-index-url "$PADDLE_INDEX_URL"}
    "${pip[@]}" install -q -r requirements-dev.txt
    # this repository as the package `paddlevit` (+ `engine`, `port_weights`), editable: the
    # family scripts, tools and tests import it from ./.venv instead of editing sys.path
    "${pip[@]}" install -q --no-deps -e .
    printf '%s\n%s\n' "$PADDLE_PACKAGE" "$PADDLE_INDEX_URL" > .venv/.paddle
    echo "$want" > .venv/.requirements.sha
fi
