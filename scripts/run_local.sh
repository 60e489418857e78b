#!/usr/bin/env bash
# The main job: a server and N clients on 127.0.0.1, each client sharing one file, until every
# client holds every file. Builds the release binary, creates the source files if missing,
# prints the summary, checks every output against its source's MD5; exits 0 only if all match.
#
#   scripts/run_local.sh [--clients N (4)] [--size-mb M (500)] [--work DIR (data)] [--port P (8888)]
#                        [--chunk-size BYTES (262144)] [--links FILE] [--bin PATH] [--wrap1 CMD]
# --links FILE: link rates per client (NAME UP DOWN), so the summary states T_lb.
# --bin PATH: run this binary instead of building target/release/p2pshare.
# --wrap1 CMD: start client 1 under CMD (split on spaces), e.g. "perf record -g --".
set -euo pipefail
cd "$(dirname "$0")/.."

clients=4 size_mb=500 work=data port=8888 chunk=262144 links=() bin="" wrap1=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --clients) clients="$2"; shift 2 ;;
    --size-mb) size_mb="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --chunk-size) chunk="$2"; shift 2 ;;
    --links) links=(--links "$(realpath "$2")"); shift 2 ;;
    --bin) bin="$(realpath "$2")"; shift 2 ;;
    --wrap1) wrap1="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "run_local.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ "$clients" =~ ^[0-9]+$ && "$clients" -ge 1 ]] || { echo "run_local.sh: --clients must be a positive number" >&2; exit 2; }
[[ "$size_mb" =~ ^[0-9]+$ ]] || { echo "run_local.sh: --size-mb must be a number" >&2; exit 2; }

if [[ -z "$bin" ]]; then
  cargo build --release --quiet
  bin="$PWD/target/release/p2pshare"
fi
mkdir -p "$work/src" logs
logs="$PWD/logs"
rm -f "$logs"/*.log "$logs/summary.json" "$logs/report.svg"

for i in $(seq 1 "$clients"); do
  f="$work/src/file$i.bin"
  want=$((size_mb * 1048576))
  if [[ ! -f "$f" || $(stat -c %s "$f") -ne $want ]]; then
    echo "creating $f ($size_mb MiB)"
    "$bin" gen --size "${size_mb}M" --seed "$i" "$f"
  fi
done
rm -rf "$work/out"

# A fresh token for this run's nodes, in the environment (argv would show it in ps): only the
# clients started here can join the server, and only they can pull chunks from each other.
export P2PSHARE_TOKEN
P2PSHARE_TOKEN=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

"$bin" server --listen "127.0.0.1:$port" --clients "$clients" --chunk-size "$chunk" --log-dir "$logs" "${links[@]}" &
server_pid=$!
pids+=("$server_pid")
for i in $(seq 1 "$clients"); do
  wrap=()
  [[ $i -eq 1 && -n "$wrap1" ]] && read -r -a wrap <<< "$wrap1"
  "${wrap[@]}" "$bin" client --server "127.0.0.1:$port" --listen 127.0.0.1:0 --name "client$i" \
    --file "$work/src/file$i.bin" --out-dir "$work/out/client$i" --log-dir "$logs" &
  pids+=("$!")
done

status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
trap - EXIT

echo "verifying outputs..."
declare -A sum
for i in $(seq 1 "$clients"); do sum[file$i.bin]=$(md5sum < "$work/src/file$i.bin" | cut -d' ' -f1); done
bad=0
for i in $(seq 1 "$clients"); do
  for j in $(seq 1 "$clients"); do
    [[ $i -eq $j ]] && continue
    out="$work/out/client$i/file$j.bin"
    if [[ ! -f "$out" ]]; then echo "MISSING $out"; bad=1; continue; fi
    got=$(md5sum < "$out" | cut -d' ' -f1)
    if [[ "$got" != "${sum[file$j.bin]}" ]]; then echo "CORRUPT $out"; bad=1; fi
  done
done
if [[ $status -ne 0 || $bad -ne 0 ]]; then
  echo "FAILED: some node exited non-zero or an output is missing or corrupt (logs in $logs)"
  exit 1
fi
echo "OK: all $clients clients hold all $clients files, every MD5 matches (summary: $logs/summary.json)"
echo "where the time went: $bin report $logs   (writes $logs/report.svg)"
