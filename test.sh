#!/usr/bin/env bash
# The whole test suite: lint, format check, then every test (unit + slow), from the repo root.
set -euo pipefail
cd "$(dirname "$0")"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
