#!/usr/bin/env bash
# A/B comparison of binaries on the reference scenario (4 x 500 MiB on loopback): alternates
# single runs of scripts/bench.sh (--runs 1 --bin BIN) over the binaries, N rounds, so that every
# binary sees the same machine load, and prints per run the total, client CPU, how busy the
# machine was, and from the logs: the first chunk verified, the last own-file MD5 sent and the
# last chunk verified (System Clock, ms). Take the medians per binary yourself.
#
#   scripts/ab.sh N BIN [BIN...] [-- BENCH FLAGS, e.g. --size-mb 200]
#
# Build each variant and copy its binary first (cp target/release/p2pshare /tmp/p2p-a, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { sed -n '2,10p' "$0"; exit 2; }
[[ $# -ge 2 && "$1" =~ ^[0-9]+$ ]] || usage
n=$1; shift
bins=(); flags=()
while [[ $# -gt 0 ]]; do
  if [[ "$1" == "--" ]]; then shift; flags=("$@"); break; fi
  [[ -x "$1" ]] || { echo "ab.sh: $1 is not an executable" >&2; exit 2; }
  bins+=("$1"); shift
done
[[ ${#bins[@]} -ge 1 ]] || usage
work=data
for ((i = 0; i < ${#flags[@]}; i++)); do [[ "${flags[$i]}" == "--work" ]] && work=${flags[$((i + 1))]}; done
stamp() { # EVENT first|last: the System Clock ms of the first or last line with EVENT in any client log
  grep -h "$1" "$work"/bench/run1/logs/client*.log | sed 's/^\[ *\([0-9.]*\) ms.*/\1/' | sort -g | { [[ $2 == first ]] && head -1 || tail -1; }
}
for _ in $(seq 1 "$n"); do
  for b in "${bins[@]}"; do
    line=$(scripts/bench.sh --runs 1 --bin "$b" "${flags[@]}" | grep '^run 1: total')
    echo "$(basename "$b"): $(grep -o 'total [0-9.]* s, client cpu [0-9.]* s, machine busy [0-9]*%' <<<"$line")" \
      "first_chunk=$(stamp event=chunk_received first) own_md5_last=$(stamp event=file_md5_sent last)" \
      "last_chunk=$(stamp event=chunk_received last)"
  done
done
