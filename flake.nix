{
  description = "ironpxe: network boot server (ProxyDHCP, TFTP, HTTP), pixiecore-compatible";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (pkgs: rec {
        ironpxe = pkgs.callPackage ./nix/package.nix { };
        default = ironpxe;
      });

      overlays.default = final: prev: {
        ironpxe = final.callPackage ./nix/package.nix { };
      };

      # `pixiecore = ironpxe` for users who keep services.pixiecore.
      overlays.pixiecore = final: prev: {
        pixiecore = final.callPackage ./nix/package.nix { };
      };

      nixosModules.default = { pkgs, ... }: {
        imports = [ ./nix/module.nix ];
        nixpkgs.overlays = [ self.overlays.default ];
      };

      checks = forAll (pkgs: {
        vm-test = pkgs.callPackage ./nix/tests/vm-test.nix { module = self.nixosModules.default; };
      } // nixpkgs.lib.optionalAttrs (pkgs.stdenv.hostPlatform.system == "x86_64-linux") {
        # `ironpxe lab --user-net`: a Nix-built kernel and initrd netboot, unprivileged.
        lab-user-net = pkgs.callPackage ./nix/tests/lab-user-net.nix {
          ironpxe = pkgs.callPackage ./nix/package.nix { };
        };
      });
    };
}
