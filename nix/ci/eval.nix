# Offline evaluation for CI (no nixpkgs available): the module's option declarations
# evaluated against a minimal stand-in for nixpkgs' lib, and the module's pure helpers
# applied to the seed cluster example. Prints JSON that tests compare.
let
  helpers = import ../lib.nix;

  # Just enough of nixpkgs' lib for option declarations: options keep their type
  # name and description so the test can check them.
  type = name: { inherit name; };
  stubLib = {
    mkOption = o: o;
    mkEnableOption = what: { type = type "bool"; default = false; description = "Whether to enable ${what}."; };
    mkIf = cond: value: if cond then value else { };
    literalExpression = text: { _type = "literalExpression"; inherit text; };
    optional = cond: x: if cond then [ x ] else [ ];
    escapeShellArgs = xs: builtins.concatStringsSep " " xs;
    getExe = p: "${p}/bin/ironpxe";
    types = {
      bool = type "bool";
      int = type "int";
      str = type "str";
      package = type "package";
      nullOr = t: type "nullOr ${t.name}";
      listOf = t: type "listOf ${t.name}";
      attrsOf = t: type "attrsOf ${t.name}";
      enum = vals: type "enum";
      submodule = m: type "submodule";
    };
  };
  stubPkgs = {
    formats.toml = { }: { type = type "toml"; generate = name: value: "/nix/store/eval-only-${name}"; };
    ironpxe = "/nix/store/eval-only-ironpxe";
    ipmitool = "/nix/store/eval-only-ipmitool";
    coreutils = "/nix/store/eval-only-coreutils";
  };
  evalModule = config: import ../module.nix { lib = stubLib; pkgs = stubPkgs; inherit config; };

  opts = (evalModule { services.ironpxe = { }; }).options.services.ironpxe;

  cluster = (import ../examples/cluster.nix { }).services.ironpxe;
  clusterSettings = helpers.mkSettings {
    inherit (cluster) settings machines interface dhcp;
    adminTokenFile = "/run/credentials/ironpxe.service/admin-token";
  };

  defaults = {
    apiServer = null; apiRequestTimeout = "5s"; interface = null; debug = false;
    dhcpNoBind = false; extraArguments = [ ]; settings = { }; configFile = "/etc/ironpxe.toml";
    dhcp = { mode = "proxy"; subnet = null; pool = null; leaseTime = null; router = null; dns = [ ]; };
    forceDhcpServer = false; adminTokenFile = null;
    ipv6 = false; listenAddress6 = null; ipv6Range = null; ipv6Stateful = "ipxe";
  };
  serviceOf = extra:
    let
      cfg = defaults // {
        enable = true; openFirewall = true; machines = { };
        # The stand-in lib applies no defaults; take the option's own.
        memoryMax = opts.memoryMax.default;
        package = "/nix/store/eval-only-ironpxe";
      } // extra;
      evaluated = (evalModule { services.ironpxe = cfg; }).config;
    in
    {
      inherit (evaluated.systemd.services.ironpxe) serviceConfig path;
      firewall = evaluated.networking.firewall;
    };
in
{
  service = {
    plain = serviceOf { };
    noBind = serviceOf { dhcpNoBind = true; };
    dhcpServer = serviceOf {
      dhcp = defaults.dhcp // { mode = "server"; subnet = "10.0.0.0/24"; };
      forceDhcpServer = true;
      adminTokenFile = "/run/secrets/admin";
    };
    ipv6 = serviceOf { ipv6 = true; ipv6Range = "fd00::1000-fd00::10ff"; };
  };
  # An option, or a group of options (services.ironpxe.dhcp).
  options =
    let describe = o: if o ? type then { type = o.type.name; description = o.description; default = o.default or null; }
                      else builtins.mapAttrs (n: describe) o;
    in builtins.mapAttrs (n: describe) opts;
  cluster = {
    machines = map (m: { inherit (m) name mac profile ip cmdline bmc; }) clusterSettings.machines;
    interface = clusterSettings.server.interface;
    firewall = helpers.firewallPorts clusterSettings;
    dhcp = clusterSettings.dhcp;
    profiles = clusterSettings.profiles;
    server = clusterSettings.server;
    # The whole ironpxe.toml the module would write, for `ironpxe check`.
    settings = clusterSettings;
  };
  args = {
    config = helpers.mkArgs defaults;
    stateful = helpers.mkArgs (defaults // { stateDir = "/var/lib/ironpxe"; forceDhcpServer = true; });
    api = helpers.mkArgs (defaults // {
      apiServer = "file:///etc/ironpxe/api";
      interface = "eno2";
      dhcpNoBind = true;
      settings.server = { http_port = 8080; status_port = 9090; };
    });
  };
}
