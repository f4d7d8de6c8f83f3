# A NixOS farm node: `services.mtac.enable = true;` with the ruleset pushed to
# `services.mtac.ruleset` (the node reloads it by itself when the file is replaced).
self:
{ config, lib, pkgs, ... }:

let
  cfg = config.services.mtac;
  inherit (lib) mkOption mkEnableOption mkIf types;
in
{
  options.services.mtac = {
    enable = mkEnableOption "the mtac mail perimeter node";

    package = mkOption {
      type = types.package;
      default = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      description = "The mtac package (the static binary).";
    };

    ruleset = mkOption {
      type = types.str;
      default = "/var/lib/mtac/ruleset.mtac";
      description = ''
        The compiled ruleset (`mtac build`). Push a new one with an atomic rename (rsync does);
        the node reloads it without dropping a session and keeps the old one if it is corrupt.
      '';
    };

    spoolSize = mkOption {
      type = types.str;
      default = "2G";
      description = "Size of the RAM-disk (tmpfs) spool mounted on /run/mtac/spool; the policy's `spool` must point there.";
    };

    uid = mkOption {
      type = types.int;
      default = 2525;
      description = "The uid and gid of the mtac user (the spool tmpfs is mounted for it).";
    };

    admin = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "10.0.0.5:9325";
      description = "The admin listener (metrics, health, status); null: the policy's (127.0.0.1:9325 by default).";
    };

    grace = mkOption {
      type = types.ints.positive;
      default = 30;
      description = "Seconds sessions may finish after a stop before they are told 421.";
    };

    logFormat = mkOption {
      type = types.enum [ "text" "json" ];
      default = "json";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
    };

    ports = mkOption {
      type = types.listOf types.port;
      default = [ 25 ];
      description = "The SMTP ports of the policy's listeners, opened with openFirewall.";
    };
  };

  config = mkIf cfg.enable {
    users.users.mtac = {
      isSystemUser = true;
      group = "mtac";
      uid = cfg.uid;
    };
    users.groups.mtac.gid = cfg.uid;

    # The spool on a RAM disk of its own: a message lives there only while its sender waits.
    systemd.mounts = [
      {
        what = "tmpfs";
        where = "/run/mtac/spool";
        type = "tmpfs";
        options = "size=${cfg.spoolSize},mode=0700,uid=${toString cfg.uid},gid=${toString cfg.uid},nosuid,nodev,noexec";
        wantedBy = [ "mtac.service" ];
        before = [ "mtac.service" ];
      }
    ];

    systemd.services.mtac = {
      description = "mtac mail perimeter node";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" "run-mtac-spool.mount" ];
      requires = [ "run-mtac-spool.mount" ];
      serviceConfig = {
        # The node tells systemd when its listeners are bound, and pings the watchdog.
        Type = "notify";
        NotifyAccess = "main";
        WatchdogSec = "30s";
        ExecStart = lib.concatStringsSep " " ([
          (lib.getExe cfg.package)
          "run"
          cfg.ruleset
          "--log-format"
          cfg.logFormat
          "--grace"
          (toString cfg.grace)
        ] ++ lib.optionals (cfg.admin != null) [ "--admin" cfg.admin ]);
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        Restart = "on-failure";
        TimeoutStopSec = cfg.grace + 10;
        LimitNOFILE = 1048576;

        User = "mtac";
        Group = "mtac";
        StateDirectory = "mtac";
        StateDirectoryMode = "0750";
        UMask = "0077";
        ReadWritePaths = [ "/run/mtac/spool" ];

        # Port 25 without root, and nothing else.
        AmbientCapabilities = [ "CAP_NET_BIND_SERVICE" ];
        CapabilityBoundingSet = [ "CAP_NET_BIND_SERVICE" ];
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectProc = "invisible";
        ProcSubset = "pid";
        RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" "~@privileged" "~@resources" ];
      };
    };

    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall cfg.ports;
  };
}
