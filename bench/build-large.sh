#!/usr/bin/env bash
# The issue-2 benchmark: compile a policy of 1,000,000 networks, 1,000,000 addresses and 100,000
# domains, and report build time, peak memory, ruleset size against the raw input, and the time
# to open and verify the ruleset.
#
#   bench/build-large.sh            full size (generation ~30 s, build of mtac ~2-4 min on 2 cores)
#   bench/build-large.sh --quick    1/100 of every size, for a CI smoke run
#
# Environment: OUTDIR (default /tmp/mtac-bench-large or /tmp/mtac-bench-quick) keeps the generated
# policy between runs; it is regenerated only when missing. NO_BUILD=1 skips `cargo build`.
# Goals (issue 2): ruleset <= 40% of the raw input, open+verify <= 100 ms.
set -euo pipefail

quick=0
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done

root="$(cd "$(dirname "$0")/.." && pwd)"
if [ "$quick" = 1 ]; then
    scale=100
    outdir="${OUTDIR:-/tmp/mtac-bench-quick}"
else
    scale=1
    outdir="${OUTDIR:-/tmp/mtac-bench-large}"
fi
mtac="$root/target/release/mtac"
timefmt='wall %e s, user %U s, sys %S s, peak RSS %M KiB'

if [ ! -x /usr/bin/time ]; then
    echo "/usr/bin/time is missing: apt-get install time" >&2
    exit 2
fi

if [ ! -f "$outdir/policy.kdl" ]; then
    echo "== generating the policy in $outdir (scale 1/$scale)"
    python3 "$root/bench/gen-large-policy.py" "$outdir" --scale "$scale"
fi

if [ "${NO_BUILD:-0}" != 1 ]; then
    echo "== cargo build --release"
    (cd "$root" && cargo build --release --quiet)
fi

echo "== mtac build"
/usr/bin/time -f "$timefmt" -o "$outdir/build.time" \
    "$mtac" build "$outdir/policy.kdl" -o "$outdir/ruleset.mtac" >"$outdir/build.log" 2>&1 || {
    echo "mtac build failed:" >&2
    tail -n 40 "$outdir/build.log" >&2
    exit 1
}
build_time="$(cat "$outdir/build.time")"

size() { stat -c %s "$1"; }
raw=0
for f in policy.kdl cidrs.txt addresses.txt domains.txt; do
    raw=$((raw + $(size "$outdir/$f")))
done
ruleset=$(size "$outdir/ruleset.mtac")

# Open + verify: `mtac inspect` maps the file, checks its BLAKE3 hash and opens every table. It
# also starts a process and prints; so this is an upper bound on what a reload costs.
echo "== mtac inspect"
"$mtac" inspect "$outdir/ruleset.mtac" | tee "$outdir/inspect.txt"
if command -v hyperfine >/dev/null; then
    hyperfine --warmup 3 --runs 20 --export-json "$outdir/inspect.json" \
        "$mtac inspect $outdir/ruleset.mtac" >/dev/null
    verify_ms=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['results'][0]; \
print(f\"{r['mean']*1000:.1f} ms mean, {r['min']*1000:.1f} ms min (hyperfine, 20 runs)\")" "$outdir/inspect.json")
else
    verify_ms=$(python3 - "$mtac" "$outdir/ruleset.mtac" <<'EOF'
import subprocess, sys, time
runs = []
for i in range(23):
    t = time.perf_counter()
    subprocess.run([sys.argv[1], "inspect", sys.argv[2]], stdout=subprocess.DEVNULL, check=True)
    runs.append(time.perf_counter() - t)
runs = sorted(runs[3:])
print(f"{sum(runs) / len(runs) * 1000:.1f} ms mean, {runs[0] * 1000:.1f} ms min, "
      f"{runs[len(runs) // 2] * 1000:.1f} ms median (20 runs after 3 warm-ups)")
EOF
)
fi

echo
echo "== results (scale 1/$scale, $outdir)"
echo "mtac build:     $build_time"
printf 'raw input:      %d bytes (policy + cidrs + addresses + domains)\n' "$raw"
printf 'ruleset:        %d bytes\n' "$ruleset"
python3 -c "import sys; r=int(sys.argv[1])/int(sys.argv[2]); print(f'ratio:          {r:.1%} (goal <= 40%)')" "$ruleset" "$raw"
echo "open + verify:  $verify_ms (goal <= 100 ms)"
warnings=$(grep -c -E '^ *(warning|⚠)' "$outdir/build.log" || true)
echo "build output:   $(wc -l <"$outdir/build.log") lines, $warnings warnings (see $outdir/build.log)"
