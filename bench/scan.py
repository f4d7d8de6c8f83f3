#!/usr/bin/env python3
"""What mtac adds on top of the scanners' own time: messages per second and p50/p99 latency
with clamd and spamd on, for 4 KiB and 256 KiB messages.

    bench/scan.py [--count 300] [--sessions 4] [--quick]

Three measurements per size, each with SESSIONS concurrent clients:
  scanners  the same message sent straight to clamd (INSTREAM) and spamd (SYMBOLS), both at once,
            as mtac asks them: the scanners' own time, the floor for any pre-queue filter;
  mtac      a whole SMTP transaction through `mtac run` (scan { clamav; spamassassin }) to
            smtp-sink: greeting to the final 250, including both scans;
  plain     the same through mtac with no scanners: the SMTP path alone.
The overhead mtac adds to scanning is mtac − scanners (at the same load).

Starts its own clamd (a two-signature database written here) and spamd on free loopback ports,
and smtp-sink (Debian's postfix package). Needs target/release/mtac.
"""
import argparse, os, socket, subprocess, tempfile, threading, time

from smtp_client import send_message

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("MTAC_BIN", os.path.join(HERE, "..", "target", "release", "mtac"))

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def ping(port, msg, pong):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2); s.sendall(msg)
        ok = s.recv(64).startswith(pong); s.close(); return ok
    except OSError:
        return False

def wait(port, msg=None, pong=None, tries=600):
    for _ in range(tries):
        if msg is None:
            try: socket.create_connection(("127.0.0.1", port)).close(); return
            except OSError: pass
        elif ping(port, msg, pong):
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing answers on {port}")

def message(size):
    head = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: scan bench\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\nMessage-ID: <bench@example.org>\r\n\r\n"
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    return head + line * max(1, (size - len(head)) // len(line))

def clamd_scan(port, data):
    s = socket.create_connection(("127.0.0.1", port)); s.sendall(b"zINSTREAM\0")
    for i in range(0, len(data), 65536):
        chunk = data[i:i + 65536]; s.sendall(len(chunk).to_bytes(4, "big") + chunk)
    s.sendall(b"\0\0\0\0"); r = s.recv(256); s.close()
    assert b"OK" in r, r

def spamd_scan(port, data):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"SYMBOLS SPAMC/1.5\r\nContent-length: %d\r\nUser: mtac\r\n\r\n" % len(data) + data)
    r = b""
    while True:
        b = s.recv(65536)
        if not b: break
        r += b
    s.close(); assert r.startswith(b"SPAMD/1.1 0"), r[:80]

def scanners_once(clam, spam, data):
    t = threading.Thread(target=clamd_scan, args=(clam, data)); t.start()
    spamd_scan(spam, data); t.join()

def smtp_once(port, data):
    send_message(port, data + b".\r\n")

def run(fn, count, sessions):
    times, lock = [], threading.Lock()
    per = count // sessions
    def worker():
        mine = []
        for _ in range(per):
            t = time.perf_counter(); fn(); mine.append(time.perf_counter() - t)
        with lock: times.extend(mine)
    for _ in range(min(10, per)): fn()  # warm up
    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(sessions)]
    for t in threads: t.start()
    for t in threads: t.join()
    elapsed = time.perf_counter() - start
    times.sort()
    return len(times) / elapsed, times[len(times) // 2] * 1000, times[max(0, int(len(times) * 0.99) - 1)] * 1000

def policy(path, port, sink, spool, scanners):
    open(path, "w").write(f'''hostname "mx.scan-bench.example"
spool "{spool}"
admin #false
farm "mx" kind="inbound-mx" {{
    listen "127.0.0.1:{port}"
    trust-loopback
    local-domains "example.net"
    {scanners}
    relay {{
        backend "smtp://127.0.0.1:{sink}"
    }}
}}
''')

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=300); ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--quick", action="store_true"); a = ap.parse_args()
    if a.quick: a.count, a.sessions = 20, 2
    d = tempfile.mkdtemp(); procs = []
    try:
        eicar = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
        os.makedirs(f"{d}/db")
        open(f"{d}/db/mtac.ndb", "w").write(f"Mtac.Test.Eicar:0:*:{eicar.hex()}\n")
        clam, spam, sink, front, plain = (free_port() for _ in range(5))
        open(f"{d}/clamd.conf", "w").write(f"Foreground yes\nTCPSocket {clam}\nTCPAddr 127.0.0.1\nDatabaseDirectory {d}/db\nMaxThreads 4\n")
        procs.append(subprocess.Popen(["clamd", "-c", f"{d}/clamd.conf"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen(["spamd", f"--listen=127.0.0.1:{spam}", "--allowed-ips=127.0.0.1", "--max-children=4",
                                       "--min-children=4", "--local", "--nouser-config", "--username=nobody", f"--pidfile={d}/spamd.pid"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen(["smtp-sink", *(["-u", "postfix"] if os.geteuid() == 0 else []), "-c", f"127.0.0.1:{sink}", "1000"],
                                      stdout=subprocess.DEVNULL))
        wait(clam, b"zPING\0", b"PONG"); wait(spam, b"PING SPAMC/1.5\r\n\r\n", b"SPAMD/1.5 0 PONG"); wait(sink)
        policy(f"{d}/scan.kdl", front, sink, f"/dev/shm/mtac-scan-{front}",
               f'scan {{\n        clamav "127.0.0.1:{clam}" timeout="60s"\n        spamassassin "127.0.0.1:{spam}" timeout="60s"\n    }}')
        policy(f"{d}/plain.kdl", plain, sink, f"/dev/shm/mtac-plain-{plain}", "")
        env = {**os.environ, "RUST_LOG": "warn"}
        procs.append(subprocess.Popen([BIN, "run", "--policy", f"{d}/scan.kdl"], env=env, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen([BIN, "run", "--policy", f"{d}/plain.kdl"], env=env, stderr=subprocess.DEVNULL))
        wait(front); wait(plain)
        print(f"{a.count} messages, {a.sessions} concurrent sessions")
        print(f"{'size':>8} {'path':>9} {'msg/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
        for size in (4096, 256 * 1024):
            data = message(size)
            rows = [("scanners", lambda: scanners_once(clam, spam, data)),
                    ("mtac", lambda: smtp_once(front, data)),
                    ("plain", lambda: smtp_once(plain, data))]
            results = {}
            for name, fn in rows:
                rate, p50, p99 = run(fn, a.count, a.sessions); results[name] = (rate, p50, p99)
                print(f"{size // 1024:>6}Ki {name:>9} {rate:>8.1f} {p50:>8.1f} {p99:>8.1f}")
            print(f"{'':>8} overhead p50 {results['mtac'][1] - results['scanners'][1]:+.1f} ms, "
                  f"p99 {results['mtac'][2] - results['scanners'][2]:+.1f} ms over the scanners alone")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try: p.wait(timeout=5)
            except subprocess.TimeoutExpired: p.kill()

if __name__ == "__main__":
    main()
