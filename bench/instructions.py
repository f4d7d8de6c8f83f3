#!/usr/bin/python3
"""User-space instructions per relayed message, counted by callgrind: the node's own work,
without the scheduler's noise.

    bench/instructions.py [-c 10] [-m 1000] [--keep DIR] /tmp/mtac-before /tmp/mtac-after

On a 2-core machine shared with the generator and the sink, the CPU time per message moves by
±15% from run to run (bench/cpu-ab.py), more than most code changes do. Instructions do not:
for each binary this starts smtp-sink on 127.0.0.1:31025 and the binary as bench/mtac-front.sh
starts it on 127.0.0.1:31026 under `valgrind --tool=callgrind`, sends 300 warm-up messages,
zeroes the counters, sends -m messages of 4 KiB over -c sessions (one session per message,
smtp-source) and prints the instructions executed in user space by all of the node's threads
per message. The kernel's share (system calls, loopback TCP) is not in it: bench/cpu-ab.py
and the peers harness measure the whole. Repeated runs of one binary agree within 0.5%.
"""
import argparse, os, subprocess, time, signal, glob, re, tempfile, stat, shutil

ap = argparse.ArgumentParser()
ap.add_argument('-c', type=int, default=10)
ap.add_argument('-m', type=int, default=1000)
ap.add_argument('--keep', metavar='DIR', help='copy each callgrind dump to DIR/callgrind.BINARY, for callgrind_annotate')
ap.add_argument('bins', nargs='+')
a = ap.parse_args()
here = os.path.dirname(os.path.abspath(__file__))


def source(count):
    subprocess.run(['smtp-source', '-s', str(a.c), '-m', str(count), '-l', '4096', '-f', 'sender@example.com',
                    '-t', 'rcpt@example.net', '127.0.0.1:31026'], check=True)


def measure(binary, work):
    out = os.path.join(work, 'callgrind.out')
    wrapper = os.path.join(work, 'node')
    with open(wrapper, 'w') as f:
        f.write(f'#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file={out}.%p {binary} "$@"\n')
    os.chmod(wrapper, stat.S_IRWXU)
    log = os.path.join(work, 'node.log')
    env = dict(os.environ, MTAC_BIN=wrapper, BENCH_STATE=os.path.join(work, 'state'))
    node = subprocess.Popen([os.path.join(here, 'mtac-front.sh'), '31026', '31025'], env=env,
                            stdout=open(log, 'w'), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while 'session threads' not in open(log).read():
            if time.time() > deadline or node.poll() is not None:
                raise SystemExit(f'{binary}: the node did not start under valgrind; see {log}')
            time.sleep(0.5)
        source(300)
        subprocess.run(['callgrind_control', '-z', str(node.pid)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        source(a.m)
        subprocess.run(['callgrind_control', '-d', str(node.pid)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait()
    # The dump asked for above is part 1 (what ran after the zeroing).
    dumps = glob.glob(f'{out}.{node.pid}.1')
    if not dumps:
        raise SystemExit(f'{binary}: no callgrind dump in {work}')
    if a.keep:
        os.makedirs(a.keep, exist_ok=True)
        shutil.copy(dumps[0], os.path.join(a.keep, f'callgrind.{os.path.basename(binary)}'))
    summary = re.search(r'^summary: (\d+)', open(dumps[0]).read(), re.M)
    return int(summary.group(1)) / a.m


sink = subprocess.Popen(['smtp-sink', '-u', 'nobody', '-c', '127.0.0.1:31025', '1000'],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    time.sleep(0.5)
    for binary in a.bins:
        with tempfile.TemporaryDirectory(prefix='mtac-instructions-') as work:
            per_message = measure(binary, work)
        print(f'{os.path.basename(binary)}: {per_message:,.0f} instructions per message (user space, '
              f'{a.m} messages, {a.c} sessions)', flush=True)
finally:
    sink.kill()
