#!/usr/bin/env python3
"""Memory of `mtac run` per connection inside the pregreet wait: N clients greeted with `220-`
that say nothing, in a 60 s wait (BENCHMARKS.md "Node: idle sessions").

    bench/pregreet-idle.py MTAC_BINARY N

bench/idle.py turns the pregreet test off to measure sessions after EHLO; this measures the
wait itself, on a compiled ruleset. Open-file limit: N + a few.
"""
import os, socket, subprocess, sys, tempfile, time, resource
BIN = sys.argv[1]; N = int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
d = tempfile.mkdtemp(); port = 38000 + os.getpid() % 1000
policy = os.path.join(d, "policy.kdl")
open(policy, "w").write(f'''hostname "mx.idle.example"
spool "{d}/spool"
farm "mx" kind="inbound-mx" {{
    listen "127.0.0.1:{port}"
    limits {{
        connections 1000000
        connections-per-ip 1000
        timeout command="30m" pregreet="60s"
    }}
    local-domains "example.net"
    deliver maildir="{d}/Maildir"
}}
''')
subprocess.run([BIN, "build", policy, "--output", f"{d}/ruleset"], check=True, capture_output=True)
node = subprocess.Popen([BIN, "run", f"{d}/ruleset"], stderr=open(os.path.join(d, "log"), "w"), env={**os.environ, "RUST_LOG": "warn"})
for _ in range(100):
    try: socket.create_connection(("127.0.0.1", port)).close(); break
    except OSError: time.sleep(0.05)
time.sleep(0.5)
def rss():
    for l in open(f"/proc/{node.pid}/smaps_rollup"):
        if l.startswith("Rss:"): return int(l.split()[1])
base = rss(); socks = []
for i in range(N):
    s = socket.socket(); s.bind((f"127.{1 + (i // 60000) % 250}.{(i // 250) % 250}.{1 + i % 250}", 0)); s.connect(("127.0.0.1", port)); socks.append(s)
for s in socks:
    s.settimeout(10); assert s.recv(100).startswith(b"220-")
time.sleep(1)
r = rss()
print(f"{os.path.basename(BIN)}: {N} in the pregreet wait: {(r-base)/N:.2f} KiB/session (baseline {base/1024:.1f} MiB)")
node.terminate(); node.wait()
