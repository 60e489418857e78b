#!/usr/bin/env python3
"""Baseline for scripts/bench.sh: the same bytes moved with no protocol and no MD5.

N processes' worth of work in one process: every source file is sent with sendfile(2) over
loopback TCP to every other "client", which receives it and writes it to a file. This is the
"raw copy" of ../shared/SCENARIOS.md: what moving and storing the data alone costs on this
machine, to compare p2pshare against in the same session.

    scripts/raw_copy.py OUT_DIR FILE...
Prints: raw_copy wall SECONDS cpu SECONDS
"""
import os
import shutil
import socket
import sys
import threading
import time


def main():
    if len(sys.argv) < 4:
        print(__doc__.strip().splitlines()[-2].strip(), file=sys.stderr)
        sys.exit(2)
    out, files = sys.argv[1], sys.argv[2:]
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    n = len(files)
    listeners = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        listeners.append(s)
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
            t = threading.Thread(target=receive, args=(j, conn))
            t.start()
            receivers.append(t)

    def send(i, j):
        conn = socket.create_connection(listeners[j].getsockname())
        conn.send(bytes([i]))
        fd = os.open(files[i], os.O_RDONLY)
        size, off = os.fstat(fd).st_size, 0
        while off < size:
            off += os.sendfile(conn.fileno(), fd, off, size - off)
        os.close(fd)
        conn.close()

    receivers = []
    t0, c0 = time.time(), os.times()
    acceptors = [threading.Thread(target=accept, args=(j,)) for j in range(n)]
    senders = [threading.Thread(target=send, args=(i, j)) for i in range(n) for j in range(n) if i != j]
    for t in acceptors + senders:
        t.start()
    for t in acceptors + senders:
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
