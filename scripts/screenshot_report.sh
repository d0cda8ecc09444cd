#!/usr/bin/env bash
# Render a score run's report.html in a real headless browser and save a PNG screenshot.
#
#   scripts/screenshot_report.sh data/scores/synth_tt/fuseguard/report.html [out.png] [width] [height]
#
# Needs Chromium (Debian: `apt-get install chromium`; or set CHROMIUM=/path/to/chrome); extra browser
# flags in CHROMIUM_FLAGS (e.g. "--enable-logging=stderr --v=0" prints the page's console). The page is
# self-contained (inline SVG and CSS, no script, no network), so the browser runs with networking
# off; a blank or broken screenshot means the page itself is wrong. Tests check the page's structure
# without a browser (tests/test_score.py::test_report_page_structure) and, where Chromium is found,
# this script's screenshot (test_report_renders_in_a_real_browser).
set -euo pipefail
report="${1:?usage: $0 REPORT.html [OUT.png] [WIDTH] [HEIGHT]}"
out="${2:-${report%.html}.png}"
width="${3:-1200}"
height="${4:-1800}"
browser="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}"
if [ -z "$browser" ]; then
  echo "error: Chromium not found (apt-get install chromium, or set CHROMIUM=/path/to/chromium)" >&2
  exit 2
fi
abs="$(cd "$(dirname "$report")" && pwd)/$(basename "$report")"
read -r -a extra <<< "${CHROMIUM_FLAGS:-}"
"$browser" --headless --disable-gpu --no-sandbox --hide-scrollbars ${extra[@]+"${extra[@]}"} \
  --proxy-server="127.0.0.1:9" --proxy-bypass-list="<-loopback>" \
  --window-size="${width},${height}" --screenshot="$out" "file://${abs}"
echo "screenshot: $out"
