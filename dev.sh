#!/usr/bin/env bash
# One entry point that sets everything up, then runs ddplug or its tests.
#   ./dev.sh run [ddplug args]   set up, then `ddplug ARGS` (default: the main job, `distill`)
#   ./dev.sh test [pytest args]  set up, then the test suite
# Set-up is idempotent: a virtual environment in .venv/, the project installed into it
# (re-installed only when pyproject.toml changes), and Fashion-MNIST where ddplug finds it.
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
STAMP=$VENV/.ddplug-install-stamp

find_python() {
    for candidate in python3.11 python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    echo "dev.sh: needs Python 3.11 or newer (python3.11 or python3 on PATH)" >&2
    exit 1
}

setup_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        echo "dev.sh: creating $VENV" >&2
        "$(find_python)" -m venv "$VENV"
    fi
    local want
    want=$(cat pyproject.toml dev.sh | sha256sum | cut -d' ' -f1)
    if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
        echo "dev.sh: installing ddplug and its dependencies into $VENV (first time: a few minutes)" >&2
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        "$VENV/bin/python" -m pip install --quiet -e ".[avalanche,flower,test,docs]"
        echo "$want" >"$STAMP"
    fi
}

fashion_mnist_present() {
    "$VENV/bin/python" -c 'from ddplug.data import load_dataset; load_dataset("fashion-mnist")' >/dev/null 2>&1
}

fetch_fashion_mnist() {
    fashion_mnist_present && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "dev.sh: installing Debian's dataset-fashion-mnist" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 ||
            { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; } || true
    fi
    fashion_mnist_present && return 0
    echo "dev.sh: downloading Fashion-MNIST with torchvision" >&2
    "$VENV/bin/ddplug" download fashion-mnist
}

command=${1:-run}
shift || true
case "$command" in
run)
    setup_venv
    fetch_fashion_mnist
    if [ $# -eq 0 ]; then set -- distill; fi
    exec "$VENV/bin/ddplug" "$@"
    ;;
test)
    setup_venv
    # The suite writes its own small data; the real set only enables a few extra checks.
    fetch_fashion_mnist || echo "dev.sh: Fashion-MNIST unavailable; tests that need it will skip" >&2
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
*)
    echo "usage: ./dev.sh run [ddplug args] | ./dev.sh test [pytest args]" >&2
    exit 2
    ;;
esac
