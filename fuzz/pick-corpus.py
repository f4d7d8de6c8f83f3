#!/usr/bin/env python3
"""Shrink a grown fuzz corpus to at most LIMIT files for committing.

    python3 pick-corpus.py TARGET GROWN_DIR [LIMIT=200]

Run from fuzz/ after `cargo +nightly fuzz build`, with GROWN_DIR a copy of the grown
corpus/TARGET. `cargo fuzz cmin` keeps every file that adds a feature, which after a 10-minute
run is still hundreds to over a thousand files. This asks the target's own libFuzzer merge for
each file's coverage, keeps every hand-named file (seeds, `regress-*`; anything not named by its
SHA-1), then greedily adds the files that cover the most new edges until every edge is covered,
then the most new hit-count features, until LIMIT files. corpus/TARGET is replaced.
"""
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile


def main():
    target, grown = sys.argv[1], os.path.abspath(sys.argv[2])
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    binary = f"target/x86_64-unknown-linux-gnu/release/{target}"
    files = sorted(os.listdir(grown))
    protected = [f for f in files if not re.fullmatch(r"[0-9a-f]{40}", f)]

    with tempfile.TemporaryDirectory() as tmp:
        control = os.path.join(tmp, "merge.txt")
        empty = os.path.join(tmp, "empty")
        os.mkdir(empty)
        subprocess.run(
            [binary, "-merge=1", f"-merge_control_file={control}", "-timeout=10", empty, grown],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
        )
        lines = open(control).read().splitlines()

    # Control file: count, 0, one path per file, then "FT i features…" and "COV i edges…".
    count = int(lines[0])
    index = {os.path.basename(p): i for i, p in enumerate(lines[2:2 + count])}
    tables = {"FT": {}, "COV": {}}
    for line in lines[2 + count:]:
        parts = line.split()
        if parts and parts[0] in tables:
            tables[parts[0]][int(parts[1])] = set(parts[2:])

    chosen = []

    def greedy(table):
        covered = set()
        for f in protected + chosen:
            covered |= table.get(index.get(f, -1), set())
        left = {f: table.get(index[f], set()) for f in files
                if f not in protected and f not in chosen and f in index}
        size = {f: os.path.getsize(os.path.join(grown, f)) for f in left}
        while len(protected) + len(chosen) < limit:
            best, gain = None, 0
            for f, c in left.items():
                g = len(c - covered)
                if g > gain or (g == gain and g > 0 and size[f] < size[best]):
                    best, gain = f, g
            if best is None:
                break
            chosen.append(best)
            covered |= left.pop(best)
        return covered

    edges = greedy(tables["COV"])
    greedy(tables["FT"])

    out = os.path.join("corpus", target)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    seen = set()
    for f in protected + chosen:
        data = open(os.path.join(grown, f), "rb").read()
        digest = hashlib.sha1(data).hexdigest()
        if digest not in seen:
            seen.add(digest)
            shutil.copy(os.path.join(grown, f), out)
    every_edge = set().union(*tables["COV"].values()) if tables["COV"] else set()
    kept = os.listdir(out)
    print(f"{target}: {len(kept)} files, {sum(os.path.getsize(os.path.join(out, f)) for f in kept)} bytes, "
          f"{len(edges)} of {len(every_edge)} edges")


if __name__ == "__main__":
    main()
