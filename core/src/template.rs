//! Kernel command line templates: `{{ URL "x" }}` and `{{ ID "x" }}`.
//!
//! pixiecore runs command lines through Go's `text/template` with two functions:
//! `URL` (API mode) and `ID` (boot mode). Both name a file (a path or a URL, resolved
//! like a kernel) and expand to the URL under which the boot server itself serves that
//! file. ironpxe accepts the same subset of the template language that those command
//! lines use:
//!
//! - `{{ URL "x" }}` and `{{ ID "x" }}`, with a Go string literal (`"..."` with
//!   backslash escapes, or a raw `` `...` `` string);
//! - `{{ "text" }}`, which prints the literal (the way to write `{{` itself);
//! - `{{ DONE_URL }}` (ironpxe's own), the URL an installer POSTs to when the install
//!   succeeded: `http://<ironpxe>/api/v1/machines/<mac>/installed`, for the machine
//!   the script is rendered for (see `once = true`);
//! - the trim markers `{{- ` and ` -}}`, which drop the whitespace before or after.
//!
//! Anything else between `{{` and `}}` is refused with the byte offset of the problem.
//!
//! Expansion happens in two steps, because the URL depends on the address the client
//! used to reach ironpxe, which is only known when the script is rendered:
//!
//! 1. A booter calls [`resolve_cmdline`] when it builds a [`crate::BootSpec`]: each
//!    referenced file becomes a [`FileRef`], which the booter must then serve, and the
//!    command line is rewritten into its canonical form, in which every file is a
//!    [`file_marker`] (its id between two NULs) and all other text is literal.
//! 2. The script renderer calls [`render_cmdline`] on that canonical form with the
//!    served URL of each id. A spec whose command line was never resolved (no NUL)
//!    is passed through unchanged, `{{` included.

use std::fmt;

use crate::{FileId, FileRef};

/// Why a command line template was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cmdline template at byte {offset}: {message}")]
pub struct TemplateError {
    /// Byte offset in the command line.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

/// One part of a parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Text passed through as is.
    Text(String),
    /// `{{ URL "x" }}`: the served URL of file `x`.
    Url(String),
    /// `{{ ID "x" }}`: the same as `URL` (pixiecore's boot-mode spelling).
    Id(String),
    /// `{{ DONE_URL }}`: where the machine's installer reports success.
    DoneUrl,
}

/// Splits `text` into literal text and file references.
pub fn parse(text: &str) -> Result<Vec<Piece>, TemplateError> {
    let mut out: Vec<Piece> = Vec::new();
    let mut rest = text;
    let mut pos = 0usize;
    let mut trim_next = false;
    let push_text = |out: &mut Vec<Piece>, s: &str| {
        if s.is_empty() {
            return;
        }
        if let Some(Piece::Text(prev)) = out.last_mut() {
            prev.push_str(s);
        } else {
            out.push(Piece::Text(s.to_string()));
        }
    };
    while let Some(open) = rest.find("{{") {
        let mut before = &rest[..open];
        if trim_next {
            before = before.trim_start();
        }
        let mut p = Parser {
            s: rest,
            i: open + 2,
            base: pos,
        };
        let trim_before = p.s[p.i..].starts_with("- ") || p.s[p.i..].starts_with("-\t");
        if trim_before {
            before = before.trim_end();
            p.i += 1;
        }
        push_text(&mut out, before);
        p.skip_ws();
        let piece = if p.peek().is_some_and(|c| c == '"' || c == '`') {
            Piece::Text(p.string()?)
        } else {
            let start = p.i;
            while p
                .peek()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                p.i += 1;
            }
            let name = &p.s[start..p.i];
            let make: fn(String) -> Piece = match name {
                "URL" => Piece::Url,
                "ID" => Piece::Id,
                DONE_URL => |_| Piece::DoneUrl,
                "" => {
                    return Err(
                        p.err("expected URL \"...\", ID \"...\", DONE_URL or a string literal")
                    )
                }
                other => {
                    return Err(TemplateError {
                        offset: pos + start,
                        message: format!(
                            "unknown function {other:?}: only URL, ID and DONE_URL are available"
                        ),
                    })
                }
            };
            if name == DONE_URL {
                Piece::DoneUrl
            } else {
                if !p.skip_ws() {
                    return Err(p.err(&format!("{name} needs one string argument")));
                }
                make(p.string()?)
            }
        };
        p.skip_ws();
        trim_next = false;
        if p.s[p.i..].starts_with("-}}") && p.s[..p.i].ends_with(char::is_whitespace) {
            trim_next = true;
            p.i += 1;
        }
        if !p.s[p.i..].starts_with("}}") {
            return Err(p.err("expected }}"));
        }
        p.i += 2;
        match piece {
            Piece::Text(t) => push_text(&mut out, &t),
            other => out.push(other),
        }
        pos += p.i;
        rest = &rest[p.i..];
    }
    let tail = if trim_next { rest.trim_start() } else { rest };
    push_text(&mut out, tail);
    Ok(out)
}

/// The name of the template function that expands to the installed-callback URL.
pub const DONE_URL: &str = "DONE_URL";

/// How a canonical command line marks `{{ DONE_URL }}`: a word between two NULs that
/// is not a file id.
pub const DONE_MARKER: &str = "\0done\0";

struct Parser<'a> {
    s: &'a str,
    i: usize,
    /// Offset of `s` in the whole command line.
    base: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.s[self.i..].chars().next()
    }

    /// Skips spaces and tabs; true if there were any.
    fn skip_ws(&mut self) -> bool {
        let start = self.i;
        while self.peek().is_some_and(|c| c == ' ' || c == '\t') {
            self.i += 1;
        }
        self.i > start
    }

    fn err(&self, message: &str) -> TemplateError {
        TemplateError {
            offset: self.base + self.i,
            message: message.to_string(),
        }
    }

    /// A Go string literal: `"..."` with escapes, or a raw `` `...` ``.
    fn string(&mut self) -> Result<String, TemplateError> {
        let quote = self.peek().ok_or_else(|| self.err("expected a string"))?;
        if quote == '`' {
            let body = &self.s[self.i + 1..];
            let end = body
                .find('`')
                .ok_or_else(|| self.err("raw string without closing `"))?;
            self.i += end + 2;
            return Ok(body[..end].to_string());
        }
        if quote != '"' {
            return Err(self.err("expected a \"quoted\" string"));
        }
        self.i += 1;
        let mut out = String::new();
        loop {
            let c = self
                .peek()
                .ok_or_else(|| self.err("string without closing \""))?;
            let at = self.i;
            self.i += c.len_utf8();
            match c {
                '"' => return Ok(out),
                '\n' => return Err(self.err("newline in a string")),
                '\\' => {
                    let e = self
                        .peek()
                        .ok_or_else(|| self.err("string without closing \""))?;
                    self.i += e.len_utf8();
                    match e {
                        '\\' => out.push('\\'),
                        '"' => out.push('"'),
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        'a' => out.push('\x07'),
                        'b' => out.push('\x08'),
                        'f' => out.push('\x0c'),
                        'v' => out.push('\x0b'),
                        'x' | 'u' | 'U' => {
                            let n = match e {
                                'x' => 2,
                                'u' => 4,
                                _ => 8,
                            };
                            let hex = self.s.get(self.i..self.i + n).unwrap_or("");
                            let ch = u32::from_str_radix(hex, 16)
                                .ok()
                                .filter(|_| hex.len() == n && hex.is_ascii())
                                .and_then(char::from_u32)
                                .ok_or_else(|| TemplateError {
                                    offset: self.base + at,
                                    message: format!("invalid \\{e} escape"),
                                })?;
                            self.i += n;
                            out.push(ch);
                        }
                        other => {
                            return Err(TemplateError {
                                offset: self.base + at,
                                message: format!("unsupported escape \\{other}"),
                            })
                        }
                    }
                }
                c => out.push(c),
            }
        }
    }
}

/// Resolves the file references of a command line template.
///
/// `resolve` turns each `URL`/`ID` argument into the file to serve (relative paths
/// and URLs are the caller's business). Returns the canonical command line (see the
/// module documentation) and the referenced files, which the booter must serve.
pub fn resolve_cmdline(
    cmdline: &str,
    resolve: &mut dyn FnMut(&str) -> Result<FileRef, String>,
) -> Result<(String, Vec<FileRef>), TemplateError> {
    if let Some(offset) = cmdline.find('\0') {
        return Err(TemplateError {
            offset,
            message: "NUL cannot be passed to a kernel".into(),
        });
    }
    let pieces = parse(cmdline)?;
    let mut out = String::with_capacity(cmdline.len());
    let mut files = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(&t),
            Piece::DoneUrl => out.push_str(DONE_MARKER),
            Piece::Url(x) | Piece::Id(x) => {
                let f = resolve(&x).map_err(|message| TemplateError {
                    offset: 0,
                    message: format!("{x:?}: {message}"),
                })?;
                out.push_str(&file_marker(&f.id()));
                files.push(f);
            }
        }
    }
    Ok((out, files))
}

/// How a canonical command line refers to a served file: the id between two NULs.
/// NUL can never come from the user (templates refuse it, and a kernel command line
/// cannot carry it), so the marker is unambiguous.
pub fn file_marker(id: &FileId) -> String {
    format!("\0{id}\0")
}

/// Expands a canonical command line: each [`file_marker`] becomes `url(id)`.
///
/// A command line without markers comes back unchanged; `{{` outside a booter's
/// template resolution is plain text. A NUL that is not part of a marker is left in
/// place, for the script renderer to refuse.
pub fn render_cmdline(
    cmdline: &str,
    url: &dyn Fn(&FileId) -> String,
) -> Result<String, TemplateError> {
    render_cmdline_with(cmdline, url, None)
}

/// [`render_cmdline`], and each [`DONE_MARKER`] becomes `done_url` (a command line
/// rendered without one keeps the marker, for the script renderer to refuse).
pub fn render_cmdline_with(
    cmdline: &str,
    url: &dyn Fn(&FileId) -> String,
    done_url: Option<&str>,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(cmdline.len() + 64);
    let mut rest = cmdline;
    while let Some(i) = rest.find('\0') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let (Some(done), Some(tail)) = (done_url, rest[i..].strip_prefix(DONE_MARKER)) {
            out.push_str(done);
            rest = tail;
            continue;
        }
        match after.get(..33) {
            Some(m) if m.ends_with('\0') && is_file_id(&m[..32]) => {
                out.push_str(&url(&FileId::from_wire(&m[..32])));
                rest = &after[33..];
            }
            _ => {
                out.push('\0');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The ids of the files a canonical command line names, in order.
pub fn file_ids(cmdline: &str) -> Vec<FileId> {
    let mut ids = Vec::new();
    let mut rest = cmdline;
    while let Some(i) = rest.find('\0') {
        let after = &rest[i + 1..];
        match after.get(..33) {
            Some(m) if m.ends_with('\0') && is_file_id(&m[..32]) => {
                ids.push(FileId::from_wire(&m[..32]));
                rest = &after[33..];
            }
            _ => rest = after,
        }
    }
    ids
}

/// The canonical command line as a user would write it, for logs.
pub fn display_cmdline(cmdline: &str) -> String {
    cmdline
        .split('\0')
        .enumerate()
        .map(|(i, p)| {
            if i % 2 == 1 && p == "done" {
                format!("{{{{ {DONE_URL} }}}}")
            } else if i % 2 == 1 {
                format!("{{{{ ID \"{p}\" }}}}")
            } else {
                p.to_string()
            }
        })
        .collect()
}

fn is_file_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl fmt::Display for Piece {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Piece::Text(t) => f.write_str(t),
            Piece::Url(x) => write!(f, "{{{{ URL {x:?} }}}}"),
            Piece::Id(x) => write!(f, "{{{{ ID {x:?} }}}}"),
            Piece::DoneUrl => write!(f, "{{{{ {DONE_URL} }}}}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Piece {
        Piece::Text(s.into())
    }

    #[test]
    fn parses_the_pixiecore_forms() {
        assert_eq!(parse("a=b c").unwrap(), [t("a=b c")]);
        assert_eq!(
            parse("cfg={{ URL \"https://h/c\" }} x").unwrap(),
            [t("cfg="), Piece::Url("https://h/c".into()), t(" x")]
        );
        assert_eq!(
            parse("{{ID `/srv/a b`}}").unwrap(),
            [Piece::Id("/srv/a b".into())]
        );
        assert_eq!(parse("a {{ \"{{\" }} b \\x").unwrap(), [t("a {{ b \\x")]);
        assert_eq!(
            parse("a  {{- ID \"k\" -}}  b").unwrap(),
            [t("a"), Piece::Id("k".into()), t("b")]
        );
        assert_eq!(
            parse("{{ URL \"q\\\"\\u00e9\\x41\" }}").unwrap(),
            [Piece::Url("q\"éA".into())]
        );
        // `${` and lone braces are not template syntax.
        assert_eq!(parse("x=${y} }} {").unwrap(), [t("x=${y} }} {")]);
    }

    #[test]
    fn refuses_what_it_does_not_know_with_offsets() {
        let e = parse("ab {{ Foo \"x\" }}").unwrap_err();
        assert_eq!(e.offset, 6);
        assert!(e.message.contains("unknown function \"Foo\""), "{e}");
        assert_eq!(parse("{{ URL \"x\" ").unwrap_err().message, "expected }}");
        assert_eq!(
            parse("{{ URL }}").unwrap_err().message,
            "expected a \"quoted\" string"
        );
        assert_eq!(
            parse("{{ URL\"x\" }}").unwrap_err().message,
            "URL needs one string argument"
        );
        assert_eq!(
            parse("{{ URL \"x").unwrap_err().message,
            "string without closing \""
        );
        assert_eq!(parse("{{ .Name }}").unwrap_err().offset, 3);
        assert!(parse("{{ \"\\q\" }}").is_err());
    }

    #[test]
    fn resolves_then_renders_with_served_urls() {
        let mut seen = Vec::new();
        let (canon, files) = resolve_cmdline(
            "a {{ \"{{\" }} cfg={{ URL \"/srv/c\" }} k={{ ID \"http://h/k\" }}",
            &mut |x: &str| {
                seen.push(x.to_string());
                FileRef::parse(x).map_err(|e| e.to_string())
            },
        )
        .unwrap();
        assert_eq!(seen, ["/srv/c", "http://h/k"]);
        assert_eq!(files.len(), 2);
        let c = files[0].id();
        let k = files[1].id();
        assert_eq!(canon, format!("a {{{{ cfg=\0{c}\0 k=\0{k}\0"));
        assert_eq!(
            display_cmdline(&canon),
            format!("a {{{{ cfg={{{{ ID \"{c}\" }}}} k={{{{ ID \"{k}\" }}}}")
        );
        let out =
            render_cmdline(&canon, &|id| format!("http://10.0.0.2/_/file?name={id}")).unwrap();
        assert_eq!(
            out,
            format!("a {{{{ cfg=http://10.0.0.2/_/file?name={c} k=http://10.0.0.2/_/file?name={k}")
        );
        // Text without markers passes untouched, braces included; stray NULs are refused.
        for plain in ["x=${y}", "{{ URL \"/x\" }}", "{{"] {
            assert_eq!(render_cmdline(plain, &|_| String::new()).unwrap(), plain);
        }
        for stray in ["a\0b", "a\0nothex\0", "\0"] {
            assert_eq!(render_cmdline(stray, &|_| String::new()).unwrap(), stray);
        }
        assert!(resolve_cmdline("a\0", &mut |_| Err(String::new())).is_err());
    }

    #[test]
    fn done_url_resolves_to_a_marker_and_renders_per_machine() {
        assert_eq!(
            parse("a {{ DONE_URL }} {{- DONE_URL -}} b").unwrap(),
            [t("a "), Piece::DoneUrl, Piece::DoneUrl, t("b")]
        );
        let (canon, files) =
            resolve_cmdline("done={{ DONE_URL }} k={{ ID \"/k\" }}", &mut |x: &str| {
                FileRef::parse(x).map_err(|e| e.to_string())
            })
            .unwrap();
        assert_eq!(files.len(), 1);
        assert!(
            display_cmdline(&canon).starts_with("done={{ DONE_URL }} k={{ ID "),
            "{}",
            display_cmdline(&canon)
        );
        let url = |id: &FileId| format!("F/{id}");
        let out = render_cmdline_with(&canon, &url, Some("http://s/api/v1/machines/m/installed"))
            .unwrap();
        assert_eq!(
            out,
            format!(
                "done=http://s/api/v1/machines/m/installed k=F/{}",
                files[0].id()
            )
        );
        // Without a URL to put there, the marker stays for the renderer to refuse.
        assert!(render_cmdline(&canon, &url).unwrap().contains(DONE_MARKER));
        // A DONE_URL takes no argument; `{{ DONE_URL "x" }}` is refused.
        assert_eq!(
            parse("{{ DONE_URL \"x\" }}").unwrap_err().message,
            "expected }}"
        );
    }

    #[test]
    fn resolution_errors_name_the_file() {
        let e = resolve_cmdline("{{ URL \"ftp://x\" }}", &mut |x: &str| {
            FileRef::parse(x).map_err(|e| e.to_string())
        })
        .unwrap_err();
        assert!(e.message.starts_with("\"ftp://x\": "), "{e}");
    }
}
