#!/usr/bin/env bash
# The node image without Nix and without a Docker engine, as `.ci/run` checks it:
#   1. a static mtac for x86_64-unknown-linux-musl (ldd: not a dynamic executable);
#   2. the OCI layout built twice from it and tests/image/policy.kdl: identical digests;
#   3. skopeo inspects it and umoci unpacks it;
#   4. the unpacked root, with nothing else in it, answers an SMTP session under chroot as the
#      image's user, and delivers the message into its maildir.
# Leaves the stripped binary in target/oci/mtac.static and the image in target/oci/mtac (for `skopeo copy oci:target/oci/mtac:TAG docker://…`).
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-musl
export CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-musl-gcc}"
cargo build --release --locked --target "$target" --bin mtac
built="target/$target/release/mtac"
# Static: no program interpreter, no shared library needed. Rust links musl binaries as
# static-pie (ASLR kept), for which ldd says "statically linked"; a non-PIE static binary would
# say "not a dynamic executable". Either is static; anything else is refused.
if readelf -lW "$built" | grep -q INTERP || readelf -dW "$built" | grep -q NEEDED; then
    echo "image: $built is dynamically linked:" >&2
    readelf -dW "$built" >&2
    exit 1
fi
case "$(ldd "$built" 2>&1)" in
    *"statically linked"* | *"not a dynamic executable"*) ;;
    *) echo "image: ldd does not call $built static: $(ldd "$built" 2>&1)" >&2; exit 1 ;;
esac
mkdir -p target/oci
bin=target/oci/mtac.static
strip -o "$bin" "$built"
echo "image: static binary, $(stat -c %s "$built") bytes, $(stat -c %s "$bin") stripped ($(file -b "$bin" | cut -d, -f1,4))"

work="$(mktemp -d)"
pid=""
cleanup() {
    status=$?
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
    if [ "$status" != 0 ] && [ -f "$work/node.log" ]; then
        echo "image: the node's log:" >&2
        cat "$work/node.log" >&2
    fi
    rm -rf "$work"
}
trap cleanup EXIT

"$bin" build tests/image/policy.kdl -o "$work/ruleset.mtac" --format json >/dev/null
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 1)}"
# A dynamically linked binary is refused: the image has no libc to run it.
if python3 nix/oci-image.py --binary /bin/true --ruleset "$work/ruleset.mtac" --out "$work/dynamic" 2>"$work/refusal"; then
    echo "image: a dynamically linked binary was packed" >&2
    exit 1
fi
grep -q "dynamically linked" "$work/refusal" || { cat "$work/refusal" >&2; exit 1; }
first="$(python3 nix/oci-image.py --binary "$bin" --ruleset "$work/ruleset.mtac" --out "$work/a" --tag test)"
second="$(python3 nix/oci-image.py --binary "$bin" --ruleset "$work/ruleset.mtac" --out "$work/b" --tag test)"
if [ "$first" != "$second" ] || ! diff -r "$work/a" "$work/b" >/dev/null; then
    echo "image: two builds differ: $first vs $second" >&2
    exit 1
fi
echo "image: reproducible, manifest $first"

inspected="$(skopeo inspect "oci:$work/a:test")"
python3 - "$inspected" "$first" <<'PY'
import json, sys
info = json.loads(sys.argv[1])
assert info["Digest"] == sys.argv[2], (info["Digest"], sys.argv[2])
assert info["Architecture"] == "amd64" and info["Os"] == "linux", info
assert len(info["Layers"]) == 1, info["Layers"]
print("image: skopeo inspect ok,", info["Layers"][0])
PY

umoci unpack --image "$work/a:test" "$work/bundle" >/dev/null
root="$work/bundle/rootfs"
test "$(stat -c %u "$root/run/mtac/spool")" = 65534
for shipped in etc/ssl/certs/ca-certificates.crt usr/share/man/man1/mtac.1 usr/share/man/man1/mtac-run.1 \
    usr/share/bash-completion/completions/mtac usr/share/zsh/site-functions/_mtac; do
    test -s "$root/$shipped" || { echo "image: $shipped is missing" >&2; exit 1; }
done
echo "image: umoci unpack ok: $(cd "$root" && find . -mindepth 1 | sort | tr '\n' ' ')"

# The unpacked root holds nothing but the image: no libc, no /dev, no /proc, no resolv.conf.
chroot --userspec=65534:65534 "$root" /usr/bin/mtac run /etc/mtac/ruleset.mtac --log-format json \
    >"$work/node.log" 2>&1 &
pid=$!
python3 - <<'PY'
import smtplib, time
for _ in range(100):
    try:
        smtp = smtplib.SMTP("127.0.0.1", 2526, timeout=10)
        break
    except OSError:
        time.sleep(0.1)
else:
    raise SystemExit("image: the node in the chroot never listened")
code, _ = smtp.ehlo("client.example.org")
assert code == 250, code
refused = smtp.sendmail("a@client.example.org", ["postmaster@example.test"], b"Subject: from the image\r\n\r\nhello\r\n")
assert refused == {}, refused
smtp.quit()
print("image: SMTP session answered from the chroot")
PY
kill -TERM "$pid"
wait "$pid" || true
pid=""
delivered="$(find "$root/var/lib/mtac/Maildir/new" -type f 2>/dev/null | wc -l || true)"
if [ "$delivered" != 1 ]; then
    echo "image: expected 1 delivered message, found $delivered" >&2
    exit 1
fi
rm -rf target/oci/mtac
cp -r "$work/a" target/oci/mtac
echo "image: ok (target/oci/mtac)"
