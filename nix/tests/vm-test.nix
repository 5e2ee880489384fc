# NixOS VM test: a server VM runs services.ironpxe next to a site DHCP server
# (dnsmasq, addresses only); a client VM with no disk PXE-boots from it and prints
# its kernel command line on the serial console.
#
# Build with `nix build .#checks.x86_64-linux.vm-test` on a machine with KVM and
# access to the Nix binary cache.
{ pkgs, module }:

let
  # A minimal kernel and busybox initrd that print the command line and power off.
  kernel = "${pkgs.linuxPackages.kernel}/bzImage";
  initrd = pkgs.makeInitrdNG {
    contents = [
      { source = "${pkgs.pkgsStatic.busybox}/bin/busybox"; target = "/bin/busybox"; }
      {
        source = pkgs.writeScript "init" ''
          #!/bin/busybox sh
          /bin/busybox mount -t proc proc /proc
          /bin/busybox mount -t devtmpfs dev /dev
          echo "IRONPXE-MARKER cmdline=[$(/bin/busybox cat /proc/cmdline)]" > /dev/ttyS0
          /bin/busybox poweroff -f
        '';
        target = "/init";
      }
    ];
  };
in
pkgs.testers.runNixOSTest {
  name = "ironpxe";

  nodes.server = { ... }: {
    imports = [ module ];
    virtualisation.vlans = [ 1 ];
    networking.interfaces.eth1.ipv4.addresses = [{ address = "192.168.1.2"; prefixLength = 24; }];
    networking.firewall.allowedUDPPorts = [ 67 ];

    services.dnsmasq = {
      enable = true;
      settings = {
        port = 0;
        interface = "eth1";
        bind-interfaces = true;
        dhcp-range = [ "192.168.1.100,192.168.1.200,1h" ];
        no-ping = true;
      };
    };

    services.ironpxe = {
      enable = true;
      interface = "eth1";
      openFirewall = true;
      settings = {
        server.http_port = 80;
        server.default_profile = "test";
        profiles.test = {
          inherit kernel;
          initrd = [ "${initrd}/initrd" ];
          cmdline = "console=ttyS0 ironpxe.vmtest=ok";
        };
      };
    };
  };

  testScript = ''
    server.start()
    server.wait_for_unit("dnsmasq.service")
    server.wait_for_unit("ironpxe.service")

    # A diskless client on vlan 1 that boots from the network (SeaBIOS + iPXE ROM).
    client = create_machine(
        "${pkgs.qemu}/bin/qemu-system-x86_64 -m 512 -boot n "
        "-device virtio-net-pci,netdev=vlan1,mac=52:54:00:12:01:99 "
        "-netdev vde,id=vlan1,sock=$QEMU_VDE_SOCKET_1"
    )
    client.start()
    client.wait_for_console_text("IRONPXE-MARKER cmdline=\\[console=ttyS0 ironpxe.vmtest=ok\\]")
    server.succeed("journalctl -u ironpxe | grep -q 'event=\"http.booting\"'")
  '';
}
