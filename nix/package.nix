# The one `mtac` binary. Called from flake.nix with pkgsStatic, so it is linked statically
# against musl: it runs from an empty root directory (no libc, no resolv.conf, no OpenSSL).
{ lib, rustPlatform, src }:

rustPlatform.buildRustPackage {
  pname = "mtac";
  version = "0.1.0";
  inherit src;
  cargoLock.lockFile = ../Cargo.lock;
  cargoBuildFlags = [ "--bin" "mtac" ];
  # The test suite starts slapd, redis-server, clamd, spamd and rspamd: `.ci/run` runs it.
  doCheck = false;

  meta = {
    description = "Declarative SMTP perimeter for inbound-MX and submission farms";
    mainProgram = "mtac";
    platforms = lib.platforms.linux;
  };
}
