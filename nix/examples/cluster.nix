# The seed cluster (1 manager, 3 storage, 16 compute nodes) as services.ironpxe,
# with ironpxe as the data network's DHCP server and install-once nodes.
#
# Kernel, initrd and store paths stand for the installer build of the cluster's flake
# (installer.config.system.build.kernel / netbootRamdisk, each node's toplevel and
# install script). The seed describes each node's data NIC as
# `hpc.dhcp.reservations."data" = { hwAddress; ipAddress; }` and ran a DHCP server
# from those; here the same reservations feed ironpxe's DHCP server (`mac`, `ip`),
# so the cluster needs no DHCP server of its own.
#
# Each node installs once: its installer reports success with
#   curl -fsS -X POST "$(grep -o 'ironpxe.done=[^ ]*' /proc/cmdline | cut -d= -f2-)"
# before it reboots (the kernel command line carries `ironpxe.done={{ DONE_URL }}`),
# and from then on it boots from its disk; `ironpxe reinstall NODE --power-cycle`
# sends it back through the installer. The install script's old last step,
# `ipmitool chassis bootdev disk`, is gone, and so are the BMC credentials on every
# node: only the management node holds them.
{ installerKernel ? "/nix/store/00000000000000000000000000000000-linux/bzImage"
, installerInitrd ? "/nix/store/00000000000000000000000000000000-initrd/initrd"
}:

let
  pad2 = n: if n < 10 then "0${toString n}" else toString n;
  hex2 = n:
    let digits = "0123456789abcdef"; in
    builtins.substring (n / 16) 1 digits + builtins.substring (n - (n / 16) * 16) 1 digits;

  # What the seed keeps as nodes.${name}.config.hpc.dhcp.reservations."data".
  reservation = host: {
    hwAddress = "52:54:00:c1:00:${hex2 host}";
    ipAddress = "10.0.0.${toString host}";
  };

  node = role: index: host:
    let
      name = "${role}-${pad2 index}";
      data = reservation host;
    in
    {
      inherit name;
      value = {
        mac = data.hwAddress;
        ip = data.ipAddress;
        profile = role;
        cmdline = builtins.concatStringsSep " " [
          "init=/nix/store/00000000000000000000000000000000-nixos-system-${name}/init"
          "loglevel=4"
          "nixos.install=/nix/store/00000000000000000000000000000000-install-${name}"
          "ironpxe.done={{ DONE_URL }}"
          "console=tty0"
          "console=ttyS1,57600n8"
        ];
        message = "NixOS Automatic Installer for ${name}";
        # The management network: one BMC per node, 10.1.0.<host>.
        bmc = {
          address = "10.1.0.${toString host}";
          user = "admin";
          password_file = "/run/credentials/ironpxe.service/bmc-password";
        };
      };
    };
  range = n: builtins.genList (i: i) n;
in
{
  services.ironpxe = {
    enable = true;
    interface = "eno2";
    openFirewall = true;
    dhcp = {
      mode = "server";
      subnet = "10.0.0.0/24";
      router = "10.0.0.1";
      dns = [ "10.0.0.1" ];
      leaseTime = "12h";
    };
    adminTokenFile = "/run/secrets/ironpxe-admin-token";
    settings = {
      server = { http_port = 80; status_port = 8081; };
      profiles =
        let installer = { kernel = installerKernel; initrd = [ installerInitrd ]; once = true; }; in
        { manager = installer; storage = installer; compute = installer; };
    };
    machines = builtins.listToAttrs (
      [ (node "manager" 0 16) ]
      ++ map (i: node "storage" i (32 + i)) (range 3)
      ++ map (i: node "compute" i (48 + i)) (range 16)
    );
  };
  # The BMC password, readable by the service's dynamic user.
  systemd.services.ironpxe.serviceConfig.LoadCredential = [ "bmc-password:/run/secrets/bmc-password" ];
}
