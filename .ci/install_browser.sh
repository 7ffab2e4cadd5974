#!/usr/bin/env bash
# Install headless Chromium and its matching chromedriver from Debian packages for tests/test_browser.py.
# Idempotent: does nothing (and reaches no network) when both are already installed.
set -euo pipefail
source "$(dirname "$0")/apt.sh"

if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    echo "install_browser: chromium and chromedriver already installed"
    exit 0
fi

# fonts-liberation (a Recommends of chromium) gives the headless page real fonts for screenshots.
apt_install install_browser chromium chromium-driver fonts-liberation
/usr/bin/chromium --version
/usr/bin/chromedriver --version
