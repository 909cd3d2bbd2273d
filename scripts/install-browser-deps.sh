#!/usr/bin/env bash
# Install what the browser end-to-end tests (tests/e2e/browser) need:
#   - Debian's Chromium at /usr/bin/chromium (Playwright drives it via executable_path;
#     `playwright install` is never run: it downloads a browser build and cannot work here)
#   - the pinned npm packages of tests/e2e/browser (analytics.js = @segment/analytics-next),
#     served to the page from node_modules, never from a CDN.
# Idempotent and quiet; run as root. CI runs this before pytest: with CI=true the browser tests
# fail (rather than skip) when Chromium, node_modules or the playwright package is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BROWSER_DIR="$ROOT/tests/e2e/browser"

if [ ! -x /usr/bin/chromium ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi

if ! command -v npm >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq nodejs npm >/dev/null
fi

cd "$BROWSER_DIR"
marker="node_modules/.chorus-lock.sha256"
want=""
if [ -f package-lock.json ]; then
  want="$(sha256sum package.json package-lock.json | sha256sum | cut -d' ' -f1)"
fi
if [ -n "$want" ] && [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ]; then
  exit 0  # node_modules already matches the lock file
fi
if [ -f package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
else
  npm install --no-audit --no-fund --loglevel=error --omit-lockfile-registry-resolved >/dev/null
  want="$(sha256sum package.json package-lock.json | sha256sum | cut -d' ' -f1)"
fi
echo "$want" > "$marker"
