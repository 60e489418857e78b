#!/usr/bin/env python3
"""What the page cache costs on this machine: N writers at once each write SIZE MiB into a new
file in 256 KiB pwrites, as p2pshare's clients write their downloads, in two ways:
  keep: fdatasync every 64 MiB, every page stays cached (what a node did before it dropped
        spent chunks);
  drop: the same, then everything synced so far is dropped from the page cache
        (posix_fadvise DONTNEED), so the kernel can reuse those pages for the next writes.
On a VM that hands free memory back to its host (free page reporting), a page the cache takes
for the first time costs a fault on the host; "drop" shows how much of that reuse saves.
Each mode runs ROUNDS times, alternating, with a pause between runs (the freed pages are
handed back to the host meanwhile). Prints the CPU seconds (user + sys) of all writers.

    scripts/page_cost.py [--writers N (4)] [--size-mib M (1536)] [--rounds R (2)]
                         [--pause S (6)] [--dir DIR (data)]
"""
import argparse
import os
import resource
import sys
import time

CHUNK = 256 << 10
WINDOW = 256  # chunks between syncs: 64 MiB


def writer(path, chunks, drop):
    buf = os.urandom(CHUNK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, CHUNK * chunks)
        synced = 0
        for i in range(chunks):
            os.pwrite(fd, buf, i * CHUNK)
            if i - synced >= WINDOW:
                os.fdatasync(fd)
                if drop:
                    os.posix_fadvise(fd, 0, synced * CHUNK, os.POSIX_FADV_DONTNEED)
                synced = i
        os.fdatasync(fd)
    finally:
        os.close(fd)


def run(args, drop):
    """Forks the writers, waits for them, returns (wall, cpu) seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    pids = []
    paths = [os.path.join(args.dir, f"page_cost.{i}.tmp") for i in range(args.writers)]
    for p in paths:
        pid = os.fork()
        if pid == 0:
            try:
                writer(p, args.size_mib * (1 << 20) // CHUNK, drop)
                os._exit(0)
            except OSError as e:
                print(f"page_cost.py: {p}: {e}", file=sys.stderr)
                os._exit(1)
        pids.append(pid)
    failed = sum(os.waitpid(pid, 0)[1] != 0 for pid in pids)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
    if failed:
        sys.exit(1)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main():
    ap = argparse.ArgumentParser(usage=__doc__.strip().splitlines()[-2].strip())
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--size-mib", type=int, default=1536)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pause", type=float, default=6.0)
    ap.add_argument("--dir", default="data")
    args = ap.parse_args()
    if args.writers < 1 or args.size_mib < 1 or args.rounds < 1 or args.pause < 0:
        print("page_cost.py: --writers, --size-mib and --rounds must be positive", file=sys.stderr)
        sys.exit(2)
    os.makedirs(args.dir, exist_ok=True)
    for r in range(args.rounds):
        for mode in ("keep", "drop"):
            time.sleep(args.pause)
            wall, cpu = run(args, mode == "drop")
            total = args.writers * args.size_mib
            print(f"round {r + 1} {mode}: {args.writers} x {args.size_mib} MiB, "
                  f"wall {wall:.2f} s, cpu {cpu:.2f} s ({cpu / (total / 1024):.2f} s/GiB)",
                  flush=True)


if __name__ == "__main__":
    main()
