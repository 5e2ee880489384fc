//! ironpxe's end-to-end tests. They live in `tests/`: each file boots real firmware
//! (SeaBIOS with the iPXE NIC ROM, OVMF's PXE and HTTP Boot clients) in QEMU against
//! the `ironpxe` binary, or drives real TFTP and DHCP clients against it, inside the
//! private networks of `ironpxe_lab`. The lab library itself is in `lab/`.
//!
//! They need root, the Debian packages that `scripts/setup-debian` installs, and the
//! binary built first (`cargo build -p ironpxe`). A test that cannot run fails with a
//! message naming what is missing; none is skipped.
