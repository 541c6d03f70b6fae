#!/usr/bin/env bash
# Debian `chromium` for the web-UI browser test (tests/frontends/ui/test_ui_browser.py, driven by Playwright with
# executable_path=/usr/bin/chromium). Never downloads a browser build: no `playwright install`.
# Idempotent; skipped (the test then skips) when not root or apt-get is absent.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "setup-browser: chromium missing (needs root + apt-get); the browser test will skip" >&2
  exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
