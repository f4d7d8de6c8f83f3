#!/usr/bin/python3
"""A/B of mtac binaries: the node's own CPU per relayed message, binaries interleaved.

    bench/cpu-ab.py [-c 50] [-m 20000] [-r 3] /tmp/mtac-before /tmp/mtac-after

For each rep and each binary: smtp-sink on 127.0.0.1:31025, the binary as bench/mtac-front.sh
starts it on 127.0.0.1:31026, 2,000 warm-up messages, then smtp-source sends -m messages of
4 KiB over -c sessions at once (one session per message); prints the node process's
utime+stime per message and the rate. Only the node is counted (not the generator or the
sink), so on a shared 2-core machine the difference between binaries is what to read; the
peers harness gives the side-by-side figures for BENCHMARKS.md.

With --backend-delay MS the node reaches the sink through bench/delay-proxy.py (MS each way:
a back end across a network); the round trip measured through it is printed first.

With --direct each rep also sends the same messages straight to the sink and prints the sink's
own CPU per received message: issue 21's yardstick, interleaved with the binaries.
"""
import argparse, os, subprocess, time, signal, statistics
ap = argparse.ArgumentParser(); ap.add_argument('-c', type=int, default=50); ap.add_argument('-m', type=int, default=20000)
ap.add_argument('-r', type=int, default=3); ap.add_argument('--direct', action='store_true'); ap.add_argument('--backend-delay', type=float); ap.add_argument('bins', nargs='+'); a = ap.parse_args()
tick = os.sysconf('SC_CLK_TCK')
def stat(pid):
    """/proc/PID/stat's fields after the command name (field 3 is index 0)."""
    return open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
def cpu(pid):
    f = stat(pid)
    return (int(f[11]) + int(f[12])) / tick
def faults(pid):
    return int(stat(pid)[7])
sink = subprocess.Popen(['smtp-sink', '-u', 'nobody', '-c', '127.0.0.1:31025', '1000'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
backend_port = '31025'
proxy = None
if a.backend_delay is not None:
    backend_port = '31027'
    proxy = subprocess.Popen([os.path.join(os.path.dirname(os.path.abspath(__file__)), 'delay-proxy.py'), backend_port, '31025', str(a.backend_delay)])
    time.sleep(1.0)
    import socket
    s = socket.create_connection(('127.0.0.1', int(backend_port))); f = s.makefile('rb'); f.readline()
    trips = []
    for _ in range(20):
        t = time.perf_counter(); s.sendall(b'NOOP\r\n'); f.readline(); trips.append(time.perf_counter() - t)
    s.close()
    print(f'back end round trip through the proxy: median {statistics.median(trips)*1e3:.2f} ms', flush=True)
res = {b: [] for b in a.bins}
if a.direct:
    res['direct (smtp-sink)'] = []
def source(port, count):
    subprocess.run(['smtp-source', '-s', str(a.c), '-m', str(count), '-l', '4096', '-f', 'sender@example.com', '-t', 'rcpt@example.net', f'127.0.0.1:{port}'], check=True)
try:
    time.sleep(0.5)
    for r in range(a.r):
        if a.direct:
            source(31025, 2000)
            c0 = cpu(sink.pid); t0 = time.time()
            source(31025, a.m)
            dt = time.time() - t0; dc = cpu(sink.pid) - c0
            res['direct (smtp-sink)'].append((dc / a.m * 1e6, a.m / dt))
            print(f'direct (smtp-sink): {dc/a.m*1e6:.0f} µs/msg, {a.m/dt:.0f} msg/s', flush=True)
        for b in a.bins:
            env = dict(os.environ, MTAC_BIN=b, BENCH_STATE='/tmp/s6ab')
            fr = subprocess.Popen([os.path.join(os.path.dirname(os.path.abspath(__file__)), 'mtac-front.sh'), '31026', backend_port], env=env, stdout=open('/tmp/s6ab.log', 'w'), stderr=subprocess.STDOUT, start_new_session=True)
            time.sleep(1.0)
            subprocess.run(['smtp-source', '-s', str(a.c), '-m', '2000', '-l', '4096', '-f', 'sender@example.com', '-t', 'rcpt@example.net', '127.0.0.1:31026'], check=True)
            c0 = cpu(fr.pid); f0 = faults(fr.pid); t0 = time.time()
            subprocess.run(['smtp-source', '-s', str(a.c), '-m', str(a.m), '-l', '4096', '-f', 'sender@example.com', '-t', 'rcpt@example.net', '127.0.0.1:31026'], check=True)
            dt = time.time() - t0; dc = cpu(fr.pid) - c0; df = faults(fr.pid) - f0
            res[b].append((dc / a.m * 1e6, a.m / dt))
            os.killpg(fr.pid, signal.SIGTERM); fr.wait()
            print(f'{os.path.basename(b)}: {dc/a.m*1e6:.0f} µs/msg, {a.m/dt:.0f} msg/s, {df/a.m:.2f} page faults/msg', flush=True)
finally:
    sink.kill()
    if proxy:
        proxy.kill()
for b, v in res.items():
    print(f'{os.path.basename(b) if b.startswith("/") else b}: median {statistics.median(x for x,_ in v):.0f} µs/msg [{min(x for x,_ in v):.0f}-{max(x for x,_ in v):.0f}], {statistics.median(y for _,y in v):.0f} msg/s')
