#!/usr/bin/env python3
"""Helpers for bench/run.sh that need more than shell.

  conns.py hold PORT N PIDFILE [tls]
                                 open N keep-alive connections (TLS: without verifying the
                                 certificate), one request each, then print the RssAnon and
                                 RssFile+RssShmem (kB) of the process in PIDFILE and exit
  conns.py ready CMD...          start CMD, print ms until its port 18081 accepts, leave it running
                                 (prints "PID MS")
  conns.py oha FILE              from oha's JSON output: requests answered, p50, p99 and p99.9
                                 latency (ms)
"""
import json
import os
import socket
import ssl
import subprocess
import sys
import time


def rss_kb(pid):
    """(anonymous, file-backed + shared) resident kB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(rest.split()[0])
    return fields.get("RssAnon", 0), fields.get("RssFile", 0) + fields.get("RssShmem", 0)


def hold(port, n, pidfile, tls=False):
    """One request per connection, one connection after the other, so the upstream side stays
    at one pooled connection and what remains is the cost of idle client connections."""
    pid = int(open(pidfile).read().strip())
    socks = []
    req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        if tls:
            s = ctx.wrap_socket(s)
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
    print(*rss_kb(pid))
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


def oha(path):
    """Requests answered (any status) and latency percentiles in ms; "0 nan nan nan" when oha
    failed or wrote nothing."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        print("0 nan nan nan")
        return
    n = sum(data.get("statusCodeDistribution", {}).values())
    pct = data.get("latencyPercentiles", {})

    def ms(key):
        v = pct.get(key)
        return "nan" if v is None else f"{v * 1000:.3f}"

    print(n, ms("p50"), ms("p99"), ms("p99.9"))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "hold":
        hold(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:6] == ["tls"])
    elif cmd == "ready":
        ready(sys.argv[2:])
    elif cmd == "oha":
        oha(sys.argv[2])
