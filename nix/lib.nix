# Pure helpers of the NixOS module. They use builtins only, so they also evaluate
# without nixpkgs (CI checks them offline with nix-instantiate).
rec {
  # Drops attributes whose value is null.
  dropNulls = attrs:
    builtins.removeAttrs attrs (builtins.filter (n: attrs.${n} == null) (builtins.attrNames attrs));

  # services.ironpxe.machines (name -> { mac, profile, ... }) as the config file's
  # [[machines]] list, in name order; the attribute name becomes `name`.
  machinesToList = machines:
    map (name: dropNulls ({ inherit name; } // machines.${name})) (builtins.attrNames machines);

  # The settings written to ironpxe.toml: the freeform settings, with the
  # convenience options merged in.
  mkSettings = { settings, machines, interface }:
    let
      server = (settings.server or { }) // (if interface == null then { } else { inherit interface; });
    in
    settings // {
      inherit server;
      machines = (settings.machines or [ ]) ++ machinesToList machines;
    };

  # The command line of the service: config-file mode, or API mode when apiServer is set.
  mkArgs = { apiServer, apiRequestTimeout, configFile, settings, interface, debug, dhcpNoBind, extraArguments
           , ipv6 ? false, listenAddress6 ? null, ipv6Range ? null, ipv6Stateful ? "ipxe", stateDir ? "/var/lib/ironpxe" }:
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
    ++ flag ipv6 ([ "--ipv6" ]
      ++ flag (listenAddress6 != null) [ "--listen-addr6" listenAddress6 ]
      # The stateful mode keeps its leases in the service's StateDirectory.
      ++ flag (ipv6Range != null) [ "--ipv6-range" ipv6Range "--ipv6-stateful" ipv6Stateful "--state-dir" stateDir ])
    ++ flag debug [ "--debug" ]
    ++ flag dhcpNoBind [ "--dhcp-no-bind" ]
    ++ extraArguments;

  # Ports to open: ProxyDHCP, TFTP and PXE boot-server over UDP; HTTP and status over TCP.
  firewallPorts = settings:
    let server = settings.server or { }; in
    {
      udp = [ 67 69 4011 ];
      tcp = [ (server.http_port or 80) ] ++ (if server ? status_port then [ server.status_port ] else [ ]);
    };
}
