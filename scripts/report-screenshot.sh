#!/usr/bin/env bash
# Screenshot of an HTML report (swapctl simulate's) in headless Chromium, to look at or attach.
# Usage: scripts/report-screenshot.sh REPORT.html [OUT.png]   (OUT defaults to REPORT.png)
# Installs Debian's chromium when it is missing; nothing else of the project needs it.
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 REPORT.html [OUT.png]" >&2
    exit 2
fi
html=$1
out=${2:-${html%.html}.png}
if [ ! -f "$html" ]; then
    echo "report-screenshot: no such file: $html" >&2
    exit 2
fi
html=$(realpath "$html")
out=$(realpath -m "$out")
width=${REPORT_SCREENSHOT_WIDTH:-1280}
height=${REPORT_SCREENSHOT_HEIGHT:-3000}

# Debian's chromium (no browser download: the package registry has it).
if ! command -v chromium >/dev/null 2>&1; then
    echo "report-screenshot: installing Debian package: chromium" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    install_chromium() { DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >&2; }
    # Update the package lists only when the install fails without it.
    install_chromium || { $sudo apt-get update -qq && install_chromium; }
fi

# A throwaway profile; no background networking (this machine has no network to offer it).
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
log="$profile/chromium.log"
rm -f "$out"  # so that a stale file cannot pass for this run's
if ! chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --no-first-run --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --window-size="$width,$height" \
    --screenshot="$out" "file://$html" >"$log" 2>&1 || [ ! -s "$out" ]; then
    tail -n 20 "$log" >&2
    echo "report-screenshot: chromium failed" >&2
    exit 1
fi
echo "$out"
