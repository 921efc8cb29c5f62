#!/usr/bin/env bash
# One command from a fresh Debian machine to the full test run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
.venv/bin/ruff check encfs_photo tests
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
