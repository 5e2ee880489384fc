//! A local disk for guests, to see a machine fall through from the network to its
//! disk: the disk prints [`DISK_MARKER`] on the serial console when the firmware
//! boots it.
//!
//! Both are written here at run time, byte by byte; nothing binary is kept in the
//! source tree:
//!
//! - for BIOS guests, [`bios_disk`]: a 1 MiB raw image whose first sector is a boot
//!   sector that writes the marker straight to COM1 (port 0x3f8) and halts;
//! - for UEFI guests, [`uefi_disk`]: a directory holding `EFI/BOOT/BOOTX64.EFI`, a
//!   minimal EFI application (a PE32+ image with one section of position-independent
//!   code) that prints the marker through `ConOut->OutputString` and halts. QEMU
//!   presents the directory as a FAT disk (`fat:` driver), which OVMF boots through
//!   the removable-media path.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{io_err, Result};

/// What a guest's disk prints when the firmware boots it.
pub const DISK_MARKER: &str = "IRONPXE-DISK-MARKER booted from the local disk";

/// A disk attached to a guest ([`crate::GuestConfig::disk`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestDisk {
    /// A raw disk image file.
    Raw(PathBuf),
    /// A directory, presented as a FAT disk by QEMU's `fat:` driver (read-only).
    FatDir(PathBuf),
}

impl GuestDisk {
    /// The `-drive` value for QEMU.
    pub(crate) fn drive(&self, id: &str) -> String {
        match self {
            GuestDisk::Raw(p) => format!("if=none,id={id},format=raw,file={}", p.display()),
            GuestDisk::FatDir(p) => format!(
                "if=none,id={id},format=raw,readonly=on,file=fat:{}",
                p.display()
            ),
        }
    }
}

/// The 16-bit boot sector: prints the NUL-terminated message that follows the code
/// on COM1, polling the line status register, then halts forever.
fn boot_sector() -> [u8; 512] {
    let code: [u8; 35] = [
        0xfa, // cli
        0x31, 0xc0, // xor ax, ax
        0x8e, 0xd8, // mov ds, ax
        0xbe, 0x23, 0x7c, // mov si, 0x7c23 (the message, below)
        0xfc, // cld
        // .next:
        0xac, // lodsb
        0x84, 0xc0, // test al, al
        0x74, 0x12, // jz .done
        0x88, 0xc3, // mov bl, al
        0xba, 0xfd, 0x03, // mov dx, 0x3fd (line status)
        // .wait:
        0xec, // in al, dx
        0xa8, 0x20, // test al, 0x20 (transmit holding register empty)
        0x74, 0xfb, // jz .wait
        0xba, 0xf8, 0x03, // mov dx, 0x3f8 (data)
        0x88, 0xd8, // mov al, bl
        0xee, // out dx, al
        0xeb, 0xe9, // jmp .next
        // .done:
        0xf4, // hlt
        0xeb, 0xfd, // jmp .done
    ];
    let mut s = [0u8; 512];
    s[..code.len()].copy_from_slice(&code);
    let msg = format!("\r\n{DISK_MARKER}\r\n\0");
    s[code.len()..code.len() + msg.len()].copy_from_slice(msg.as_bytes());
    s[510] = 0x55;
    s[511] = 0xaa;
    s
}

/// Writes a 1 MiB raw disk image with the marker boot sector to `dir/disk.img`.
pub fn bios_disk(dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let path = dir.join("bios-disk.img");
    let mut img = vec![0u8; 1 << 20];
    img[..512].copy_from_slice(&boot_sector());
    fs::write(&path, img).map_err(io_err("write", &path))?;
    Ok(path)
}

/// Writes `dir/uefi-disk/EFI/BOOT/BOOTX64.EFI` and returns `dir/uefi-disk`.
pub fn uefi_disk(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("uefi-disk");
    let boot = root.join("EFI").join("BOOT");
    fs::create_dir_all(&boot).map_err(io_err("create", &boot))?;
    let app = boot.join("BOOTX64.EFI");
    fs::write(&app, efi_app()).map_err(io_err("write", &app))?;
    Ok(root)
}

/// A PE32+ EFI application: `efi_main(image, system_table)` calls
/// `system_table->ConOut->OutputString(ConOut, marker)` and halts. The code only
/// uses RIP-relative addressing, so it needs no relocations wherever it is loaded.
pub fn efi_app() -> Vec<u8> {
    const FILE_ALIGN: usize = 0x200;
    const SECTION_RVA: u32 = 0x1000;
    // sub rsp,0x28; mov rcx,[rdx+0x40] (ConOut); lea rdx,[rip+msg];
    // call [rcx+8] (OutputString); hlt; jmp hlt; nop (aligns the UTF-16 text).
    let mut text: Vec<u8> = vec![
        0x48, 0x83, 0xec, 0x28, //
        0x48, 0x8b, 0x4a, 0x40, //
        0x48, 0x8d, 0x15, 0x07, 0x00, 0x00, 0x00, // rel32 = 22 - 15
        0xff, 0x51, 0x08, //
        0xf4, //
        0xeb, 0xfd, //
        0x90,
    ];
    debug_assert_eq!(text.len(), 22);
    for u in format!("\r\n{DISK_MARKER}\r\n").encode_utf16().chain([0]) {
        text.extend_from_slice(&u.to_le_bytes());
    }
    let raw_size = text.len().div_ceil(FILE_ALIGN) * FILE_ALIGN;

    let mut f: Vec<u8> = Vec::with_capacity(FILE_ALIGN + raw_size);
    let u16le = |v: &mut Vec<u8>, x: u16| v.extend_from_slice(&x.to_le_bytes());
    let u32le = |v: &mut Vec<u8>, x: u32| v.extend_from_slice(&x.to_le_bytes());
    let u64le = |v: &mut Vec<u8>, x: u64| v.extend_from_slice(&x.to_le_bytes());

    // DOS header: "MZ", and e_lfanew (at 0x3c) pointing to the PE header at 0x40.
    f.extend_from_slice(b"MZ");
    f.resize(0x3c, 0);
    u32le(&mut f, 0x40);
    // PE signature and COFF header.
    f.extend_from_slice(b"PE\0\0");
    u16le(&mut f, 0x8664); // machine: x86-64
    u16le(&mut f, 1); // sections
    u32le(&mut f, 0); // time stamp
    u32le(&mut f, 0); // symbol table
    u32le(&mut f, 0); // symbols
    u16le(&mut f, 240); // optional header size
    u16le(&mut f, 0x0022); // executable, large address aware
                           // Optional header (PE32+).
    u16le(&mut f, 0x20b);
    f.extend_from_slice(&[1, 0]); // linker version
    u32le(&mut f, raw_size as u32); // size of code
    u32le(&mut f, 0); // initialized data
    u32le(&mut f, 0); // uninitialized data
    u32le(&mut f, SECTION_RVA); // entry point
    u32le(&mut f, SECTION_RVA); // base of code
    u64le(&mut f, 0x1000_0000); // image base
    u32le(&mut f, 0x1000); // section alignment
    u32le(&mut f, FILE_ALIGN as u32); // file alignment
    for _ in 0..6 {
        u16le(&mut f, 0); // OS, image and subsystem versions
    }
    u32le(&mut f, 0); // win32 version
    u32le(
        &mut f,
        SECTION_RVA + (raw_size as u32).div_ceil(0x1000) * 0x1000,
    ); // size of image
    u32le(&mut f, FILE_ALIGN as u32); // size of headers
    u32le(&mut f, 0); // checksum
    u16le(&mut f, 10); // subsystem: EFI application
    u16le(&mut f, 0); // DLL characteristics
    for v in [0x10000u64, 0x1000, 0x10000, 0x1000] {
        u64le(&mut f, v); // stack and heap reserve and commit
    }
    u32le(&mut f, 0); // loader flags
    u32le(&mut f, 16); // data directories
    f.extend_from_slice(&[0u8; 16 * 8]);
    // The one section: code and text, read and execute.
    f.extend_from_slice(b".text\0\0\0");
    u32le(&mut f, text.len() as u32); // virtual size
    u32le(&mut f, SECTION_RVA);
    u32le(&mut f, raw_size as u32);
    u32le(&mut f, FILE_ALIGN as u32); // file offset
    u32le(&mut f, 0);
    u32le(&mut f, 0);
    u16le(&mut f, 0);
    u16le(&mut f, 0);
    u32le(&mut f, 0x6000_0020); // code, execute, read
    f.resize(FILE_ALIGN, 0);
    f.extend_from_slice(&text);
    f.resize(FILE_ALIGN + raw_size, 0);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_sector_points_at_its_message_and_is_bootable() {
        let s = boot_sector();
        assert_eq!(&s[510..], &[0x55, 0xaa]);
        // mov si, imm16 names the byte right after the code.
        let si = u16::from_le_bytes([s[6], s[7]]) as usize - 0x7c00;
        assert_eq!(si, 35);
        assert!(s[si..].starts_with(format!("\r\n{DISK_MARKER}").as_bytes()));
        // jz .done lands on hlt, jmp .next on lodsb.
        assert_eq!(s[14 + 0x12], 0xf4);
        assert_eq!(s[(32i32 - 0x17) as usize], 0xac);
    }

    #[test]
    fn efi_app_headers_are_consistent() {
        let f = efi_app();
        assert_eq!(&f[..2], b"MZ");
        assert_eq!(&f[0x40..0x44], b"PE\0\0");
        let opt = 0x40 + 4 + 20;
        assert_eq!(u16::from_le_bytes([f[opt], f[opt + 1]]), 0x20b);
        let section = opt + 240;
        assert_eq!(&f[section..section + 5], b".text");
        assert_eq!(f.len() % 0x200, 0);
        // The lea's target: RIP after it (15) + rel32 is the UTF-16 text.
        let text = &f[0x200..];
        let rel = i32::from_le_bytes([text[11], text[12], text[13], text[14]]) as usize;
        assert_eq!(&text[15 + rel..15 + rel + 4], &[b'\r', 0, b'\n', 0]);
    }
}
