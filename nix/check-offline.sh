#!/usr/bin/env bash
# What can be checked of the Nix files on a machine that cannot fetch nixpkgs (.ci/run):
#   - every .nix file parses;
#   - the flake evaluates, packages, image and checks down to derivations, against nix/stub;
#   - the NixOS module, called with a node's settings, gives the service and the spool mount
#     we mean (ExecStart, hardening, tmpfs options).
# Not exercised here: building anything with real nixpkgs, the module inside the NixOS module
# system, the image's contents.
set -euo pipefail
cd "$(dirname "$0")/.."
nix=(nix --extra-experimental-features nix-command --extra-experimental-features flakes)
for f in flake.nix nix/*.nix nix/stub/flake.nix; do
    nix-instantiate --parse "$f" >/dev/null 2>/dev/null || { echo "nix: $f does not parse" >&2; nix-instantiate --parse "$f" >/dev/null; }
done
"${nix[@]}" flake check --no-build --no-write-lock-file --override-input nixpkgs path:./nix/stub 2>&1 | grep -v nixbld || true
"${nix[@]}" flake check --no-build --no-write-lock-file --override-input nixpkgs path:./nix/stub 2>/dev/null
result="$("${nix[@]}" eval --impure --raw --expr '
  let
    stub = builtins.getFlake "path:'"$PWD"'/nix/stub";
    pkgs = stub.legacyPackages.x86_64-linux;
    self = { packages.x86_64-linux.default = pkgs.rustPlatform.buildRustPackage {
      pname = "mtac"; version = "0"; src = "unused"; cargoLock.lockFile = ./Cargo.lock; meta.mainProgram = "mtac"; }; };
    node = (import ./nix/module.nix self) {
      inherit pkgs; lib = pkgs.lib;
      config.services.mtac = {
        enable = true; package = self.packages.x86_64-linux.default; ruleset = "/var/lib/mtac/mx.mtac";
        spoolSize = "1G"; uid = 2525; admin = "10.0.0.5:9325"; grace = 30; logFormat = "json";
        openFirewall = true; ports = [ 25 587 ];
      };
    };
    service = node.config.systemd.services.mtac.serviceConfig;
    mount = builtins.head node.config.systemd.mounts;
  in
  assert service.Type == "notify" && service.User == "mtac" && service.NoNewPrivileges;
  assert service.AmbientCapabilities == [ "CAP_NET_BIND_SERVICE" ];
  assert mount.where == "/run/mtac/spool" && mount.type == "tmpfs";
  assert node.config.networking.firewall.allowedTCPPorts == [ 25 587 ];
  service.ExecStart + "\n" + mount.options')"
expected_start="/bin/mtac run /var/lib/mtac/mx.mtac --log-format json --grace 30 --admin 10.0.0.5:9325"
case "$(head -1 <<<"$result")" in
    /nix/store/*"$expected_start") ;;
    *) echo "nix: unexpected ExecStart: $result" >&2; exit 1 ;;
esac
test "$(tail -1 <<<"$result")" = "size=1G,mode=0700,uid=2525,gid=2525,nosuid,nodev,noexec"
echo "nix: flake evaluates against the stub, module gives: $(head -1 <<<"$result" | sed 's|/nix/store/[^/]*||')"
