#!/usr/bin/env python3
"""Baseline for scripts/bench.sh: the same bytes moved with no protocol and no MD5.

N processes' worth of work in one process: every source file is sent with sendfile(2) over
loopback TCP to every other "client", which receives it and writes it to a file. This is the
"raw copy" of ../shared/SCENARIOS.md: what moving and storing the data alone costs on this
machine, to compare p2pshare against in the same session.

With --netns NS1,NS2,... --addrs IP1,IP2,... (one per file, as made by scripts/netem.sh), the
"client" of file i lives in network namespace NSi: its listener is bound to IPi there and its
sending sockets are made there, so every byte crosses the emulated, shaped links (needs root).

    scripts/raw_copy.py [--netns NS,... --addrs IP,...] OUT_DIR FILE...
Prints: raw_copy wall SECONDS cpu SECONDS
"""
import ctypes
import os
import shutil
import socket
import sys
import threading
import time


CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(path):
    """Moves the calling thread (only it: network namespaces are per thread) into `path`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def usage():
    print("usage: " + __doc__.strip().splitlines()[-2].strip(), file=sys.stderr)
    sys.exit(2)


def main():
    argv = sys.argv[1:]
    netns = addrs = None
    while argv and argv[0] in ("--netns", "--addrs") and len(argv) > 1:
        if argv[0] == "--netns":
            netns = argv[1].split(",")
        else:
            addrs = argv[1].split(",")
        argv = argv[2:]
    if len(argv) < 3 or (netns is None) != (addrs is None):
        usage()
    out, files = argv[0], argv[1:]
    n = len(files)
    if netns is None:
        netns, addrs = [None] * n, ["127.0.0.1"] * n
    elif len(netns) != n or len(addrs) != n:
        usage()
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    home = f"/proc/{os.getpid()}/task/{threading.get_native_id()}/ns/net"
    home_fd = os.open(home, os.O_RDONLY)
    listeners = []
    for j in range(n):
        if netns[j]:
            enter_netns(f"/run/netns/{netns[j]}")
        s = socket.socket()
        s.bind((addrs[j], 0))
        s.listen(64)
        listeners.append(s)
        if netns[j] and libc.setns(home_fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back to the first namespace")
    os.close(home_fd)
    errors = []

    def receive(j, conn):
        try:
            i = conn.recv(1)[0]
            fd = os.open(f"{out}/r{j}_f{i}.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            buf = bytearray(1 << 20)
            view = memoryview(buf)
            while True:
                k = conn.recv_into(buf)
                if k == 0:
                    break
                os.write(fd, view[:k])
            os.close(fd)
        except Exception as e:  # report, never hang
            errors.append(e)
        finally:
            conn.close()

    def accept(j):
        for _ in range(n - 1):
            conn, _ = listeners[j].accept()
            t = threading.Thread(target=receive, args=(j, conn), daemon=True)
            t.start()
            receivers.append(t)

    def send(i, j):
        try:
            if netns[i]:
                enter_netns(f"/run/netns/{netns[i]}")
            conn = socket.create_connection(listeners[j].getsockname())
            conn.send(bytes([i]))
            fd = os.open(files[i], os.O_RDONLY)
            size, off = os.fstat(fd).st_size, 0
            while off < size:
                off += os.sendfile(conn.fileno(), fd, off, size - off)
            os.close(fd)
            conn.close()
        except Exception as e:  # report, never hang
            errors.append(e)

    receivers = []
    t0, c0 = time.time(), os.times()
    # Daemon threads: a failed sender leaves an acceptor waiting, which must not keep us alive.
    acceptors = [threading.Thread(target=accept, args=(j,), daemon=True) for j in range(n)]
    senders = [
        threading.Thread(target=send, args=(i, j), daemon=True) for i in range(n) for j in range(n) if i != j
    ]
    for t in acceptors + senders:
        t.start()
    for t in senders:
        t.join(timeout=600)
    if errors:
        print(f"raw_copy failed: {errors[0]}", file=sys.stderr)
        sys.exit(1)
    for t in acceptors:
        t.join(timeout=600)
    for t in list(receivers):
        t.join(timeout=600)
    c1 = os.times()
    if errors:
        print(f"raw_copy failed: {errors[0]}", file=sys.stderr)
        sys.exit(1)
    cpu = (c1.user + c1.system) - (c0.user + c0.system)
    print(f"raw_copy wall {time.time() - t0:.3f} cpu {cpu:.3f}")
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
