#!/usr/bin/env bash
# Install everything prunekit needs on a fresh Debian machine into ./.venv.
# torch/torchvision are pinned here (not in pyproject) because these releases install from
# local disk on the project machines, while any other release is a multi-GB download.
set -euo pipefail
cd "$(dirname "$0")"
# Debian packages: the Fashion-MNIST files; chromium (the HTML report is checked in a real
# headless browser by the tests); espeak-ng (spoken keywords for the speech example) and fortunes
# (an offline English text corpus for the small language model).
need=()
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
[ -d /usr/share/games/fortunes ] || need+=(fortunes)
if command -v apt-get >/dev/null 2>&1 && [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q -e ".[dev,vision,nlp,bench,integrations]"
echo "prunekit installed in .venv"
