#!/usr/bin/env bash
# Emulated hosts on one machine: one network namespace per host, each joined by a veth pair to a
# bridge that lives in a namespace of its own, with tbf shaping for each host's uplink (egress of
# the host's end, eth0) and downlink (egress of the bridge's end, vh<K>). Host 0 runs the server,
# host K (1..N) client K. Addresses exist only inside these namespaces (10.77.0.0/24): no traffic
# can reach any other network. Needs root and iproute2 (ip, tc); installs iproute2 if missing.
#
#   scripts/netem.sh run [--clients N (4)] [--size-mb M (200)] [--up LIST] [--down LIST]
#                        [--work DIR (data)] [--bin PATH] [--port P (9100)] [--prefix P] [-- FLAGS]
#       Creates the hosts, runs the server and the clients until every client holds every file,
#       checks every copy with md5sum, prints the summary, removes everything (also on Ctrl-C or
#       a failure). Exits 0 only if every node exited 0 and every copy matches, 1 otherwise,
#       2 for a bad argument. FLAGS are passed on to every client.
#   scripts/netem.sh up PREFIX [--clients N (4)] [--up LIST] [--down LIST]
#       Creates the hosts and prints one line per host: "host K NAMESPACE ADDRESS" (K = 0 for the
#       server). They stay until "down".
#   scripts/netem.sh swarm PREFIX [--clients N] [--size-mb M] [--work DIR] [--out DIR] [--bin PATH]
#                              [--port P] [-- FLAGS]
#       One run on hosts made by "up": sources in WORK/src, outputs and logs in OUT
#       (default WORK/netem); the summary is OUT/logs/summary.json.
#   scripts/netem.sh down PREFIX
#       Stops whatever runs in the hosts named PREFIX... and deletes them.
#
# LIST: Mbit/s (10^6 bit/s) per client, comma-separated, in client order; one value applies to
# every client (default 1000). The server's host is shaped at 1000 Mbit/s both ways.
# PREFIX must start with "p2pn" (namespaces PREFIXbr, PREFIXh0..PREFIXhN); the default for run
# is p2pn<pid>.
set -euo pipefail
cd "$(dirname "$0")/.."

NET=10.77.0
# tbf: the bucket holds 32 ms of traffic at the rate. When the queue is throttled, tbf sleeps until
# the next packet's tokens are there; on this shared 2-core machine that wakeup is often several ms
# late, and with a bucket of 64 KiB (1/2 ms at 1 Gbit/s) the tokens of the delay were lost: a
# single TCP stream got 0.78 of a 1 Gbit/s link and 0.80 of a 250 Mbit/s link (0.956 is the most
# TCP/IP headers allow). With 32 ms it gets 0.96 of both. The price is the bucket itself: over
# any interval a host sends at most rate x time + burst, so a run can beat the lower bound by
# 32 ms at most. The queue holds TBF_LATENCY of traffic beyond the bucket; past that, drops.
TBF_LATENCY=20ms

die() { echo "netem.sh: $*" >&2; exit 2; }
addr_of() { echo "$NET.$((10 + $1))"; }

need_tools() {
  [[ $(id -u) -eq 0 ]] || { echo "netem.sh: needs root (network namespaces, tc)" >&2; exit 1; }
  if ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
    echo "netem.sh: ip or tc missing; installing iproute2" >&2
    { apt-get update -qq && apt-get install -y -qq iproute2 >/dev/null; } ||
      { echo "netem.sh: cannot install iproute2" >&2; exit 1; }
  fi
}

check_prefix() { [[ "$1" =~ ^p2pn[A-Za-z0-9]{0,20}$ ]] || die "prefix must be p2pn plus up to 20 letters or digits: $1"; }

# rate_of LIST K: the K-th (from 1) entry of a comma-separated list, or its only entry.
rate_of() {
  local -a v
  IFS=, read -r -a v <<<"$1"
  if [[ ${#v[@]} -eq 1 ]]; then echo "${v[0]}"; else echo "${v[$(($2 - 1))]}"; fi
}

check_rates() { # LIST N
  local -a v
  IFS=, read -r -a v <<<"$1"
  [[ ${#v[@]} -eq 1 || ${#v[@]} -eq $2 ]] || die "rate list $1 needs 1 or $2 entries"
  for r in "${v[@]}"; do [[ "$r" =~ ^[0-9]+$ && "$r" -ge 1 && "$r" -le 100000 ]] || die "bad rate $r (Mbit/s)"; done
}

tbf() { # NETNS DEV MBIT
  local burst=$(($3 * 4000)) # bytes in 32 ms at $3 Mbit/s
  ((burst >= 65536)) || burst=65536
  tc -n "$1" qdisc replace dev "$2" root tbf rate "$3mbit" burst "$burst" latency "$TBF_LATENCY"
}

cmd_up() { # PREFIX N UPS DOWNS
  local p=$1 n=$2 ups=$3 downs=$4 k ns
  ip netns add "${p}br"
  ip -n "${p}br" link set lo up
  ip -n "${p}br" link add br0 type bridge
  ip -n "${p}br" link set br0 up
  for k in $(seq 0 "$n"); do
    ns="${p}h$k"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # Created inside the bridge's namespace with its peer put straight into the host's: no
    # interface ever appears in the machine's own namespace.
    ip -n "${p}br" link add "vh$k" type veth peer name eth0 netns "$ns"
    ip -n "${p}br" link set "vh$k" master br0 up
    ip -n "$ns" addr add "$(addr_of "$k")/24" dev eth0
    ip -n "$ns" link set eth0 up
    local up=1000 down=1000
    if ((k > 0)); then up=$(rate_of "$ups" "$k"); down=$(rate_of "$downs" "$k"); fi
    tbf "$ns" eth0 "$up"
    tbf "${p}br" "vh$k" "$down"
    echo "host $k $ns $(addr_of "$k") up ${up}mbit down ${down}mbit"
  done
}

cmd_down() { # PREFIX
  local p=$1 ns pid
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^${p}(br|h[0-9]+)$" || true); do
    # Every process in these namespaces was started by this script or its caller.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
}

build_bin() {
  if [[ -z "$bin" ]]; then
    cargo build --release --quiet
    bin="$PWD/target/release/p2pshare"
  fi
  bin="$(realpath "$bin")"
}

make_sources() { # WORK N SIZE_MB
  mkdir -p "$1/src"
  for i in $(seq 1 "$2"); do
    local f="$1/src/file$i.bin"
    if [[ ! -f "$f" || $(stat -c %s "$f") -ne $(($3 * 1048576)) ]]; then
      echo "creating $f ($3 MiB)"
      "$bin" gen --size "$3M" --seed "$i" "$f"
    fi
  done
}

swarm_pids=()
stop_swarm() { # the nodes, and the node under each /usr/bin/time
  local p c
  for p in "${swarm_pids[@]}"; do
    for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do kill "$c" 2>/dev/null || true; done
    kill "$p" 2>/dev/null || true
  done
  swarm_pids=()
}

busy_jiffies() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $5 + $6}' /proc/stat; }

# wire_bytes PREFIX N: per host, "K UP DOWN": the bytes its uplink shaper (tbf on its eth0) and
# its downlink shaper (tbf on its port of the bridge) have passed so far, headers included.
wire_bytes() {
  local k up down
  for k in $(seq 0 "$2"); do
    up=$(tc -s -n "$1h$k" qdisc show dev eth0 2>/dev/null | awk '/Sent/ {print $2; exit}') || true
    down=$(tc -s -n "$1br" qdisc show dev "vh$k" 2>/dev/null | awk '/Sent/ {print $2; exit}') || true
    echo "$k ${up:--} ${down:--}"
  done
}

cmd_swarm() { # PREFIX N WORK OUT PORT FLAGS...
  local p=$1 n=$2 work=$3 out=$4 port=$5 i j
  shift 5
  rm -rf "$out"
  mkdir -p "$out/logs"
  local server_addr
  server_addr="$(addr_of 0):$port"
  # A fresh token for this run's nodes, in the environment (argv would show it in ps): only the
  # clients started here can join the server, and only they can pull chunks from each other.
  local -x P2PSHARE_TOKEN
  P2PSHARE_TOKEN=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
  # Before the server starts its clock: nothing crosses the links until the clients start.
  local wire0
  wire0=$(wire_bytes "$p" "$n")
  ip netns exec "${p}h0" "$bin" server --listen "$server_addr" --clients "$n" --log-dir "$out/logs" \
    2>"$out/server.err" &
  swarm_pids+=("$!")
  local b0 i0 b1 i1
  read -r b0 i0 < <(busy_jiffies)
  for i in $(seq 1 "$n"); do
    # The client's CPU seconds (user system) go to OUT/clientK.cpu when GNU time is there.
    local -a timer=()
    [[ -x /usr/bin/time ]] && timer=(/usr/bin/time -f "%U %S" -o "$out/client$i.cpu")
    ip netns exec "${p}h$i" "${timer[@]}" "$bin" client --server "$server_addr" --listen "$(addr_of "$i"):0" \
      --advertise "$(addr_of "$i")" --name "client$i" --file "$work/src/file$i.bin" \
      --out-dir "$out/client$i" --log-dir "$out/logs" "$@" 2>"$out/client$i.err" &
    swarm_pids+=("$!")
  done
  # The server waits for every client without a time limit: as soon as one node fails, stop
  # the others instead of hanging.
  local status=0 left=("${swarm_pids[@]}") keep gone rc q
  while [[ ${#left[@]} -gt 0 ]]; do
    rc=0
    wait -n -p gone "${left[@]}" || rc=$?
    if [[ $rc -ne 0 ]]; then
      echo "netem.sh: a node (pid $gone) exited with status $rc; stopping the others" >&2
      status=1
      stop_swarm
      wait || true
      break
    fi
    keep=()
    for q in "${left[@]}"; do [[ $q == "$gone" ]] || keep+=("$q"); done
    left=("${keep[@]}")
  done
  swarm_pids=()
  read -r b1 i1 < <(busy_jiffies)
  # What each host's shapers passed during the run (headers included), for OUT/wire.txt.
  # A counter tc did not give ("-") leaves that host out.
  paste -d' ' <(echo "$wire0") <(wire_bytes "$p" "$n") |
    awk 'NF == 6 && $0 !~ /-/ {print "host", $1, "up", $5 - $2, "down", $6 - $3}' >"$out/wire.txt" || true
  # The whole machine, other users included: a busy machine slows the run down.
  echo "machine busy $((100 * (b1 - b0) / (b1 - b0 + i1 - i0 + 1)))% during the run"
  local bad=0
  declare -A sum
  for i in $(seq 1 "$n"); do sum[$i]=$(md5sum <"$work/src/file$i.bin" | cut -d' ' -f1); done
  for i in $(seq 1 "$n"); do
    for j in $(seq 1 "$n"); do
      [[ $i -eq $j ]] && continue
      local f="$out/client$i/file$j.bin"
      if [[ ! -f "$f" ]]; then echo "MISSING $f"; bad=1; continue; fi
      [[ $(md5sum <"$f" | cut -d' ' -f1) == "${sum[$j]}" ]] || { echo "CORRUPT $f"; bad=1; }
    done
  done
  if [[ $status -ne 0 || $bad -ne 0 ]]; then
    echo "FAILED: a node exited non-zero or an output is missing or corrupt (see $out)" >&2
    return 1
  fi
  echo "OK: $n clients hold all $n files, every MD5 matches (summary: $out/logs/summary.json)"
}

[[ $# -ge 1 ]] || { sed -n '2,27p' "$0"; exit 2; }
sub=$1
shift
prefix=""
case "$sub" in
  up | swarm | down) [[ $# -ge 1 ]] || die "$sub needs a PREFIX"; prefix=$1; shift ;;
  run) ;;
  -h | --help) sed -n '2,27p' "$0"; exit 0 ;;
  *) die "unknown command $sub (run, up, swarm, down)" ;;
esac
clients=4 size_mb=200 ups=1000 downs=1000 work=data out="" bin="" port=9100 extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --clients) clients="$2"; shift 2 ;;
    --size-mb) size_mb="$2"; shift 2 ;;
    --up) ups="$2"; shift 2 ;;
    --down) downs="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --prefix) prefix="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument $1" ;;
  esac
done
[[ "$clients" =~ ^[0-9]+$ && "$clients" -ge 1 && "$clients" -le 200 ]] || die "--clients must be 1 to 200"
[[ "$size_mb" =~ ^[0-9]+$ ]] || die "--size-mb must be a number"
[[ "$port" =~ ^[0-9]+$ && "$port" -ge 1 && "$port" -le 65535 ]] || die "bad --port $port"
check_rates "$ups" "$clients"
check_rates "$downs" "$clients"
[[ -n "$prefix" ]] || prefix="p2pn$$"
check_prefix "$prefix"
work="$(realpath -m "$work")"
[[ -n "$out" ]] || out="$work/netem"
out="$(realpath -m "$out")"

case "$sub" in
  up)
    need_tools
    trap 'cmd_down "$prefix"' EXIT # a failure half-way leaves nothing behind
    cmd_up "$prefix" "$clients" "$ups" "$downs"
    trap - EXIT
    ;;
  down) need_tools; cmd_down "$prefix" ;;
  swarm)
    need_tools
    trap 'stop_swarm' EXIT
    trap 'exit 130' INT TERM
    build_bin
    make_sources "$work" "$clients" "$size_mb"
    cmd_swarm "$prefix" "$clients" "$work" "$out" "$port" "${extra[@]}"
    ;;
  run)
    need_tools
    trap 'stop_swarm; cmd_down "$prefix"' EXIT
    trap 'exit 130' INT TERM
    build_bin
    make_sources "$work" "$clients" "$size_mb"
    cmd_up "$prefix" "$clients" "$ups" "$downs"
    cmd_swarm "$prefix" "$clients" "$work" "$out" "$port" "${extra[@]}"
    cat "$out/server.err"
    ;;
esac
