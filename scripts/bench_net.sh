#!/usr/bin/env bash
# Benchmark on emulated hosts (scripts/netem.sh): runs SCENARIO R times and prints, per run and as
# medians, the total time (total_ms of the summary), the lower bound T_lb computed from the file
# sizes and the shaped rates (../shared/SCENARIOS.md), and total / T_lb.
#
#   scripts/bench_net.sh SCENARIO [--runs R (3)] [--size-mb M (200)] [--work DIR (data)]
#                        [--bin PATH (build target/release/p2pshare)] [--port P (9100)] [--baseline]
#                        [-- EXTRA CLIENT FLAGS]
# SCENARIO (4 clients; rates in Mbit/s, up and down, client 1 first):
#   net-sym        up 1000,1000,1000,1000   down 1000 each
#   net-slow-up    up  250,1000,1000,1000   down 1000 each
#   net-slow-down  up 1000 each             down 1000,250,1000,1000
#   net-mixed      up 1000,500,250,100      down 1000 each
# --baseline: after each run, a raw copy of the same files between the same hosts through the same
# shaping (scripts/raw_copy.py: every owner sends its file to every other host with sendfile; no
# protocol, no MD5), and its ratio to T_lb.
# Also printed per run: the clients' CPU seconds, how busy the whole machine was (other users
# too), the MiB all clients received in the first second of the system clock (the start: a
# steadier sign of a change there than the total), how many times each owner uploaded its own
# file (file_uploaded in the client logs), and how busy each client's links were ("link use %":
# the bytes its shapers passed, headers included, over rate x total). In net-sym the TCP/IP
# headers, the ACKs of a client's uploads and the control frames take about 5 % of its
# downlink: a run at about 1.05 with every downlink 100 % busy is as fast as TCP allows.
# Needs root, iproute2 (installed if missing) and, for --baseline, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "bench_net.sh: $*" >&2; exit 2; }
[[ $# -ge 1 ]] || { sed -n '2,/^set /{/^#/p}' "$0"; exit 2; }
scenario=$1
shift
case "$scenario" in
  net-sym) ups=1000,1000,1000,1000 downs=1000,1000,1000,1000 ;;
  net-slow-up) ups=250,1000,1000,1000 downs=1000,1000,1000,1000 ;;
  net-slow-down) ups=1000,1000,1000,1000 downs=1000,250,1000,1000 ;;
  net-mixed) ups=1000,500,250,100 downs=1000,1000,1000,1000 ;;
  -h | --help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
  *) die "unknown scenario $scenario (net-sym, net-slow-up, net-slow-down, net-mixed)" ;;
esac
clients=4 runs=3 size_mb=200 work=data bin="" port=9100 baseline=0 extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --size-mb) size_mb="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --baseline) baseline=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument $1" ;;
  esac
done
[[ "$runs" =~ ^[0-9]+$ && "$runs" -ge 1 ]] || die "--runs must be a positive number"
[[ "$size_mb" =~ ^[0-9]+$ && "$size_mb" -ge 1 ]] || die "--size-mb must be a positive number"
size_mb=$((10#$size_mb)) # 010 is ten, not octal
[[ -x /usr/bin/time ]] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
if [[ -z "$bin" ]]; then
  cargo build --release --quiet
  bin="$PWD/target/release/p2pshare"
fi
bin="$(realpath "$bin")"
work="$(realpath -m "$work")"

# T_lb FILE_SIZES UPS DOWNS: sizes in bytes, rates in Mbit/s (10^6 bit/s, as tc counts them),
# comma-separated in client order. Prints T_lb and its three terms in seconds:
#   max_i (sum F - F_i) / d_i,   max_i F_i / u_i,   sum_i (sum F - F_i) / sum_i u_i
t_lb() {
  awk -v F="$1" -v U="$2" -v D="$3" 'BEGIN {
    n = split(F, f, ","); split(U, u, ","); split(D, d, ",")
    for (i = 1; i <= n; i++) { sum += f[i]; up += u[i] * 1e6 / 8 }
    for (i = 1; i <= n; i++) {
      a = (sum - f[i]) / (d[i] * 1e6 / 8); if (a > down_t) down_t = a
      b = f[i] / (u[i] * 1e6 / 8); if (b > own_t) own_t = b
      need += sum - f[i]
    }
    all_t = need / up
    t = down_t; if (own_t > t) t = own_t; if (all_t > t) t = all_t
    printf "%.3f %.3f %.3f %.3f\n", t, down_t, own_t, all_t
  }'
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a/b}'; }

prefix="p2pnb$$"
trap 'scripts/netem.sh down "$prefix"' EXIT
trap 'exit 130' INT TERM
hosts=$(scripts/netem.sh up "$prefix" --clients "$clients" --up "$ups" --down "$downs")
echo "$hosts"
netns=$(awk '$1 == "host" && $2 > 0 {print $3}' <<<"$hosts" | paste -sd,)
addrs=$(awk '$1 == "host" && $2 > 0 {print $4}' <<<"$hosts" | paste -sd,)

# Sources first (netem.sh swarm would make them too), so that their sizes give T_lb.
mkdir -p "$work/src"
sizes=() srcs=()
for i in $(seq 1 "$clients"); do
  f="$work/src/file$i.bin"
  if [[ ! -f "$f" || $(stat -c %s "$f") -ne $((size_mb * 1048576)) ]]; then
    "$bin" gen --size "${size_mb}M" --seed "$i" "$f"
  fi
  sizes+=("$(stat -c %s "$f")") srcs+=("$f")
done
read -r tlb t_down t_own t_all < <(t_lb "$(IFS=,; echo "${sizes[*]}")" "$ups" "$downs")
echo "scenario $scenario: $clients clients x $size_mb MiB, up $ups Mbit/s, down $downs Mbit/s"
echo "T_lb = ${tlb} s  (downloads ${t_down} s, own file once ${t_own} s, all uplinks ${t_all} s)"

totals=() raws=()
for r in $(seq 1 "$runs"); do
  out="$work/bench_net/run$r"
  scripts/netem.sh swarm "$prefix" --clients "$clients" --size-mb "$size_mb" --work "$work" --out "$out" \
    --bin "$bin" --port "$port" -- "${extra[@]}" >"$work/bench_net.swarm$r.txt" 2>&1 ||
    { cat "$work/bench_net.swarm$r.txt"; echo "run $r FAILED (see $out)"; exit 1; }
  total=$(grep -o '"total_ms": [0-9.]*' "$out/logs/summary.json" | awk '{printf "%.3f", $2 / 1000}')
  own="" cpu=0
  for i in $(seq 1 "$clients"); do
    read -r u s <"$out/client$i.cpu"
    cpu=$(awk -v c="$cpu" -v u="$u" -v s="$s" 'BEGIN {print c + u + s}')
    up=$(awk -v f="file$i.bin" '/event=file_uploaded / {
           for (k = 1; k <= NF; k++) { if ($k == "file=" f) hit = 1; if ($k ~ /^bytes=/) b = substr($k, 7) }
           if (hit) { print b; exit } }' "$out/logs/client$i.log")
    own+=" client$i $(ratio "${up:-0}" "${sizes[$((i - 1))]}")"
  done
  busy=$(grep -o 'machine busy [0-9]*%' "$work/bench_net.swarm$r.txt" | awk '{print $3}')
  # MiB all clients had received and checked by 1000 ms of the system clock (chunk_received).
  early=$(cat "$out"/logs/client*.log | awk '/event=chunk_received / {
            s = $0; sub(/^\[ */, "", s)
            if (s + 0 < 1000) for (k = 1; k <= NF; k++) if ($k ~ /^bytes=/) b += substr($k, 7) }
          END { printf "%.0f", b / 1048576 }')
  # Per client, the share of the total time its shaped links were busy: bytes they passed
  # (netem.sh's OUT/wire.txt, headers included) / (rate x total).
  use=unknown
  if [[ -s "$out/wire.txt" ]] && awk -v t="$total" 'BEGIN { exit !(t > 0) }'; then
    use=$(awk -v U="$ups" -v D="$downs" -v T="$total" 'BEGIN { split(U, u, ","); split(D, d, ",") }
            $2 > 0 { up = up sep sprintf("%.1f", 100 * $4 * 8 / (u[$2] * 1e6 * T))
                     dn = dn sep sprintf("%.1f", 100 * $6 * 8 / (d[$2] * 1e6 * T)); sep = "," }
            END { print "up " up ", down " dn }' "$out/wire.txt")
  fi
  echo "run $r: total ${total} s, T_lb ${tlb} s, ratio $(ratio "$total" "$tlb"); client cpu ${cpu} s," \
    "machine busy ${busy}; first second ${early} MiB; own file uploaded x:${own}; link use % ${use}"
  totals+=("$total")
  rm -rf "$out"/client*/
  if [[ $baseline -eq 1 ]]; then
    read -r _ _ raw _ rawcpu < <(python3 scripts/raw_copy.py --netns "$netns" --addrs "$addrs" \
      "$work/bench_net/raw" "${srcs[@]}")
    echo "run $r: raw copy ${raw} s, ratio to T_lb $(ratio "$raw" "$tlb"); raw copy cpu ${rawcpu} s"
    raws+=("$raw")
  fi
done
mtot=$(printf '%s\n' "${totals[@]}" | median)
echo "median total: ${mtot} s over $runs runs; T_lb ${tlb} s; median total / T_lb: $(ratio "$mtot" "$tlb")"
if [[ $baseline -eq 1 ]]; then
  mraw=$(printf '%s\n' "${raws[@]}" | median)
  echo "median raw copy: ${mraw} s; raw copy / T_lb: $(ratio "$mraw" "$tlb"); p2pshare / raw copy: $(ratio "$mtot" "$mraw")"
fi
