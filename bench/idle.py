#!/usr/bin/env python3
"""Idle-session memory of `mtac run`: hold N sessions after EHLO and read the node's memory.

    bench/idle.py [--counts 1000,5000,10000,19000] [--procs 4] [--starttls] [--compiled] [--pregreet]

Starts target/release/mtac on a scratch policy, then for each N (ascending) opens sessions from
many 127.x.y.z source addresses spread over several client processes (each process is capped at
the machine's open-file limit, like the node), sends EHLO, reads the reply, and holds them.
Reports the node's RSS and PSS (from /proc) above its baseline, per session.

With --starttls the farm gets a certificate (a fresh self-signed P-256 one) and each session
does EHLO, STARTTLS, the handshake (TLS 1.3) and EHLO again before it is held: what an idle MX
session costs when, as most MX traffic today, it arrives over STARTTLS.

With --pregreet the farm keeps its pregreet test (a 60 s wait) and each connection is held
inside it, greeted with `220-` and silent: what the wait costs a first contact.

The node compiles the policy itself (`mtac run --policy`) unless --compiled: then `mtac build`
writes the ruleset and the node serves that file, as a farm's nodes do. The baseline differs
(the compiler's code is not paged in: ~1.5 MiB less); the per-session figures do not.
Most of the baseline is the binary's own code mapped from the page cache (file-backed, shared
with every process that maps it); the baseline line splits it from the anonymous memory.
"""
import argparse, os, socket, ssl, subprocess, sys, tempfile, time
from multiprocessing import Process, Queue

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("MTAC_BIN", os.path.join(HERE, "..", "target", "release", "mtac"))

def mem(pid):
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"): rss = int(line.split()[1])
            if line.startswith("Pss:"): pss = int(line.split()[1])
    return rss, pss

def anonymous(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Anonymous:"): return int(line.split()[1])
    return 0

def ehlo(f, s):
    """Send EHLO and read its reply to the last line; True if it was a 250."""
    s.sendall(b"EHLO idle.example.org\r\n")
    while True:
        line = f.readline()
        if not line or line[3:4] != b"-": break
    return line.startswith(b"250")

def holder(port, start, count, ready, done, starttls, pregreet):
    socks = []
    failed = 0
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    for i in range(start, start + count):
        src = f"127.{1 + (i // 60000) % 250}.{(i // 250) % 250}.{1 + i % 250}"
        try:
            s = socket.socket(); s.settimeout(10)
            s.bind((src, 0)); s.connect(("127.0.0.1", port))
            f = s.makefile("rb")
            if not f.readline().startswith(b"220"): failed += 1; continue
            if pregreet:
                socks.append((s, f)); continue
            if not ehlo(f, s): failed += 1; continue
            if starttls:
                s.sendall(b"STARTTLS\r\n")
                if not f.readline().startswith(b"220"): failed += 1; continue
                s = tls.wrap_socket(s, server_hostname="mx.idle.example")
                f = s.makefile("rb")
                if not ehlo(f, s): failed += 1; continue
            socks.append((s, f))
        except OSError:
            failed += 1
    ready.put((len(socks), failed))
    done.get()

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="1000,5000,10000,19000")
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--starttls", action="store_true", help="hold sessions after EHLO, STARTTLS, EHLO")
    ap.add_argument("--pregreet", action="store_true", help="hold connections silent inside a 60 s pregreet wait")
    ap.add_argument("--compiled", action="store_true", help="serve a ruleset built by `mtac build`, not --policy")
    a = ap.parse_args()
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    d = tempfile.mkdtemp()
    port = 36000 + os.getpid() % 1000
    policy = os.path.join(d, "policy.kdl")
    tls = ""
    if a.starttls:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-days", "30", "-subj", "/CN=mx.idle.example",
                        "-addext", "subjectAltName=DNS:mx.idle.example",
                        "-keyout", f"{d}/key.pem", "-out", f"{d}/cert.pem"], check=True, capture_output=True)
        tls = f'tls certificate="{d}/cert.pem" key="{d}/key.pem"'
    open(policy, "w").write(f'''hostname "mx.idle.example"
spool "{d}/spool"
farm "mx" kind="inbound-mx" {{
    listen "127.0.0.1:{port}"
    limits {{
        connections 1000000
        connections-per-ip 1000
        timeout command="30m"{' pregreet="60s"' if a.pregreet else ''}
    }}
    local-domains "example.net"
    // The pregreet test (on by default since issue 17) would hold each connection 2 s before
    // its EHLO; the sessions measured here are the ones held after it.
    {'' if a.pregreet else 'screen { pregreet #false; }'}
    deliver maildir="{d}/Maildir"
    {tls}
}}
''')
    served = ["--policy", policy]
    if a.compiled:
        subprocess.run([BIN, "build", policy, "--output", f"{d}/ruleset"], check=True, capture_output=True)
        served = [f"{d}/ruleset"]
    node = subprocess.Popen([BIN, "run", *served], stderr=open(os.path.join(d, "log"), "w"),
                            env={**os.environ, "RUST_LOG": "warn"})
    for _ in range(100):
        try: socket.create_connection(("127.0.0.1", port)).close(); break
        except OSError: time.sleep(0.05)
    time.sleep(0.5)
    base_rss, base_pss = mem(node.pid)
    print(f"mode: {'in the pregreet wait' if a.pregreet else 'EHLO, STARTTLS, EHLO' if a.starttls else 'EHLO'}; {'compiled ruleset' if a.compiled else '--policy'}")
    print(f"machine: {os.cpu_count()} cpus, open-file limit {hard}; baseline RSS {base_rss/1024:.1f} MiB, PSS {base_pss/1024:.1f} MiB, of which anonymous {anonymous(node.pid)/1024:.1f} MiB")
    print("| sessions held | failed | RSS MiB | PSS MiB | KiB/session RSS | KiB/session PSS |")
    print("|---|---|---|---|---|---|")
    for n in [int(x) for x in a.counts.split(",")]:
        ready, done = Queue(), Queue()
        per = (n + a.procs - 1) // a.procs
        procs = [Process(target=holder, args=(port, k * per, min(per, n - k * per), ready, done, a.starttls, a.pregreet)) for k in range(a.procs)]
        for p in procs: p.start()
        held = failed = 0
        for _ in procs:
            h, f = ready.get(); held += h; failed += f
        time.sleep(1)
        rss, pss = mem(node.pid)
        print(f"| {held} | {failed} | {rss/1024:.1f} | {pss/1024:.1f} | {(rss-base_rss)/max(held,1):.2f} | {(pss-base_pss)/max(held,1):.2f} |", flush=True)
        for _ in procs: done.put(1)
        for p in procs: p.join()
        time.sleep(1)
    node.terminate(); node.wait(timeout=30)

if __name__ == "__main__":
    main()
