use std::fmt;
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use url::Url;

use crate::Loader;

/// Where the bytes of a kernel or initrd come from.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum FileRef {
    /// A file on the server's disk, read when a client asks for it.
    Local(PathBuf),
    /// An http(s) URL, streamed through ironpxe to the client.
    Remote(Url),
}

/// Why a kernel or initrd reference was refused.
#[derive(Debug, thiserror::Error)]
pub enum FileRefError {
    /// A URL that could not be parsed.
    #[error("{input:?} is not a valid URL: {source}")]
    BadUrl {
        /// The rejected text.
        input: String,
        /// What the URL parser said.
        source: url::ParseError,
    },
    /// A URL scheme ironpxe cannot fetch.
    #[error("{input:?}: unsupported URL scheme {scheme:?} (use a local path, file://, http:// or https://)")]
    Scheme {
        /// The rejected text.
        input: String,
        /// Its scheme.
        scheme: String,
    },
    /// Empty text.
    #[error("empty file reference")]
    Empty,
}

impl FileRef {
    /// Parses a command-line or config reference: `http://`, `https://` and `file://`
    /// URLs, or a plain local path. Relative paths are kept as given; the caller decides
    /// what they are relative to.
    pub fn parse(input: &str) -> Result<Self, FileRefError> {
        if input.is_empty() {
            return Err(FileRefError::Empty);
        }
        if !input.contains("://") {
            return Ok(FileRef::Local(PathBuf::from(input)));
        }
        let url = Url::parse(input).map_err(|source| FileRefError::BadUrl {
            input: input.to_string(),
            source,
        })?;
        match url.scheme() {
            "http" | "https" => Ok(FileRef::Remote(url)),
            "file" => url
                .to_file_path()
                .map(FileRef::Local)
                .map_err(|()| FileRefError::Scheme {
                    input: input.to_string(),
                    scheme: "file".into(),
                }),
            other => Err(FileRefError::Scheme {
                input: input.to_string(),
                scheme: other.to_string(),
            }),
        }
    }

    /// The stable id under which this file is served.
    pub fn id(&self) -> FileId {
        let mut h = Sha256::new();
        h.update(b"ironpxe-file-v1\0");
        h.update(self.to_string().as_bytes());
        let digest = h.finalize();
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(32);
        for b in &digest[..16] {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        FileId(s)
    }

    /// The last path component, used as the image name in iPXE scripts (EFI kernels
    /// look initrds up by this name). Falls back to `fallback` when there is none.
    pub fn file_name(&self, fallback: &str) -> String {
        let name = match self {
            FileRef::Local(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()),
            FileRef::Remote(u) => u
                .path_segments()
                .and_then(|mut s| s.next_back())
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        };
        name.filter(|n| {
            n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        })
        .unwrap_or_else(|| fallback.to_string())
    }
}

impl fmt::Display for FileRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileRef::Local(p) => write!(f, "{}", p.display()),
            FileRef::Remote(u) => write!(f, "{u}"),
        }
    }
}

/// The opaque name of a served file, as it appears in `/_/file?name=ID`.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct FileId(String);

impl FileId {
    /// Wraps an id received from a client. It is only a lookup key: an id that no boot
    /// spec produced finds nothing.
    pub fn from_wire(s: &str) -> Self {
        FileId(s.to_string())
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What one machine boots.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BootSpec {
    /// The kernel image.
    pub kernel: FileRef,
    /// Initrds, loaded in order.
    pub initrds: Vec<FileRef>,
    /// The kernel command line, passed exactly.
    pub cmdline: String,
    /// Text shown on the client console before booting.
    pub message: Option<String>,
    /// What loads it: iPXE (the default), or shim and GRUB for Secure Boot, or GRUB.
    pub loader: Loader,
}

impl BootSpec {
    /// Every file this spec references, kernel first.
    pub fn files(&self) -> impl Iterator<Item = &FileRef> {
        std::iter::once(&self.kernel).chain(self.initrds.iter())
    }

    /// The ids of every file a machine booting this spec is given: the kernel, the
    /// initrds and the files its command line names (`{{ URL "x" }}`, resolved).
    pub fn file_ids(&self) -> Vec<FileId> {
        let mut ids: Vec<FileId> = self.files().map(FileRef::id).collect();
        ids.extend(crate::template::file_ids(&self.cmdline));
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_urls() {
        assert_eq!(
            FileRef::parse("/boot/vmlinuz").unwrap(),
            FileRef::Local("/boot/vmlinuz".into())
        );
        assert_eq!(
            FileRef::parse("file:///boot/vmlinuz").unwrap(),
            FileRef::Local("/boot/vmlinuz".into())
        );
        assert!(matches!(
            FileRef::parse("https://example.org/k").unwrap(),
            FileRef::Remote(_)
        ));
        assert!(matches!(
            FileRef::parse("ftp://example.org/k"),
            Err(FileRefError::Scheme { .. })
        ));
        assert!(matches!(
            FileRef::parse("http://[bad"),
            Err(FileRefError::BadUrl { .. })
        ));
        assert!(matches!(FileRef::parse(""), Err(FileRefError::Empty)));
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = FileRef::parse("/srv/a").unwrap();
        let b = FileRef::parse("/srv/b").unwrap();
        assert_eq!(a.id(), FileRef::parse("file:///srv/a").unwrap().id());
        assert_ne!(a.id(), b.id());
        assert_eq!(a.id().as_str().len(), 32);
        assert!(a.id().as_str().chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn a_spec_gives_its_files_and_those_its_cmdline_names() {
        let extra = FileRef::parse("/srv/cloud-config").unwrap();
        let spec = BootSpec {
            kernel: FileRef::parse("/k").unwrap(),
            initrds: vec![FileRef::parse("/i").unwrap()],
            cmdline: format!("a {} b", crate::template::file_marker(&extra.id())),
            message: None,
            loader: Default::default(),
        };
        assert_eq!(
            spec.file_ids(),
            [spec.kernel.id(), spec.initrds[0].id(), extra.id()]
        );
    }

    #[test]
    fn file_names_are_script_safe() {
        assert_eq!(
            FileRef::parse("/srv/initrd.img").unwrap().file_name("x"),
            "initrd.img"
        );
        assert_eq!(
            FileRef::parse("http://h/a/b/bzImage")
                .unwrap()
                .file_name("x"),
            "bzImage"
        );
        assert_eq!(
            FileRef::parse("http://h/").unwrap().file_name("kernel"),
            "kernel"
        );
        assert_eq!(
            FileRef::parse("/srv/we ird$name")
                .unwrap()
                .file_name("initrd0"),
            "initrd0"
        );
    }
}
