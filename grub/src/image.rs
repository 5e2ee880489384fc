//! What a GRUB EFI image carries: its built-in prefix and modules.
//!
//! `grub-mkimage` appends a section named `mods` to the PE image. It starts with a
//! module-info header (magic `mimg`, then the offset and size of what follows, as
//! 64-bit numbers on 64-bit platforms), followed by objects, each a header (type,
//! size including the header) and its bytes: ELF modules (type 0, each with its name
//! in a `.modname` section), a memdisk (1), an embedded configuration (2) and the
//! prefix (3). Signing appends a certificate table to the PE file and leaves the
//! sections as they are, so a signed image reads the same.
//!
//! ironpxe reads it to know whether a GRUB can fetch over HTTP (the `http` module),
//! which UEFI HTTP Boot needs, and to report the prefix (Debian's signed netboot
//! GRUB has `/grub` and no http). [`inspect`] checks every length before reading and
//! never panics.

use std::collections::BTreeSet;

/// What [`inspect`] found in a GRUB image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrubImage {
    /// The built-in prefix (`/grub`), if the image has one.
    pub prefix: Option<String>,
    /// The names of the modules built in.
    pub modules: BTreeSet<String>,
    /// Whether a configuration is embedded (`grub-mkimage -c`, or a memdisk).
    pub embedded_config: bool,
}

impl GrubImage {
    /// Whether the image can fetch over HTTP.
    pub fn has_http(&self) -> bool {
        self.modules.contains("http")
    }

    /// Whether the image can fetch over TFTP from the network it booted from.
    pub fn has_tftp(&self) -> bool {
        self.modules.contains("tftp") && self.modules.contains("efinet")
    }
}

/// Why an image could not be read as GRUB.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Not a PE (EFI) image.
    #[error("not an EFI (PE) image: {0}")]
    NotPe(&'static str),
    /// A PE image without GRUB's `mods` section.
    #[error("no GRUB module section (`mods`): not a GRUB image built by grub-mkimage")]
    NoModules,
    /// The module section is cut short or inconsistent.
    #[error("malformed GRUB module section: {0}")]
    Malformed(&'static str),
}

fn u16_at(d: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        d.get(o..o.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(d: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        d.get(o..o.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(d: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        d.get(o..o.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// The magic number of GRUB's module info header, "mimg".
const MODULE_MAGIC: u32 = 0x676d_696d;

/// Reads what `data`, a GRUB EFI image, carries.
pub fn inspect(data: &[u8]) -> Result<GrubImage, ImageError> {
    let (mods, wide) = mods_section(data)?;
    let bad = ImageError::Malformed;
    if u32_at(mods, 0) != Some(MODULE_MAGIC) {
        return Err(bad("no module magic"));
    }
    // grub_module_info32 { magic, offset, size } or
    // grub_module_info64 { magic, padding, offset, size }.
    let (offset, size) = if wide {
        (
            u64_at(mods, 8).ok_or(bad("short header"))?,
            u64_at(mods, 16).ok_or(bad("short header"))?,
        )
    } else {
        (
            u64::from(u32_at(mods, 4).ok_or(bad("short header"))?),
            u64::from(u32_at(mods, 8).ok_or(bad("short header"))?),
        )
    };
    let to_usize = |v: u64| usize::try_from(v).map_err(|_| bad("size out of range"));
    let (offset, size) = (to_usize(offset)?, to_usize(size)?);
    if size > mods.len() || offset > size {
        return Err(bad("module area larger than its section"));
    }
    let mut image = GrubImage::default();
    let mut pos = offset;
    while pos + 8 <= size {
        let kind = u32_at(mods, pos).ok_or(bad("short object header"))?;
        let len = to_usize(u64::from(
            u32_at(mods, pos + 4).ok_or(bad("short object header"))?,
        ))?;
        if len < 8 || pos + len > size {
            return Err(bad("object larger than the module area"));
        }
        let body = &mods[pos + 8..pos + len];
        match kind {
            0 => {
                if let Some(name) = elf_module_name(body) {
                    image.modules.insert(name);
                }
            }
            1 | 2 => image.embedded_config = true,
            3 => {
                let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
                let prefix = String::from_utf8_lossy(&body[..end]).into_owned();
                if !prefix.is_empty() {
                    image.prefix = Some(prefix);
                }
            }
            _ => {}
        }
        pos += len;
    }
    Ok(image)
}

/// The `mods` section's bytes, and whether the image is 64-bit (PE32+).
fn mods_section(d: &[u8]) -> Result<(&[u8], bool), ImageError> {
    let not_pe = ImageError::NotPe;
    if d.get(..2) != Some(b"MZ") {
        return Err(not_pe("no MZ header"));
    }
    let pe = u32_at(d, 0x3c).ok_or(not_pe("short DOS header"))? as usize;
    if d.get(pe..pe.saturating_add(4)) != Some(b"PE\0\0") {
        return Err(not_pe("no PE signature"));
    }
    let sections = usize::from(u16_at(d, pe + 6).ok_or(not_pe("short COFF header"))?);
    let opt_size = usize::from(u16_at(d, pe + 20).ok_or(not_pe("short COFF header"))?);
    let wide = u16_at(d, pe + 24) == Some(0x20b);
    let table = pe + 24 + opt_size;
    for i in 0..sections {
        let s = table + 40 * i;
        let name = d.get(s..s + 8).ok_or(not_pe("short section table"))?;
        if name != b"mods\0\0\0\0" {
            continue;
        }
        let raw_size = u32_at(d, s + 16).ok_or(not_pe("short section table"))? as usize;
        let raw_ptr = u32_at(d, s + 20).ok_or(not_pe("short section table"))? as usize;
        let body = d
            .get(raw_ptr..raw_ptr.saturating_add(raw_size))
            .ok_or(ImageError::Malformed("section beyond the end of the file"))?;
        return Ok((body, wide));
    }
    Err(ImageError::NoModules)
}

/// The name in an ELF module's `.modname` section.
fn elf_module_name(e: &[u8]) -> Option<String> {
    if e.get(..4)? != b"\x7fELF" || *e.get(5)? != 1 {
        return None;
    }
    // ELF64 or ELF32 header fields: section table offset, entry size, count, and
    // the index of the section-name strings.
    let (shoff, shentsize, shnum, shstrndx) = match *e.get(4)? {
        2 => (
            u64_at(e, 0x28)? as usize,
            usize::from(u16_at(e, 0x3a)?),
            usize::from(u16_at(e, 0x3c)?),
            usize::from(u16_at(e, 0x3e)?),
        ),
        1 => (
            u32_at(e, 0x20)? as usize,
            usize::from(u16_at(e, 0x2e)?),
            usize::from(u16_at(e, 0x30)?),
            usize::from(u16_at(e, 0x32)?),
        ),
        _ => return None,
    };
    let wide = e[4] == 2;
    let section = |i: usize| -> Option<(u32, usize, usize)> {
        let s = shoff.checked_add(shentsize.checked_mul(i)?)?;
        let name = u32_at(e, s)?;
        let (off, size) = if wide {
            (u64_at(e, s + 24)? as usize, u64_at(e, s + 32)? as usize)
        } else {
            (u32_at(e, s + 16)? as usize, u32_at(e, s + 20)? as usize)
        };
        Some((name, off, size))
    };
    let (_, strtab, strsize) = section(shstrndx)?;
    let strings = e.get(strtab..strtab.checked_add(strsize)?)?;
    for i in 0..shnum.min(256) {
        let (name, off, size) = section(i)?;
        let n = strings.get(name as usize..)?;
        let n = &n[..n.iter().position(|&b| b == 0)?];
        if n == b".modname" {
            let v = e.get(off..off.checked_add(size)?)?;
            let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
            let name = std::str::from_utf8(&v[..end]).ok()?;
            return Some(name.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 object whose `.modname` section holds `name`.
    fn elf_module(name: &str) -> Vec<u8> {
        let strtab = b"\0.shstrtab\0.modname\0";
        let modname = format!("{name}\0");
        let mut e = vec![0u8; 64];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        let strtab_off = e.len();
        e.extend_from_slice(strtab);
        let modname_off = e.len();
        e.extend_from_slice(modname.as_bytes());
        while !e.len().is_multiple_of(8) {
            e.push(0);
        }
        let shoff = e.len();
        // Three sections: null, .shstrtab (name 1), .modname (name 11).
        for (name, off, size) in [
            (0u32, 0usize, 0usize),
            (1, strtab_off, strtab.len()),
            (11, modname_off, modname.len()),
        ] {
            let mut sh = vec![0u8; 64];
            sh[..4].copy_from_slice(&name.to_le_bytes());
            sh[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            sh[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            e.extend_from_slice(&sh);
        }
        e[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        e[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        e[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        e[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        e
    }

    /// A PE32+ image with a `mods` section holding `objects` (type, bytes).
    fn pe_image(objects: &[(u32, Vec<u8>)]) -> Vec<u8> {
        let mut mods = vec![0u8; 24];
        mods[..4].copy_from_slice(&MODULE_MAGIC.to_le_bytes());
        mods[8..16].copy_from_slice(&24u64.to_le_bytes());
        for (kind, body) in objects {
            mods.extend_from_slice(&kind.to_le_bytes());
            mods.extend_from_slice(&((body.len() + 8) as u32).to_le_bytes());
            mods.extend_from_slice(body);
        }
        let size = mods.len() as u64;
        mods[16..24].copy_from_slice(&size.to_le_bytes());
        let mut d = vec![0u8; 0x200];
        d[..2].copy_from_slice(b"MZ");
        let pe = 0x80usize;
        d[0x3c..0x40].copy_from_slice(&(pe as u32).to_le_bytes());
        d[pe..pe + 4].copy_from_slice(b"PE\0\0");
        d[pe + 6..pe + 8].copy_from_slice(&1u16.to_le_bytes());
        d[pe + 20..pe + 22].copy_from_slice(&240u16.to_le_bytes());
        d[pe + 24..pe + 26].copy_from_slice(&0x20bu16.to_le_bytes());
        let s = pe + 24 + 240;
        d.resize(s + 40, 0);
        d[s..s + 8].copy_from_slice(b"mods\0\0\0\0");
        let raw = d.len().next_multiple_of(16);
        d[s + 16..s + 20].copy_from_slice(&(mods.len() as u32).to_le_bytes());
        d[s + 20..s + 24].copy_from_slice(&(raw as u32).to_le_bytes());
        d.resize(raw, 0);
        d.extend_from_slice(&mods);
        d
    }

    #[test]
    fn modules_prefix_and_config_are_read() {
        let img = pe_image(&[
            (0, elf_module("tftp")),
            (0, elf_module("efinet")),
            (0, elf_module("http")),
            (2, b"normal (memdisk)/grub.cfg\n\0".to_vec()),
            (3, b"/grub\0\0\0".to_vec()),
        ]);
        let g = inspect(&img).unwrap();
        assert_eq!(g.prefix.as_deref(), Some("/grub"));
        assert!(g.has_http() && g.has_tftp() && g.embedded_config);
        assert_eq!(g.modules.len(), 3);
        let no_http = pe_image(&[(0, elf_module("tftp")), (0, elf_module("efinet"))]);
        let g = inspect(&no_http).unwrap();
        assert!(!g.has_http() && g.has_tftp());
        assert_eq!(g.prefix, None);
    }

    #[test]
    fn garbage_is_refused_and_never_panics() {
        assert_eq!(inspect(b""), Err(ImageError::NotPe("no MZ header")));
        assert!(matches!(inspect(b"MZ\0\0"), Err(ImageError::NotPe(_))));
        let img = pe_image(&[(0, elf_module("http"))]);
        // Every truncation and every single-byte corruption: an answer, no panic.
        for cut in 0..img.len() {
            let _ = inspect(&img[..cut]);
        }
        for i in 0..img.len() {
            for v in [0u8, 0xff, 0x7f] {
                let mut bad = img.clone();
                bad[i] = v;
                let _ = inspect(&bad);
            }
        }
        let mut no_mods = img.clone();
        let at = no_mods.windows(4).position(|w| w == b"mods").unwrap();
        no_mods[at] = b'x';
        assert_eq!(inspect(&no_mods), Err(ImageError::NoModules));
    }

    /// Debian's own image, as the lab boots it.
    #[test]
    fn debian_signed_netboot_grub_has_no_http() {
        let path = "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed";
        let data = std::fs::read(path).unwrap_or_else(|e| {
            panic!("{path}: {e}: install the Debian package grub-efi-amd64-signed")
        });
        let g = inspect(&data).unwrap();
        assert_eq!(g.prefix.as_deref(), Some("/grub"));
        assert!(g.has_tftp() && !g.has_http(), "{:?}", g.modules);
        assert!(g.modules.contains("linux") && g.modules.contains("regexp"));
    }
}
