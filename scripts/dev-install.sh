#!/usr/bin/env bash
# Rebuild (incrementally, build/ is kept) and reinstall edgellm into the current Python.
# Serialised with a lock so that several shells can call it at once.
set -euo pipefail
cd "$(dirname "$0")/.."
exec flock /tmp/edgellm-dev-install.lock pip install --no-build-isolation --no-deps -q . 2>&1 | grep -v "Running pip as the 'root'" || true
