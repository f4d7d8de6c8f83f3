{
  description = "mtac: the mail perimeter for farms of identical front nodes";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";

  outputs = { self, nixpkgs }:
    let
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};
      # pkgsStatic builds for x86_64-unknown-linux-musl: one static binary, no glibc, no OpenSSL.
      mtac = pkgs.pkgsStatic.callPackage ./nix/package.nix { src = self; };
      ruleset = pkgs.callPackage ./nix/ruleset.nix {
        inherit mtac;
        policyDir = ./examples/company;
      };
    in
    {
      packages.${system} = {
        default = mtac;
        inherit mtac ruleset;
        image = pkgs.callPackage ./nix/image.nix { inherit mtac ruleset; };
      };

      nixosModules.default = import ./nix/module.nix self;

      checks.${system} = {
        # What CI does on every push: every shipped policy checks and its tests pass.
        policies = pkgs.runCommand "mtac-check-policies" { nativeBuildInputs = [ mtac ]; } ''
          cd ${self}
          for policy in examples/*/policy.kdl policies/tests/standard.kdl; do
            mtac check "$policy"
          done
          for tests in examples/*/*.test.kdl; do
            mtac test "$tests"
          done
          touch $out
        '';
        inherit ruleset;
      };
    };
}
