#!/usr/bin/env bash
# Benchmark of the reference scenario: server + N clients x M MiB on loopback, run R times.
# Prints each run's total time (from the summary), each client's peak RSS and anonymous memory,
# and CPU seconds (user+sys of all nodes), then the medians.
#
#   scripts/bench.sh [--runs R (5)] [--clients N (4)] [--size-mb M (500)] [--work DIR (data)]
#                    [--port P (8899)] [--bin PATH (build target/release/p2pshare)] [--baseline] [--disk]
#                    [-- EXTRA CLIENT FLAGS]
# --baseline: after each run, also time a raw copy of the same bytes (scripts/raw_copy.py:
# sendfile over loopback, recv, write; no protocol, no MD5) and report the median ratio.
# --disk: after each run, also time writing the bytes the clients download (N x (N-1) x M MiB)
# with dd and fdatasync, in the same file system: the disk's floor for a run whose every file
# is made durable before it is called complete. Report the median ratio to it.
# For an A/B comparison, build each variant, copy the binaries, and alternate --bin in one session.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=5 clients=4 size_mb=500 work=data port=8899 extra=() bin="" baseline=0 disk=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --clients) clients="$2"; shift 2 ;;
    --size-mb) size_mb="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --baseline) baseline=1; shift ;;
    --disk) disk=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -x /usr/bin/time ]] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
if [[ -z "$bin" ]]; then
  cargo build --release --quiet
  bin="$PWD/target/release/p2pshare"
fi
bin="$(realpath "$bin")"
mkdir -p "$work/src" "$work/bench"
for i in $(seq 1 "$clients"); do
  f="$work/src/file$i.bin"
  if [[ ! -f "$f" || $(stat -c %s "$f") -ne $((size_mb * 1048576)) ]]; then
    "$bin" gen --size "${size_mb}M" --seed "$i" "$f"
  fi
done

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }
totals=() cpus=() rss=() anon=() raws=() disks=()
for r in $(seq 1 "$runs"); do
  out="$work/bench/run$r"
  rm -rf "$out"; mkdir -p "$out/logs"
  read -r _ u0 n0 s0 idle0 io0 _ < /proc/stat
  # A fresh token for this run's nodes, in the environment (argv would show it in ps): only the
  # clients started here can join the server, and only they can pull chunks from each other.
  export P2PSHARE_TOKEN
  P2PSHARE_TOKEN=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
  "$bin" server --listen "127.0.0.1:$port" --clients "$clients" --log-dir "$out/logs" 2>"$out/server.err" &
  spid=$!
  cpids=()
  for i in $(seq 1 "$clients"); do
    /usr/bin/env time -f "%e %U %S %M" -o "$out/time$i" "$bin" client --server "127.0.0.1:$port" --listen 127.0.0.1:0 \
      --name "client$i" --file "$work/src/file$i.bin" --out-dir "$out/client$i" --log-dir "$out/logs" "${extra[@]}" \
      2>"$out/client$i.err" &
    cpids+=("$!")
  done
  # Peak anonymous memory per client, sampled from /proc while the run lasts (pids looked up
  # once, so the sampling itself costs next to nothing).
  declare -A cpid_of=()
  peak_anon=()
  while kill -0 "$spid" 2>/dev/null; do
    for i in $(seq 1 "$clients"); do
      p=${cpid_of[$i]:-}
      if [[ -z "$p" ]]; then
        p=$(pgrep -f -- "^$bin client .*--name client$i " | head -1 || true)
        [[ -n "$p" ]] || continue
        cpid_of[$i]=$p
      fi
      a=$(awk '/^RssAnon/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
      [[ -n "$a" && "$a" -gt "${peak_anon[$i]:-0}" ]] && peak_anon[$i]=$a
    done
    sleep 0.1
  done
  fail=0
  wait "$spid" || fail=1
  for p in "${cpids[@]}"; do wait "$p" || fail=1; done
  [[ $fail -eq 0 ]] || { echo "run $r FAILED (see $out)"; exit 1; }
  read -r _ u1 n1 s1 idle1 io1 _ < /proc/stat
  busy=$(( (u1 + n1 + s1) - (u0 + n0 + s0) )); idle=$(( (idle1 + io1) - (idle0 + io0) ))
  total=$(grep -o '"total_ms": [0-9.]*' "$out/logs/summary.json" | awk '{print $2/1000}')
  cpu=0; line=""
  for i in $(seq 1 "$clients"); do
    read -r _ u s m < "$out/time$i"
    cpu=$(awk -v c="$cpu" -v u="$u" -v s="$s" 'BEGIN {print c+u+s}')
    line+=" client$i rss=$((m/1024))MiB anon=$(( ${peak_anon[$i]:-0} / 1024 ))MiB"
    rss+=("$((m/1024))"); anon+=("$(( ${peak_anon[$i]:-0} / 1024 ))")
  done
  echo "run $r: total ${total} s, client cpu ${cpu} s, machine busy $((100 * busy / (busy + idle)))%;$line"
  totals+=("$total"); cpus+=("$cpu")
  rm -rf "$out"/client*/
  if [[ $baseline -eq 1 ]]; then
    srcs=(); for i in $(seq 1 "$clients"); do srcs+=("$work/src/file$i.bin"); done
    raw=$(python3 scripts/raw_copy.py "$work/bench/raw" "${srcs[@]}" | awk '{print $3}')
    echo "run $r: raw copy ${raw} s, ratio $(awk -v a="$total" -v b="$raw" 'BEGIN {printf "%.2f", a/b}')"
    raws+=("$raw")
  fi
  if [[ $disk -eq 1 ]]; then
    # The disk's share: every client writes (N-1) files and makes them durable before it calls
    # them complete, so no run can end before the disk has written all of it. Same file system.
    mib=$(( clients * (clients - 1) * size_mb ))
    t0=$(date +%s.%N)
    dd if=/dev/zero of="$work/bench/disk.tmp" bs=1M count="$mib" conv=fdatasync status=none
    t1=$(date +%s.%N); rm -f "$work/bench/disk.tmp"
    dsec=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b-a}')
    echo "run $r: disk floor ${dsec} s (${mib} MiB written and fdatasync'd, $(awk -v m="$mib" -v s="$dsec" 'BEGIN {printf "%.0f", m*1.048576/s}') MB/s), ratio $(awk -v a="$total" -v b="$dsec" 'BEGIN {printf "%.2f", a/b}')"
    disks+=("$dsec")
  fi
done
echo "median total: $(printf '%s\n' "${totals[@]}" | median) s over $runs runs"
if [[ $baseline -eq 1 ]]; then
  mraw=$(printf '%s\n' "${raws[@]}" | median); mtot=$(printf '%s\n' "${totals[@]}" | median)
  echo "median raw copy: $mraw s; ratio of medians: $(awk -v a="$mtot" -v b="$mraw" 'BEGIN {printf "%.2f", a/b}')"
fi
if [[ $disk -eq 1 ]]; then
  mdisk=$(printf '%s\n' "${disks[@]}" | median); mtot=$(printf '%s\n' "${totals[@]}" | median)
  echo "median disk floor: $mdisk s; ratio of medians: $(awk -v a="$mtot" -v b="$mdisk" 'BEGIN {printf "%.2f", a/b}')"
fi
echo "median client cpu: $(printf '%s\n' "${cpus[@]}" | median) s"
echo "max peak rss per client: $(printf '%s\n' "${rss[@]}" | sort -n | tail -1) MiB; max peak anon: $(printf '%s\n' "${anon[@]}" | sort -n | tail -1) MiB"
