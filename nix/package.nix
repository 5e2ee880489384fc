# The ironpxe package: the server binary, a `pixiecore` name for drop-in use, and
# Nix's iPXE build wired in as the default iPXE binaries.
{ lib, rustPlatform, makeWrapper, ipxe }:

rustPlatform.buildRustPackage {
  pname = "ironpxe";
  version = (builtins.fromTOML (builtins.readFile ../Cargo.toml)).workspace.package.version;

  src = lib.cleanSourceWith {
    src = ../.;
    filter = path: type:
      let base = baseNameOf path; in
      !(builtins.elem base [ "target" "lab-out" ".lab-cache" "result" ]);
  };

  cargoLock.lockFile = ../Cargo.lock;
  # ironpxe-bench ships the boot-storm load generator (`ironpxe-bench storm`).
  cargoBuildFlags = [ "-p" "ironpxe" "-p" "ironpxe-bench" ];
  # The unit tests run; the QEMU lab tests need root, network namespaces and QEMU.
  cargoTestFlags = [ "-p" "ironpxe-core" "-p" "ironpxe-dhcp" "-p" "ironpxe-tftp" "-p" "ironpxe-ipxe" ];

  nativeBuildInputs = [ makeWrapper ];

  postInstall = ''
    # ironpxe searches IRONPXE_IPXE_DIR before /usr/lib/ipxe and /usr/share/ipxe.
    wrapProgram $out/bin/ironpxe --set-default IRONPXE_IPXE_DIR ${ipxe}
    # Run under this name, ironpxe behaves as pixiecore.
    ln -s ironpxe $out/bin/pixiecore
  '';

  meta = {
    description = "Network boot server: ProxyDHCP, TFTP and HTTP boot per machine MAC, pixiecore-compatible";
    license = lib.licenses.asl20;
    mainProgram = "ironpxe";
    platforms = lib.platforms.linux;
  };
}
