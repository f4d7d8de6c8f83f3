# The one `mtac` binary. Called from flake.nix with pkgsStatic, so it is linked statically
# against musl: it runs from an empty root directory (no libc, no resolv.conf, no OpenSSL).
{ lib, rustPlatform, installShellFiles, src }:

rustPlatform.buildRustPackage {
  pname = "mtac";
  version = "0.1.0";
  inherit src;
  cargoLock.lockFile = ../Cargo.lock;
  cargoBuildFlags = [ "--bin" "mtac" ];
  # `mtac --version` names the commit and its date (build.rs), not the 1980 of Nix's
  # SOURCE_DATE_EPOCH.
  MTAC_COMMIT = src.shortRev or src.dirtyShortRev or "unknown";
  MTAC_BUILD_EPOCH = toString (src.lastModified or 315532800);
  nativeBuildInputs = [ installShellFiles ];
  # The binary writes its own man pages and completions (it runs on the build machine: static
  # x86-64).
  postInstall = ''
    $out/bin/mtac man-pages man
    installManPage man/*.1
    installShellCompletion --cmd mtac \
      --bash <($out/bin/mtac completions bash) \
      --zsh <($out/bin/mtac completions zsh) \
      --fish <($out/bin/mtac completions fish)
  '';
  # The test suite starts slapd, redis-server, clamd, spamd and rspamd: `.ci/run` runs it.
  doCheck = false;

  meta = {
    description = "Declarative SMTP perimeter for inbound-MX and submission farms";
    mainProgram = "mtac";
    platforms = lib.platforms.linux;
  };
}
