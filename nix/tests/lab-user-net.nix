# Flake check: `ironpxe lab --user-net` boots a kernel and an initrd built by Nix,
# unprivileged, inside the build sandbox: QEMU user networking, ironpxe's HTTP on
# loopback, QEMU's DHCP handing the guest's iPXE ROM its script URL. It tests the
# image and ironpxe's HTTP and iPXE script path, not ProxyDHCP or TFTP (the
# vm-test check covers those).
#
# Build with `nix build .#checks.x86_64-linux.lab-user-net`. It runs under TCG in
# the sandbox (no /dev/kvm there); the JUnit report and the artefacts (serial log,
# timeline, ironpxe's log) are the output.
{ lib, runCommand, writeScript, makeInitrdNG, linuxPackages, pkgsStatic, qemu, ironpxe }:

let
  kernel = "${linuxPackages.kernel}/bzImage";
  # Your image goes here. This one prints its command line and powers off.
  initrd = makeInitrdNG {
    contents = [
      { source = "${pkgsStatic.busybox}/bin/busybox"; target = "/bin/busybox"; }
      {
        source = writeScript "init" ''
          #!/bin/busybox sh
          /bin/busybox mkdir -p /proc /dev
          /bin/busybox mount -t proc proc /proc
          /bin/busybox mount -t devtmpfs dev /dev
          echo "NIX-IMAGE-BOOTED cmdline=[$(/bin/busybox cat /proc/cmdline)]" > /dev/ttyS0
          /bin/busybox poweroff -f
        '';
        target = "/init";
      }
    ];
  };
in
runCommand "ironpxe-lab-user-net"
{
  nativeBuildInputs = [ ironpxe qemu ];
  meta.platforms = [ "x86_64-linux" ];
}
  ''
    export HOME=$TMPDIR
    mkdir -p $out
    ironpxe lab --user-net boot ${kernel} ${initrd}/initrd \
      --cmdline 'console=ttyS0 nix.check=lab-user-net' \
      --expect 'NIX-IMAGE-BOOTED cmdline=\[.*nix\.check=lab-user-net' \
      --firmware bios --timeout 10m \
      --junit $out/junit.xml --out $out/artefacts
  ''
