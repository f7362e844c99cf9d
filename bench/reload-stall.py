#!/usr/bin/env python3
"""Serving stall during a reload of a big config (`make bench`): a request loop against a
portico-proxy with --workers 1 while its config file is rewritten with N regex routes. Prints how
long the new config took to apply and the request latencies meanwhile.

  bench/reload-stall.py PROXY_BIN [N]   (loopback ports 18191, 18196, 18199)
"""
import http.client, os, subprocess, sys, tempfile, threading, time
N = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
binary = sys.argv[1]
d = tempfile.mkdtemp(prefix="portico-reload-stall.")
open(f"{d}/index.html", "w").write("ok\n")
up = subprocess.Popen([sys.executable, "-m", "http.server", "18199", "--bind", "127.0.0.1"], cwd=d,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def write(gen, n):
    lines = ["apiVersion: portico.dev/proxy/v1", f"generation: {gen}",
             "listeners: [{ name: web, address: \"127.0.0.1:18191\", protocol: HTTP }]", "routes:"]
    for i in range(n):
        lines.append(f"  - {{ name: r{i}, hostnames: [r{i}.example.com], rules: [{{ matches: [{{ path: {{ type: RegularExpression, value: \"^/p{i}/[a-z]+$\" }} }}], backends: [{{ backend: up }}] }}] }}")
    lines.append("  - { name: all, rules: [{ backends: [{ backend: up }] }] }")
    lines.append("backends: [{ name: up, endpoints: [{ address: \"127.0.0.1:18199\" }] }]")
    tmp = f"{d}/p.yaml.tmp"; open(tmp, "w").write("\n".join(lines) + "\n"); os.replace(tmp, f"{d}/p.yaml")
write(1, 10)
proxy = subprocess.Popen([binary, "--config", f"{d}/p.yaml", "--workers", "1", "--admin-addr", "127.0.0.1:18196",
                          "--reload-interval", "100ms", "--log-level", "info"], stderr=open(f"{d}/proxy.log", "w"))
def ready():
    try:
        http.client.HTTPConnection("127.0.0.1", 18196, timeout=1).request("GET", "/ready"); return True
    except OSError:
        return False
for _ in range(100):
    if ready() or proxy.poll() is not None: break
    time.sleep(0.05)
if not ready():
    up.terminate(); proxy.kill()
    sys.exit("portico-proxy did not start:\n" + open(f"{d}/proxy.log").read()[:2000])
lat = []; stop = False
def loop():
    c = http.client.HTTPConnection("127.0.0.1", 18191)
    while not stop:
        t = time.monotonic(); c.request("GET", "/"); r = c.getresponse(); r.read(); lat.append((t, time.monotonic() - t))
        time.sleep(0.005)
th = threading.Thread(target=loop); th.start(); time.sleep(1)
size_t = time.monotonic(); write(2, N); size = os.path.getsize(f"{d}/p.yaml")
def gen():
    c = http.client.HTTPConnection("127.0.0.1", 18196); c.request("GET", "/metrics"); body = c.getresponse().read().decode()
    return next((l.split()[-1] for l in body.splitlines() if l.startswith("portico_config_version")), "?")
while gen() != "2": time.sleep(0.05)
applied = time.monotonic() - size_t
time.sleep(0.5); stop = True; th.join()
during = [l for (t, l) in lat if t >= size_t - 0.01 and t <= size_t + applied]
print(f"{N} routes ({size/1e6:.1f} MB): applied {applied:.2f} s after the write (polls every 100 ms, settles one poll); "
      f"{len(during)} requests during it, max latency {max(during)*1000 if during else 0:.1f} ms, overall max {max(l for _, l in lat)*1000:.1f} ms")
proxy.terminate(); up.terminate()
