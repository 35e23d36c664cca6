#!/usr/bin/env bash
# The project's test command (README and .ci/run both call exactly this): lint and type checks of the
# protocol core, then the whole pytest suite, real network-namespace tests included (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check vpncloud tests
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
