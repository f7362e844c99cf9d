#!/usr/bin/env python3
"""Helpers for bench/run.sh that need more than shell.

  conns.py hold PORT N PIDFILE   open N keep-alive connections, one request each, then print the
                                 RSS (kB) of the process in PIDFILE and exit
  conns.py ready CMD...          start CMD, print ms until its port 18081 accepts, leave it running
                                 (prints "PID MS")
  conns.py pct FILE P...         percentiles (ms) of h2load --log-file durations (µs, 3rd column)
"""
import os
import socket
import subprocess
import sys
import time


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def hold(port, n, pidfile):
    """One request per connection, one connection after the other, so the upstream side stays
    at one pooled connection and what remains is the cost of idle client connections."""
    pid = int(open(pidfile).read().strip())
    socks = []
    req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(req)
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(65536)
        head, _, body = got.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        while len(body) < length:
            body += s.recv(65536)
        socks.append(s)
    time.sleep(1)
    print(rss_kb(pid))
    for s in socks:
        s.close()


def ready(cmd):
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            socket.create_connection(("127.0.0.1", 18081), timeout=0.05).close()
            break
        except OSError:
            time.sleep(0.0005)
        if time.monotonic() - start > 10:
            break
    print(p.pid, round((time.monotonic() - start) * 1000, 1))


def pct(path, ps):
    durs = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "200":
                durs.append(int(parts[2]) / 1000.0)
    durs.sort()
    if not durs:
        print(" ".join("nan" for _ in ps))
        return
    out = []
    for p in ps:
        i = min(len(durs) - 1, int(len(durs) * float(p) / 100.0))
        out.append(f"{durs[i]:.3f}")
    print(" ".join(out))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "hold":
        hold(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    elif cmd == "ready":
        ready(sys.argv[2:])
    elif cmd == "pct":
        pct(sys.argv[2], sys.argv[3:])
