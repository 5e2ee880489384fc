# NixOS module: services.ironpxe.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.ironpxe;
  helpers = import ./lib.nix;
  settingsFormat = pkgs.formats.toml { };
  settings = helpers.mkSettings {
    inherit (cfg) settings machines interface dhcp;
    adminTokenFile = if cfg.adminTokenFile == null then null else adminTokenCredential;
  };
  # The admin token reaches the DynamicUser service as a systemd credential.
  adminTokenCredential = "/run/credentials/ironpxe.service/admin-token";
  configFile = settingsFormat.generate "ironpxe.toml" settings;
  args = helpers.mkArgs {
    inherit (cfg) apiServer apiRequestTimeout interface debug dhcpNoBind extraArguments
      ipv6 listenAddress6 ipv6Range ipv6Stateful forceDhcpServer;
    inherit settings;
    stateDir = "/var/lib/ironpxe";
    configFile = "${configFile}";
  };
  ports = helpers.firewallPorts settings;
  inherit (lib) mkOption types;

  machineType = types.submodule {
    options = {
      mac = mkOption {
        type = types.str;
        example = "52:54:00:12:34:56";
        description = "MAC address of the machine's boot NIC.";
      };
      profile = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Profile (a `settings.profiles` entry) the machine boots.";
      };
      kernel = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Kernel for this machine, overriding its profile's.";
      };
      initrd = mkOption {
        type = types.nullOr (types.listOf types.str);
        default = null;
        description = "Initrds for this machine, overriding its profile's.";
      };
      cmdline = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Kernel command line for this machine, overriding its profile's.";
      };
      cmdline_append = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Appended (after one space) to the profile's or the machine's command line, e.g. the node's own init= and nixos.install=.";
      };
      message = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Message shown on the machine's console before it boots.";
      };
      boot = mkOption {
        type = types.nullOr (types.enum [ "netboot" "local" "ignore" ]);
        default = null;
        description = "`netboot` (default), `local` (leave to the next boot device) or `ignore`.";
      };
      once = mkOption {
        type = types.nullOr types.bool;
        default = null;
        description = "Netboot until the installer reports success (POST to its `{{ DONE_URL }}`), then boot from the local disk until `ironpxe reinstall`; overrides the profile's `once`.";
      };
      ip = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "10.0.0.30";
        description = "The machine's reserved address, handed out by the built-in DHCP server (`dhcp.mode = \"server\"`).";
      };
      hostname = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Host name handed out with the reservation (default: the machine's name).";
      };
      bmc = mkOption {
        type = types.nullOr (types.submodule {
          options = {
            address = mkOption {
              type = types.str;
              example = "10.1.0.30";
              description = "The BMC's address (`host` or `host:port`), reached with IPMI over LAN.";
            };
            user = mkOption {
              type = types.str;
              description = "The IPMI user.";
            };
            password_file = mkOption {
              type = types.str;
              description = "A file holding the IPMI password, readable by the service (e.g. a systemd credential).";
            };
            cipher_suite = mkOption {
              type = types.nullOr types.int;
              default = null;
              description = "IPMI 2.0 cipher suite (`ipmitool -C`), when the BMC needs one.";
            };
          };
        });
        default = null;
        description = "The machine's BMC, for `ironpxe reinstall --power-cycle` (PXE next, then a power cycle).";
      };
    };
  };
in
{
  options.services.ironpxe = {
    enable = lib.mkEnableOption "ironpxe, the network boot server (ProxyDHCP, TFTP, HTTP)";

    package = mkOption {
      type = types.package;
      default = pkgs.ironpxe or (pkgs.callPackage ./package.nix { });
      defaultText = lib.literalExpression "pkgs.ironpxe";
      description = "The ironpxe package.";
    };

    interface = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "enp3s0";
      description = "The data NIC: ProxyDHCP answers only requests arriving on it.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open UDP 67, 69 and 4011 and the HTTP and status TCP ports.";
    };

    settings = mkOption {
      type = settingsFormat.type;
      default = { };
      example = lib.literalExpression ''
        {
          server.http_port = 80;
          profiles.compute = {
            kernel = "/srv/netboot/bzImage";
            initrd = [ "/srv/netboot/initrd" ];
            cmdline = "init=/nix/store/...-nixos-system/init loglevel=4";
          };
        }
      '';
      description = "ironpxe.toml contents (`[server]`, `[ipxe]`, `[profiles.NAME]`, `[[machines]]`), rendered as TOML.";
    };

    machines = mkOption {
      type = types.attrsOf machineType;
      default = { };
      example = lib.literalExpression ''{ node-00 = { mac = "52:54:00:00:00:10"; profile = "compute"; }; }'';
      description = "Machines by name; appended to `settings.machines` with the name as `name`.";
    };

    dhcp = {
      mode = mkOption {
        type = types.enum [ "proxy" "server" ];
        default = "proxy";
        description = "`proxy`: ProxyDHCP next to the site's DHCP server (never hands out addresses). `server`: ironpxe is the data network's DHCP server, with the machines' `ip` reservations and an optional pool.";
      };
      subnet = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "10.0.0.0/24";
        description = "The data network (server mode).";
      };
      pool = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "10.0.0.100-10.0.0.199";
        description = "Addresses for machines without a reservation (server mode; none by default).";
      };
      leaseTime = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "12h";
        description = "Lease time (server mode; default 1h).";
      };
      router = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Default gateway handed out (server mode).";
      };
      dns = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "DNS servers handed out (server mode).";
      };
    };

    forceDhcpServer = mkOption {
      type = types.bool;
      default = false;
      description = "In server mode, start even when another DHCP server answers on the data NIC (by default ironpxe refuses to).";
    };

    adminTokenFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/ironpxe-admin-token";
      description = "File holding the Bearer token of the admin API (`POST /api/v1/machines/<mac>/reinstall`, `ironpxe reinstall`); passed to the service as a systemd credential.";
    };

    apiServer = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "file:///etc/ironpxe/api";
      description = "Run in pixiecore API mode against this URL (http, https or file) instead of the config file.";
    };

    apiRequestTimeout = mkOption {
      type = types.str;
      default = "5s";
      description = "Timeout of one API request (API mode).";
    };

    dhcpNoBind = mkOption {
      type = types.bool;
      default = false;
      description = "Receive DHCP without binding UDP 67 (next to a DHCP server on this host); needs CAP_NET_RAW.";
    };

    ipv6 = mkOption {
      type = types.bool;
      default = false;
      description = "Also boot over IPv6: answer DHCPv6 PXE and UEFI HTTP Boot clients on the data NIC (boot information only) and serve TFTP and HTTP on IPv6 (`--ipv6`). Opens UDP 547 with openFirewall.";
    };

    listenAddress6 = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "fd00::2";
      description = "The global or unique-local IPv6 address to listen on and announce in IPv6 boot URLs (`--listen-addr6`); null: the data NIC's own.";
    };

    ipv6Range = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "fd00::1000-fd00::1fff";
      description = "Stateful DHCPv6: hand addresses from START-END (one /64) to iPXE, which ignores a DHCPv6 answer without one; needed on IPv6-only segments. Leases are kept in the service's state directory.";
    };

    ipv6Stateful = mkOption {
      type = types.enum [ "ipxe" "all" ];
      default = "ipxe";
      description = "Who gets an address from ipv6Range: only iPXE (firmware takes its address from the site's DHCPv6 server), or all boot clients (no other DHCPv6 server on the segment).";
    };

    debug = mkOption {
      type = types.bool;
      default = false;
      description = "Log packet-level decisions.";
    };

    memoryMax = mkOption {
      type = types.str;
      default = "512M";
      example = "1G";
      description = ''
        systemd MemoryMax of the service (`infinity` lifts it). ironpxe idles at about
        10 MiB and peaked at 40 MiB while 1,000 machines booted at once. Size it as
        64 MiB + 32 KiB per HTTP download running at once + 8 KiB per TFTP transfer
        running at once + the --tftp-root cache when one is served (at most 256 MiB).
        Past it the service is killed and restarted (Restart=on-failure); boots in
        progress retry and finish, since file ids survive a restart.
      '';
    };

    extraArguments = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Extra command-line arguments.";
    };
  };

  config = lib.mkIf cfg.enable {
    networking.firewall = lib.mkIf cfg.openFirewall {
      allowedUDPPorts = ports.udp ++ lib.optional cfg.ipv6 547;
      allowedTCPPorts = ports.tcp;
    };

    systemd.services.ironpxe = {
      description = "ironpxe network boot server";
      # `reinstall --power-cycle` runs ipmitool against the machines' BMCs.
      path = [ pkgs.ipmitool ];
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      wantedBy = [ "multi-user.target" ];
      restartTriggers = [ configFile ];
      serviceConfig = {
        ExecStart = "${lib.getExe cfg.package} ${lib.escapeShellArgs args}";
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        Restart = "on-failure";
        # Each download and TFTP transfer holds a socket; ironpxe also raises its
        # soft limit to this hard one at start.
        LimitNOFILE = 65536;
        MemoryMax = cfg.memoryMax;
        DynamicUser = true;
        # Install state and DHCP leases (state.redb) and the boot status live here.
        StateDirectory = "ironpxe";
        LoadCredential = lib.optional (cfg.adminTokenFile != null) "admin-token:${cfg.adminTokenFile}";
        AmbientCapabilities = [ "CAP_NET_BIND_SERVICE" ] ++ lib.optional cfg.dhcpNoBind "CAP_NET_RAW";
        CapabilityBoundingSet = [ "CAP_NET_BIND_SERVICE" ] ++ lib.optional cfg.dhcpNoBind "CAP_NET_RAW";
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectControlGroups = true;
        RestrictNamespaces = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RestrictRealtime = true;
        SystemCallArchitectures = "native";
        RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" "AF_NETLINK" ]
          ++ lib.optional cfg.dhcpNoBind "AF_PACKET";
      };
    };
  };
}
