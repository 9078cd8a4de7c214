#!/usr/bin/env bash
# Render a ledger's HTML report and take a PNG screenshot of it with headless Chromium, to check
# the page and its charts by eye (or attach the picture to a review).
#
# Usage: docs/report-screenshot.sh LEDGER [OUT.png [REPORT FLAGS...]]
#   e.g. docs/report-screenshot.sh usage.sqlite report.png --by tenant --since 2024-05-01
# Environment: PYTHON (default python3, with wattserve installed), CHROMIUM (browser binary),
#              KEEP_HTML=path to also keep the generated page.
# Chromium is not a wattserve dependency: on Debian/Ubuntu, `apt-get install -y chromium`.
set -euo pipefail

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
ledger=$1
out=$(realpath -m "${2:-report.png}")
shift $(($# >= 2 ? 2 : 1))
python=${PYTHON:-python3}
browser=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}
if [[ -z $browser ]]; then
    echo "report-screenshot: no Chromium found; install it (apt-get install -y chromium) or set CHROMIUM" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
html=$work/report.html

# The report's own entry point, so this works whether or not `wattserve report` is on PATH.
"$python" - --ledger "$ledger" --format html --output "$html" "$@" <<'PY'
import argparse
import sys

from wattserve.metering.report import add_report_arguments, run_report

parser = argparse.ArgumentParser(prog="wattserve report")
add_report_arguments(parser)
sys.exit(run_report(parser.parse_args(sys.argv[1:])))
PY

# No network, no GPU, a throwaway profile: the page is self-contained and nothing may be fetched.
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --no-first-run --disable-sync --hide-scrollbars \
    --user-data-dir="$work/profile" --window-size=1280,2400 --screenshot="$out" \
    "file://$html" >"$work/chromium.log" 2>&1 || {
    cat "$work/chromium.log" >&2
    exit 1
}
[[ -s $out ]] || { cat "$work/chromium.log" >&2; echo "report-screenshot: no PNG written" >&2; exit 1; }
if [[ -n ${KEEP_HTML:-} ]]; then cp "$html" "$KEEP_HTML"; fi
echo "$out"
