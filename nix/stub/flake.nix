# A stand-in for nixpkgs, for `nix flake check --no-build` on machines that cannot fetch it
# (.ci/run): it evaluates mtac's flake — every package, the image, the checks — down to
# derivations, with the same call shapes as nixpkgs (callPackage, rustPlatform,
# dockerTools, runCommand). Nothing built from it is meant to run.
{
  outputs = { self }:
    let
      system = "x86_64-linux";
      drv = name: attrs: derivation ({
        inherit name system;
        builder = "/bin/sh";
        args = [ "-c" "echo stub >$out" ];
      } // attrs);
      # Just enough of nixpkgs' lib for nix/module.nix (option declarations are returned as-is).
      lib = {
        platforms.linux = [ system ];
        mkOption = attrs: attrs;
        mkEnableOption = description: { default = false; inherit description; };
        mkIf = condition: value: if condition then value else { };
        types = {
          package = "package"; str = "str"; int = "int"; bool = "bool"; port = "port";
          ints.positive = "positive"; nullOr = t: t; enum = values: values; listOf = t: [ t ];
        };
        getExe = p: "${p}/bin/${p.meta.mainProgram}";
        concatStringsSep = builtins.concatStringsSep;
        optionals = condition: list: if condition then list else [ ];
      };
      callPackageWith = scope: f: args:
        let fn = if builtins.isFunction f then f else import f;
        in fn (builtins.intersectAttrs (builtins.functionArgs fn) scope // args);
      pkgs = rec {
        inherit lib;
        callPackage = callPackageWith pkgs;
        runCommand = name: env: script: drv name { buildCommand = script; };
        rustPlatform.buildRustPackage = attrs:
          assert builtins.pathExists attrs.cargoLock.lockFile;
          drv "${attrs.pname}-${attrs.version}" { inherit (attrs) version; src = attrs.src; }
          // { inherit (attrs) version meta; };
        dockerTools.buildLayeredImage = attrs:
          drv "docker-image-${attrs.name}.tar.gz" { config = builtins.toJSON attrs.config; };
        pkgsStatic = pkgs;
        coreutils = drv "coreutils" { };
        cacert = drv "cacert" { };
        installShellFiles = drv "install-shell-files" { };
        stdenv.hostPlatform.system = system;
      };
    in
    {
      legacyPackages.${system} = pkgs;
    };
}
