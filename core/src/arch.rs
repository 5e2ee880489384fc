use std::fmt;

/// Client system architecture, DHCP option 93 (RFC 4578 and the IANA registry).
///
/// Unknown codes are kept in [`ClientArch::Unknown`] so they survive a round trip
/// and can be named in logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ClientArch {
    /// 0: x86 BIOS.
    Bios,
    /// 6: EFI IA32.
    EfiIa32,
    /// 7: EFI x64.
    EfiX64,
    /// 9: EFI x86-64 "BC", which most real x64 firmware sends.
    EfiBc,
    /// 10: EFI ARM32.
    EfiArm32,
    /// 11: EFI ARM64.
    EfiArm64,
    /// 15: UEFI HTTP Boot, x86 IA32.
    HttpIa32,
    /// 16: UEFI HTTP Boot, x64.
    HttpX64,
    /// 18: UEFI HTTP Boot, ARM32.
    HttpArm32,
    /// 19: UEFI HTTP Boot, ARM64.
    HttpArm64,
    /// Any other code.
    Unknown(u16),
}

impl ClientArch {
    /// Decodes an option 93 value.
    pub fn from_code(code: u16) -> Self {
        match code {
            0 => Self::Bios,
            6 => Self::EfiIa32,
            7 => Self::EfiX64,
            9 => Self::EfiBc,
            10 => Self::EfiArm32,
            11 => Self::EfiArm64,
            15 => Self::HttpIa32,
            16 => Self::HttpX64,
            18 => Self::HttpArm32,
            19 => Self::HttpArm64,
            other => Self::Unknown(other),
        }
    }

    /// The option 93 value.
    pub fn code(self) -> u16 {
        match self {
            Self::Bios => 0,
            Self::EfiIa32 => 6,
            Self::EfiX64 => 7,
            Self::EfiBc => 9,
            Self::EfiArm32 => 10,
            Self::EfiArm64 => 11,
            Self::HttpIa32 => 15,
            Self::HttpX64 => 16,
            Self::HttpArm32 => 18,
            Self::HttpArm64 => 19,
            Self::Unknown(c) => c,
        }
    }

    /// True for UEFI HTTP Boot clients (they fetch a URL, never TFTP).
    pub fn is_http_boot(self) -> bool {
        matches!(
            self,
            Self::HttpIa32 | Self::HttpX64 | Self::HttpArm32 | Self::HttpArm64
        )
    }

    /// True for any UEFI firmware (PXE or HTTP Boot).
    pub fn is_efi(self) -> bool {
        !matches!(self, Self::Bios | Self::Unknown(_))
    }
}

impl fmt::Display for ClientArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Bios => "bios",
            Self::EfiIa32 => "efi-ia32",
            Self::EfiX64 => "efi-x64",
            Self::EfiBc => "efi-bc",
            Self::EfiArm32 => "efi-arm32",
            Self::EfiArm64 => "efi-arm64",
            Self::HttpIa32 => "http-ia32",
            Self::HttpX64 => "http-x64",
            Self::HttpArm32 => "http-arm32",
            Self::HttpArm64 => "http-arm64",
            Self::Unknown(c) => return write!(f, "unknown({c})"),
        };
        f.write_str(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for code in 0..=u16::MAX {
            assert_eq!(ClientArch::from_code(code).code(), code);
        }
    }

    #[test]
    fn known_codes_are_named() {
        assert_eq!(ClientArch::from_code(0), ClientArch::Bios);
        assert_eq!(ClientArch::from_code(9), ClientArch::EfiBc);
        assert_eq!(ClientArch::from_code(16), ClientArch::HttpX64);
        assert_eq!(ClientArch::from_code(42), ClientArch::Unknown(42));
        assert_eq!(ClientArch::from_code(42).to_string(), "unknown(42)");
        assert!(ClientArch::HttpArm64.is_http_boot());
        assert!(!ClientArch::EfiX64.is_http_boot());
    }
}
