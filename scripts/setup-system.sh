#!/usr/bin/env bash
# System (Debian) packages the test suite needs. Idempotent; each part skips cleanly when not root.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bash "$here/setup-data.sh"
if [ -f "$here/setup-browser.sh" ]; then bash "$here/setup-browser.sh"; fi
