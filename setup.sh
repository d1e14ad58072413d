#!/usr/bin/env bash
# Set up a fresh machine for soupflow: the Fashion-MNIST files (Debian package, where apt is available),
# a virtual environment in .venv with the pinned torch and the project installed editable.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
    || echo "soupflow setup: could not install dataset-fashion-mnist; point data.root at Fashion-MNIST's IDX files" >&2
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# torch is pinned to the release on soupflow's machines' disks; a newer pin would download several GB.
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[test]"
echo "soupflow setup: done (.venv)"
