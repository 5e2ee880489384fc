# Pure helpers of the NixOS module. They use builtins only, so they also evaluate
# without nixpkgs (CI checks them offline with nix-instantiate).
rec {
  # Drops attributes whose value is null, also inside nested attribute sets (TOML
  # has no null; a machine's `bmc` is one such set).
  dropNulls = attrs:
    builtins.mapAttrs (n: v: if builtins.isAttrs v then dropNulls v else v)
      (builtins.removeAttrs attrs (builtins.filter (n: attrs.${n} == null) (builtins.attrNames attrs)));

  # services.ironpxe.machines (name -> { mac, profile, ... }) as the config file's
  # [[machines]] list, in name order; the attribute name becomes `name`.
  machinesToList = machines:
    map (name: dropNulls ({ inherit name; } // machines.${name})) (builtins.attrNames machines);

  # services.ironpxe.dhcp as the config file's [dhcp] table (proxy mode: none).
  dhcpToSettings = dhcp:
    if dhcp == null || (dhcp.mode or "proxy") == "proxy" then { }
    else dropNulls {
      inherit (dhcp) mode;
      subnet = dhcp.subnet or null;
      pool = dhcp.pool or null;
      router = dhcp.router or null;
      lease_time = dhcp.leaseTime or null;
      dns = if (dhcp.dns or [ ]) == [ ] then null else dhcp.dns;
    };

  # The settings written to ironpxe.toml: the freeform settings, with the
  # convenience options merged in.
  mkSettings = { settings, machines, interface, dhcp ? null, adminTokenFile ? null }:
    let
      server = (settings.server or { })
        // (if interface == null then { } else { inherit interface; })
        // (if adminTokenFile == null then { } else { admin_token_file = adminTokenFile; });
      dhcpTable = (settings.dhcp or { }) // dhcpToSettings dhcp;
    in
    settings // {
      inherit server;
      machines = (settings.machines or [ ]) ++ machinesToList machines;
    } // (if dhcpTable == { } then { } else { dhcp = dhcpTable; });

  # The command line of the service: config-file mode, or API mode when apiServer is set.
  mkArgs = { apiServer, apiRequestTimeout, configFile, settings, interface, debug, dhcpNoBind, extraArguments
           , ipv6 ? false, listenAddress6 ? null, ipv6Range ? null, ipv6Stateful ? "ipxe"
           , stateDir ? null, forceDhcpServer ? false, ... }:
    let
      server = settings.server or { };
      flag = cond: f: if cond then f else [ ];
    in
    (if apiServer == null then [ "serve" "--config" configFile ]
    else
      [ "api" apiServer "--api-request-timeout" apiRequestTimeout ]
      ++ flag (interface != null) [ "--interface" interface ]
      ++ flag (server ? listen_addr) [ "--listen-addr" server.listen_addr ]
      ++ flag (server ? http_port) [ "--port" (toString server.http_port) ]
      ++ flag (server ? status_port) [ "--status-port" (toString server.status_port) ]
      ++ flag (server ? shutdown_timeout) [ "--shutdown-timeout" server.shutdown_timeout ])
    # The stateful IPv6 mode names the state directory with its flags; every other
    # mode gets it on its own (install state and DHCP leases live there too).
    ++ flag ipv6 ([ "--ipv6" ]
      ++ flag (listenAddress6 != null) [ "--listen-addr6" listenAddress6 ]
      ++ flag (ipv6Range != null) [ "--ipv6-range" ipv6Range "--ipv6-stateful" ipv6Stateful
                                     "--state-dir" (if stateDir == null then "/var/lib/ironpxe" else stateDir) ])
    ++ flag (stateDir != null && !(ipv6 && ipv6Range != null)) [ "--state-dir" stateDir ]
    ++ flag (forceDhcpServer && apiServer == null) [ "--force" ]
    ++ flag debug [ "--debug" ]
    ++ flag dhcpNoBind [ "--dhcp-no-bind" ]
    ++ extraArguments;

  # Ports to open: DHCP, TFTP and PXE boot-server over UDP (and, for the DHCP
  # server, 68: other servers' answers to its start-up probe); HTTP and status over
  # TCP.
  firewallPorts = settings:
    let
      server = settings.server or { };
      dhcpServer = ((settings.dhcp or { }).mode or "proxy") == "server";
    in
    {
      udp = [ 67 69 4011 ] ++ (if dhcpServer then [ 68 ] else [ ]);
      tcp = [ (server.http_port or 80) ] ++ (if server ? status_port then [ server.status_port ] else [ ]);
    };
}
