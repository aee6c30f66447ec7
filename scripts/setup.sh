#!/usr/bin/env bash
# Set up a fresh machine: a .venv with torch 2.14.1 / torchvision 0.29.1 and anomalib-rgi (editable,
# with its test tools). Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch first and pinned: a looser request would make pip fetch a multi-GB build.
.venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
