#!/usr/bin/env bash
# Builds the submission archive G<GROUP>HW3.zip at the top of the repository: one folder
# G<GROUP>HW3/ holding Readme.txt, the sources (Cargo.toml, Cargo.lock, src/, tests/, scripts/,
# .ci/) and the logs of the last run (logs/*.log, logs/*.json, logs/report.svg).
#
#   scripts/package.sh GROUP        (GROUP: letters and digits, e.g. 07)
# Run scripts/run_local.sh first: the logs of a run are part of the submission. If
# logs/report.svg is missing, it is made with "p2pshare report logs" (the binary is built if
# needed). Uses zip if present, else python3's zipfile, else installs zip with apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ $# -eq 1 ]] || { sed -n '2,9p' "$0" >&2; exit 2; }
group="$1"
[[ "$group" =~ ^[A-Za-z0-9]+$ ]] || { echo "package.sh: GROUP must be letters and digits, not \"$group\"" >&2; exit 2; }
name="G${group}HW3"
zipfile="$PWD/$name.zip"

shopt -s nullglob
logs=(logs/*.log)
if [[ ${#logs[@]} -eq 0 || ! -f logs/summary.json ]]; then
  echo "package.sh: no finished run in logs/ (server.log, client logs, summary.json): run scripts/run_local.sh first" >&2
  exit 1
fi
if [[ ! -f logs/report.svg ]]; then
  cargo build --release --quiet
  target/release/p2pshare report logs >/dev/null
fi

# The sources are the files git tracks (no build output, no data); outside a git checkout,
# the source folders as they are.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t files < <(git ls-files --cached --others --exclude-standard -- Readme.txt Cargo.toml Cargo.lock src tests scripts .ci)
else
  mapfile -t files < <(find Readme.txt Cargo.toml Cargo.lock src tests scripts .ci -type f 2>/dev/null)
fi
files+=(logs/*.log logs/*.json logs/report.svg)

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/$name"
for f in "${files[@]}"; do
  mkdir -p "$stage/$name/$(dirname "$f")"
  cp -p "$f" "$stage/$name/$f"
done
rm -f "$zipfile"
if ! command -v zip >/dev/null 2>&1 && ! command -v python3 >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq zip >/dev/null
fi
if command -v zip >/dev/null 2>&1; then
  (cd "$stage" && zip -q -r -X "$zipfile" "$name")
else
  (cd "$stage" && python3 - "$zipfile" "$name" <<'EOF'
import os, sys, zipfile
out, top = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for d, _, fs in sorted(os.walk(top)):
        for f in sorted(fs):
            z.write(os.path.join(d, f))
EOF
  )
fi
echo "wrote $zipfile: ${#files[@]} files ($(du -h "$zipfile" | cut -f1)), logs of the run of $(stat -c %y logs/summary.json | cut -d. -f1)"
