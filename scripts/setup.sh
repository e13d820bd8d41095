#!/usr/bin/env bash
# Idempotent set-up for `make`: .venv with the CPU torch first (so nothing can pull a
# CUDA build), then this package, then the Debian speech tools the data pipeline uses.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    echo "setup: installing torch==$TORCH_VERSION"
    "${PIP[@]}" install -q "torch==$TORCH_VERSION"
fi

stamp="$VENV/.kws-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing kws-edge and its dependencies"
    "${PIP[@]}" install -q -e ".[dev]"
    touch "$stamp"
fi

# Debian packages: espeak-ng and flite synthesise the training speech, sox is used for checks,
# wamerican is the word list of the phrase negatives when the [vocab] extra is not installed.
missing=()
for tool in espeak-ng flite sox; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ -f /usr/share/dict/american-english ] || missing+=(wamerican)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo"; else SUDO="none"; fi
    if [ "$SUDO" = none ]; then
        echo "setup: missing Debian packages: ${missing[*]} -- install them with: sudo apt-get install ${missing[*]}" >&2
        echo "setup: (speech synthesis and the tests that need it are unavailable until then)" >&2
    else
        echo "setup: installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
            || { $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null; } \
            || echo "setup: could not install ${missing[*]}; install them with: sudo apt-get install ${missing[*]}" >&2
    fi
fi
