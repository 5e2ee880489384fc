# The seed cluster (1 manager, 3 storage, 16 compute nodes) as services.ironpxe.
# Kernel, initrd and store paths stand for the installer build of the cluster's flake
# (installer.config.system.build.kernel / netbootRamdisk, each node's toplevel and
# install script); the MACs are the data-NIC reservations.
{ installerKernel ? "/nix/store/00000000000000000000000000000000-linux/bzImage"
, installerInitrd ? "/nix/store/00000000000000000000000000000000-initrd/initrd"
}:

let
  pad2 = n: if n < 10 then "0${toString n}" else toString n;
  hex2 = n:
    let digits = "0123456789abcdef"; in
    builtins.substring (n / 16) 1 digits + builtins.substring (n - (n / 16) * 16) 1 digits;
  node = role: index: macByte: {
    name = "${role}-${pad2 index}";
    value = {
      mac = "52:54:00:c1:00:${hex2 macByte}";
      profile = role;
      cmdline = builtins.concatStringsSep " " [
        "init=/nix/store/00000000000000000000000000000000-nixos-system-${role}-${pad2 index}/init"
        "loglevel=4"
        "nixos.install=/nix/store/00000000000000000000000000000000-install-${role}-${pad2 index}"
        "console=tty0"
        "console=ttyS1,57600n8"
      ];
      message = "NixOS Automatic Installer for ${role}-${pad2 index}";
    };
  };
  range = n: builtins.genList (i: i) n;
in
{
  services.ironpxe = {
    enable = true;
    interface = "eno2";
    openFirewall = true;
    settings = {
      server.http_port = 80;
      profiles =
        let installer = { kernel = installerKernel; initrd = [ installerInitrd ]; }; in
        { manager = installer; storage = installer; compute = installer; };
    };
    machines = builtins.listToAttrs (
      [ (node "manager" 0 16) ]
      ++ map (i: node "storage" i (32 + i)) (range 3)
      ++ map (i: node "compute" i (48 + i)) (range 16)
    );
  };
}
