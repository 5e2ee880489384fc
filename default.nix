# Without flakes:
#   nix-build                          # the package
#   imports = [ (import ./path/to/ironpxe {}).module ];   # the NixOS module
{ pkgs ? import <nixpkgs> { } }:

let
  package = pkgs.callPackage ./nix/package.nix { };
in
package // {
  inherit package;
  module = ./nix/module.nix;
  overlay = final: prev: { ironpxe = final.callPackage ./nix/package.nix { }; };
}
