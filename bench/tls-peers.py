#!/usr/bin/python3
"""STARTTLS inbound, mtac vs Postfix side by side in one run (issue 21; BENCHMARKS.md,
"STARTTLS inbound (mtac vs Postfix)").

    bench/tls-peers.py                      # targets direct mtac postfix, c = 1 10 50,
                                            # 1 and 10 messages per session, 3 reps
    bench/tls-peers.py --sessions "10 50" --per-session 1 --reps 1 --messages 1000

One back end per target: a fresh `smtp-sink -c` (its message counter checks that every message a
front acknowledged reached it). Targets:
  mtac     bench/mtac-front.sh (the peers harness's mtac policy) plus `tls` with the run's
           certificate; the release binary.
  postfix  the peers harness's postfix-proxy target (smtpd + smtpd_proxy_filter: no queue file,
           the client's "." answered with the back end's reply), plus smtpd TLS with the same
           certificate (smtpd_tls_security_level=may) and the tlsmgr service.
  direct   the sink itself, without TLS (it has none): the plain-SMTP ceiling of generator, sink
           and loopback on this machine, not a TLS figure.
The load is bench/tls-load (target/release/tls-load): per run a fixed message count, the same
for every target, `--sessions` at once, `--per-session` messages per connection, no TLS session
resumption (every connection a full handshake). Runs are interleaved (rep 1 of a point for every
target, then the next point, ...; target order rotated per rep) so every target sees the same
drifting machine. CPU per message = utime+stime of the target's whole process tree (reaped
children included) over the run / messages sent, read from /proc exactly as the peers harness
does (its lib/bench.py is imported for that, the sink counter and the noise share).

Needs: postfix (smtp-sink), openssl, the peers harness (--harness, default ../shared/bench beside
the repository). Writes runs.jsonl and summary.md under --out (default
/var/tmp/mtac-tls-bench/results/STAMP); runtime state under /var/tmp/mtac-tls-bench/run/.
Everything it starts it stops, by PID.
"""
import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
STATE = '/var/tmp/mtac-tls-bench'


def log(*a):
    print('[%s]' % time.strftime('%H:%M:%S'), *a, file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--targets', default='direct mtac postfix')
    p.add_argument('--sessions', default='1 10 50')
    p.add_argument('--per-session', default='1 10')
    p.add_argument('--messages', type=int, default=2000,
                   help='messages per run at 1 message per session, the same for every target; with K per '
                        'session, min(K, 4) times as many (those runs are faster: CPU ticks need the length)')
    p.add_argument('--size', type=int, default=4096)
    p.add_argument('--reps', type=int, default=3)
    p.add_argument('--key', choices=['ec', 'rsa'], default='ec',
                   help='certificate key: ECDSA P-256 (default) or RSA 2048')
    p.add_argument('--tls-version', choices=['1.2', '1.3'], help='offer only this TLS version (default: both)')
    p.add_argument('--resume', action='store_true',
                   help="resume TLS sessions with the target's tickets (tls-load --resume)")
    p.add_argument('--harness', default=os.path.join(os.path.dirname(REPO), 'shared', 'bench'))
    p.add_argument('--target-dir', default=os.environ.get('CARGO_TARGET_DIR', os.path.join(REPO, 'target')))
    p.add_argument('--no-build', action='store_true', help='use the release binaries as they are')
    p.add_argument('--port-base', type=int, default=32100)
    p.add_argument('--out', default='')
    p.add_argument('--run-timeout', type=float, default=300, help='seconds one generator run may take')
    return p.parse_args()


ARGS = parse_args()
sys.path.insert(0, os.path.join(ARGS.harness, 'lib'))
import bench  # noqa: E402  (the peers harness: /proc snapshots, sink counter, greeting wait)

STARTED = []  # callables that stop what was started, last first


def stop_all():
    while STARTED:
        try:
            STARTED.pop()()
        except Exception as e:  # one failed stop must not leave the others running
            log('stop failed:', e)


def stop_group(proc):
    """TERM the process group `proc` leads (started with setsid), KILL after 10 s."""
    def stop():
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
    return stop


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(('127.0.0.1', port))
            return True
        except OSError:
            return False


def next_ports():
    while not (port_free(ARGS.port_base) and port_free(ARGS.port_base + 1)):
        ARGS.port_base += 2
    ARGS.port_base += 2
    return ARGS.port_base - 2, ARGS.port_base - 1


def offers_starttls(port, timeout=30):
    """Whether EHLO on 127.0.0.1:port lists STARTTLS, once the server greets."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(('127.0.0.1', port), timeout=5) as s:
                f = s.makefile('rb')
                line = f.readline()
                while line[3:4] == b'-':  # mtac's first contact: "220-" now, "220 " after pregreet
                    line = f.readline()
                s.sendall(b'EHLO probe.example\r\n')
                ehlo = []
                while True:
                    line = f.readline()
                    ehlo.append(line)
                    if line[3:4] != b'-':
                        break
                s.sendall(b'QUIT\r\n')
                return any(l[4:].strip().upper() == b'STARTTLS' for l in ehlo)
        except OSError:
            time.sleep(0.3)
    return False


def certificate(directory):
    cert, key = os.path.join(directory, 'cert.pem'), os.path.join(directory, 'key.pem')
    newkey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1'] if ARGS.key == 'ec' \
        else ['-newkey', 'rsa:2048']
    subprocess.run(['openssl', 'req', '-x509', *newkey, '-nodes', '-days', '30',
                    '-subj', '/CN=mx.bench.example', '-addext', 'subjectAltName=DNS:mx.bench.example',
                    '-keyout', key, '-out', cert], check=True, capture_output=True)
    os.chmod(key, 0o640)
    return cert, key


def start_sink(directory, port):
    os.makedirs(directory, exist_ok=True)
    counter = os.path.join(directory, 'sink.counter')
    proc = subprocess.Popen(['smtp-sink', '-u', 'postfix', '-c', '-m', '4096', '127.0.0.1:%d' % port, '4096'],
                            stdout=open(counter, 'wb'), stderr=open(os.path.join(directory, 'sink.err'), 'wb'),
                            stdin=subprocess.DEVNULL, start_new_session=True)
    STARTED.append(stop_group(proc))
    if not bench.wait_greeting(port, 20):
        sys.exit('the back end smtp-sink did not start on %d' % port)
    return proc, counter


class Target:
    """One server under test: its port, the roots of its process tree, its sink's counter."""

    def __init__(self, name, cert, key):
        self.name = name
        self.dir = os.path.join(STATE, 'run', name)
        os.makedirs(self.dir, exist_ok=True)
        self.port, self.backend = next_ports()
        self.sink, self.counter = start_sink(self.dir, self.backend)
        self.plain = name == 'direct'
        if name == 'direct':
            self.port, self.roots, self.version = self.backend, lambda: [self.sink.pid], 'smtp-sink (no TLS)'
        elif name == 'mtac':
            self.start_mtac(cert, key)
        elif name == 'postfix':
            self.start_postfix(cert, key)
        else:
            sys.exit('unknown target %s (direct, mtac, postfix)' % name)
        if not self.plain and not offers_starttls(self.port):
            sys.exit('%s does not offer STARTTLS on %d (see %s)' % (name, self.port, self.dir))

    def start_mtac(self, cert, key):
        binary = os.path.join(ARGS.target_dir, 'release', 'mtac')
        env = dict(os.environ, BENCH_STATE=self.dir, MTAC_BIN=binary,
                   MTAC_FRONT_TLS_CERT=cert, MTAC_FRONT_TLS_KEY=key)
        out = open(os.path.join(self.dir, 'mtac.log'), 'wb')
        proc = subprocess.Popen([os.path.join(HERE, 'mtac-front.sh'), str(self.port), str(self.backend)],
                                env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)
        STARTED.append(stop_group(proc))
        if not bench.wait_greeting(self.port, 30):
            sys.exit('mtac did not start (%s/mtac.log)' % self.dir)
        self.roots = lambda: [proc.pid]  # the script execs the node: one process
        self.version = subprocess.run([binary, '--version'], capture_output=True, text=True).stdout.strip()

    def start_postfix(self, cert, key):
        script = os.path.join(ARGS.harness, 'targets', 'postfix-proxy.sh')
        env = dict(os.environ, BENCH_STATE=self.dir, BENCH_ROOT=ARGS.harness, VARIANT='')
        subprocess.run([script, 'start', str(self.port), str(self.backend)], env=env, check=True)
        STARTED.append(lambda: subprocess.run([script, 'stop'], env=env))
        etc = os.path.join(self.dir, 'postfix', 'etc')
        # The harness's instance has no TLS; smtpd gets it as an MX has it (offered, not required),
        # and tlsmgr (Debian's master.cf line; the harness's template leaves it out) for its cache.
        subprocess.run(['postconf', '-c', etc, '-e', 'smtpd_tls_cert_file=' + cert, 'smtpd_tls_key_file=' + key,
                        'smtpd_tls_security_level=may', 'smtpd_tls_loglevel=0'], check=True)
        with open(os.path.join(etc, 'master.cf'), 'a') as f:
            f.write('tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n')
        subprocess.run(['postfix', '-c', etc, 'reload'], check=True, capture_output=True)
        pids = lambda: [int(p) for p in subprocess.run([script, 'pids'], env=env, capture_output=True,
                                                        text=True).stdout.split() if p.isdigit()]
        self.roots = pids
        self.version = 'postfix %s (smtpd_proxy_filter, TLS may)' % subprocess.run(
            ['postconf', '-d', '-h', 'mail_version'], capture_output=True, text=True).stdout.strip()


def generator(port, sessions, per_session, messages, plain):
    binary = os.path.join(ARGS.target_dir, 'release', 'tls-load')
    cmd = [binary, '127.0.0.1:%d' % port, '--sessions', str(sessions), '--per-session', str(per_session),
           '--messages', str(messages), '--size', str(ARGS.size), '--json']
    if plain:
        cmd.append('--plain')
    else:
        if ARGS.tls_version:
            cmd += ['--tls-version', ARGS.tls_version]
        if ARGS.resume:
            cmd.append('--resume')
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=ARGS.run_timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None
    if proc.returncode not in (0, 1):
        sys.exit('tls-load failed: %s' % err.decode(errors='replace'))
    return json.loads(out)


def measure(target, sessions, per_session, messages):
    """One run: the generator's report plus the target's CPU, the back end's count, the noise."""
    roots = target.roots()
    everyone = roots + [target.sink.pid]
    before_sink = bench.sink_mesg(target.counter) or 0
    load = bench.loadavg()
    busy0, _, steal0 = bench.sys_ticks()
    snap0 = bench.Snap()
    gen0 = os.times()
    t0 = time.monotonic()
    report = generator(target.port, sessions, per_session, messages, target.plain)
    wall = time.monotonic() - t0
    snap1 = bench.Snap()
    gen1 = os.times()
    busy1, _, steal1 = bench.sys_ticks()
    if report is None:
        return dict(target=target.name, sessions=sessions, per_session=per_session, messages=messages,
                    failed=messages, failures={'run timeout': messages}, sent=0)
    cpu_ticks = snap1.cpu_of(roots) - snap0.cpu_of(roots)
    # The generator is our child: its CPU shows in our children's times once reaped.
    gen_s = (gen1.children_user - gen0.children_user) + (gen1.children_system - gen0.children_system)
    ours = snap1.cpu_of(everyone) - snap0.cpu_of(everyone) + gen_s * bench.HZ
    cap = max(wall, 1e-6) * bench.HZ * bench.NCPU
    noise = (max(0.0, (busy1 - busy0) - ours) + (steal1 - steal0)) / cap
    # The sink counts as it goes; give its counter a moment to catch up with the last 250.
    received = 0
    for _ in range(20):
        received = (bench.sink_mesg(target.counter) or 0) - before_sink
        if received >= report['sent']:
            break
        time.sleep(0.1)
    sent = report['sent']
    return dict(target=target.name, sessions=sessions, per_session=per_session, messages=messages,
                sent=sent, failed=report['failed'], failures=report['failures'],
                tls_sessions=report['tls_sessions'], resumed=report.get('resumed', 0), wall_s=report['wall_seconds'],
                msg_per_s=report['messages_per_second'],
                cpu_us_per_msg=(cpu_ticks / bench.HZ * 1e6 / sent) if sent else None,
                generator_us_per_msg=(gen_s * 1e6 / sent) if sent else None,
                backend_received=received, backend_short=received < sent,
                noise=round(noise, 3), load=load)


def median(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0):
    return '-' if v is None else ('{:,.%df}' % digits).format(v)


def summarize(runs, names, points, commit, versions, out):
    lines = ['STARTTLS inbound, commit %s, %s, %d-byte bodies, %d messages per run (x min(K, 4) at K per session), %s certificate, '
             'median of %d reps' % (commit, time.strftime('%Y-%m-%d'), ARGS.size, ARGS.messages,
                                    'ECDSA P-256' if ARGS.key == 'ec' else 'RSA 2048', ARGS.reps), '']
    if ARGS.tls_version:
        lines[0] += ', TLS %s only' % ARGS.tls_version
    if ARGS.resume:
        lines[0] += ', sessions resumed where the target allows (%d of %d TLS sessions)' % (
            sum(r.get('resumed', 0) for r in runs), sum(r.get('tls_sessions', 0) for r in runs))
    head = '| sessions | msgs/session |'
    for n in names:
        head += ' %s msg/s |' % n
    head += ' mtac/Postfix |'
    for n in names:
        if n != 'direct':
            head += ' %s µs CPU/msg |' % n
    lines += [head, '|' + '---|' * (head.count('|') - 1)]
    problems = []
    for (s, k) in points:
        cells = {n: [r for r in runs if r['target'] == n and r['sessions'] == s and r['per_session'] == k]
                 for n in names}
        rate = {n: median(cells[n], 'msg_per_s') for n in names}
        cpu = {n: median(cells[n], 'cpu_us_per_msg') for n in names}
        row = '| %d | %d |' % (s, k)
        for n in names:
            noisy = ' †' if (median(cells[n], 'noise') or 0) > bench.NOISY else ''
            row += ' %s%s |' % (fmt(rate[n]), noisy)
        ratio = rate['mtac'] / rate['postfix'] if rate.get('mtac') and rate.get('postfix') else None
        row += ' %s |' % (fmt(ratio, 2) + '×' if ratio else '-')
        for n in names:
            if n != 'direct':
                row += ' %s |' % fmt(cpu[n])
        lines.append(row)
        for n in names:
            for r in cells[n]:
                if r['failed'] or r.get('backend_short'):
                    problems.append('%s c=%d k=%d: %d failed %s, back end got %s of %d sent'
                                    % (n, s, k, r['failed'], r['failures'], r.get('backend_received'), r['sent']))
    lines += ['', '† median run with more than %d%% of the CPUs used by other processes (noise).'
              % (bench.NOISY * 100)]
    loads = [r['load'] for r in runs if 'load' in r]
    if loads:
        lines += ['Load average (1 min) before a run: %s to %s; noise (median per target): %s.' % (
            fmt(min(loads), 2), fmt(max(loads), 2),
            ', '.join('%s %d%%' % (n, 100 * (median([r for r in runs if r['target'] == n], 'noise') or 0))
                      for n in names))]
    gen = median(runs, 'generator_us_per_msg')
    lines += ['The generator (tls-load, one thread) itself: %s µs CPU per message (median of all runs).' % fmt(gen)]
    lines += ['Versions: ' + '; '.join('%s = %s' % kv for kv in versions.items())]
    lines += ['Failures / back end short: ' + ('none' if not problems else '')] + ['- ' + p for p in problems]
    text = '\n'.join(lines) + '\n'
    with open(os.path.join(out, 'summary.md'), 'w') as f:
        f.write(text)
    print(text)


def main():
    names = ARGS.targets.split()
    points = [(int(s), int(k)) for k in ARGS.per_session.split() for s in ARGS.sessions.split()]
    stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
    out = ARGS.out or os.path.join(STATE, 'results', stamp)
    os.makedirs(out, exist_ok=True)
    if not ARGS.no_build:
        log('cargo build --release (mtac, tls-load)')
        subprocess.run(['cargo', 'build', '--release', '-p', 'mtac', '-p', 'mtac-tls-load'], cwd=REPO, check=True)
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    if subprocess.run(['git', 'diff', '--quiet', 'HEAD'], cwd=REPO).returncode != 0:
        commit += '+changes'
    os.makedirs(os.path.join(STATE, 'run'), exist_ok=True)
    cert, key = certificate(os.path.join(STATE, 'run'))
    targets = []
    try:
        for n in names:
            log('starting', n)
            targets.append(Target(n, cert, key))
        versions = {t.name: t.version for t in targets}
        for t in targets:  # warm-up, not recorded (also mtac's one-time pregreet wait per client)
            measure(t, 10, 1, 200)
        runs = []
        with open(os.path.join(out, 'runs.jsonl'), 'w') as jl:
            for rep in range(ARGS.reps):
                order = targets[rep % len(targets):] + targets[:rep % len(targets)]
                for (s, k) in points:
                    for t in order:
                        r = measure(t, s, k, ARGS.messages * min(k, 4))
                        r.update(rep=rep, commit=commit)
                        runs.append(r)
                        jl.write(json.dumps(r) + '\n')
                        log('%-8s c=%-3d k=%-3d %8s msg/s %6s µs/msg sent %d failed %d noise %.2f'
                            % (t.name, s, k, fmt(r.get('msg_per_s')), fmt(r.get('cpu_us_per_msg')),
                               r['sent'], r['failed'], r.get('noise', 0)))
        summarize(runs, names, points, commit, versions, out)
        log('results in', out)
    finally:
        stop_all()


if __name__ == '__main__':
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
