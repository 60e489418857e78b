#!/usr/bin/env bash
# Profiles one node of the reference scenario: scripts/run_local.sh (server + N clients on
# 127.0.0.1) with client 1 under `perf record -e cpu-clock -g`, built with the `profiling` cargo
# profile (release code, debug symbols, frame pointers for the call graphs). Then prints the
# symbols where client 1 spent its CPU time (self time, highest first).
#
#   scripts/profile.sh [--size-mb M (500)] [--clients N (4)] [--work DIR (data)] [--port P (8897)]
#                      [--top K (25)] [--out FILE (WORK/perf.data)]
# Afterwards: perf report -i FILE  (interactive), or add --children for inclusive times.
# cpu-clock is a software event: it works in VMs without hardware counters.
set -euo pipefail
cd "$(dirname "$0")/.."

size_mb=500 clients=4 work=data port=8897 top=25 out=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --size-mb) size_mb="$2"; shift 2 ;;
    --clients) clients="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --top) top="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "profile.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ "$top" =~ ^[0-9]+$ ]] || { echo "profile.sh: --top must be a number" >&2; exit 2; }
mkdir -p "$work"
out="$(realpath -m "${out:-$work/perf.data}")"

if ! command -v perf >/dev/null 2>&1; then
  echo "perf is missing: installing it (linux-perf, or linux-tools on Ubuntu)"
  apt-get update -qq
  apt-get install -y -qq linux-perf >/dev/null 2>&1 \
    || apt-get install -y -qq "linux-tools-$(uname -r)" linux-tools-common >/dev/null
fi

# Frame pointers cannot be set in a cargo profile on stable Rust, so they come from RUSTFLAGS;
# the profiling profile has its own target directory, so release builds are not disturbed.
RUSTFLAGS="-C force-frame-pointers=yes" cargo build --profile profiling --quiet
bin="$PWD/target/profiling/p2pshare"

scripts/run_local.sh --bin "$bin" --clients "$clients" --size-mb "$size_mb" --work "$work" \
  --port "$port" --wrap1 "perf record -e cpu-clock -F 999 -g -q -o $out --"

echo
echo "client 1: where its CPU time went (self time, top $top symbols; perf data: $out)"
perf report -i "$out" --stdio --no-children -g none --sort symbol --percent-limit 0.3 2>/dev/null \
  | grep -E '^ +[0-9.]+%' | sed -E 's/[[:space:]-]+$//' | head -n "$top"
echo
echo "by shared object:"
perf report -i "$out" --stdio --no-children -g none --sort dso 2>/dev/null | grep -E '^ +[0-9.]+%' | head -n 8
