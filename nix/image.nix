# The node image: the static binary, a ruleset, and the directories the node writes, owned by
# the unprivileged user it runs as. Same layout as nix/oci-image.py, which builds it without Nix.
{ dockerTools, cacert, mtac, ruleset }:

dockerTools.buildLayeredImage {
  name = "mtac";
  tag = mtac.version;
  # cacert: /etc/ssl/certs/ca-certificates.crt, for back ends and directories reached over TLS.
  contents = [ mtac cacert ];
  extraCommands = ''
    mkdir -p etc/mtac run/mtac/spool var/lib/mtac tmp
    cp ${ruleset}/ruleset.mtac etc/mtac/ruleset.mtac
    chmod 1777 tmp
    chmod 0700 run/mtac/spool var/lib/mtac
  '';
  fakeRootCommands = ''
    chown 65534:65534 run/mtac/spool var/lib/mtac
  '';
  config = {
    User = "65534:65534";
    Entrypoint = [ "${mtac}/bin/mtac" ];
    Cmd = [ "run" "/etc/mtac/ruleset.mtac" "--log-format" "json" ];
    ExposedPorts = {
      "25/tcp" = { };
      "465/tcp" = { };
      "587/tcp" = { };
    };
    StopSignal = "SIGTERM";
  };
}
