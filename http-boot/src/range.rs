//! `Range` header parsing for local files.

/// A parsed `Range` header against a file of known length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ByteRange {
    /// No usable range: send the whole file (absent, malformed, multiple ranges or
    /// another unit are all ignored, as RFC 9110 allows).
    Full,
    /// Bytes `start..=end`, already clamped to the file.
    Part { start: u64, end: u64 },
    /// A well-formed range that selects nothing: 416.
    Unsatisfiable,
}

/// Parses a single `bytes=a-b`, `bytes=a-` or `bytes=-n` range.
pub(crate) fn parse_range(header: Option<&str>, len: u64) -> ByteRange {
    let Some(h) = header else {
        return ByteRange::Full;
    };
    let Some((unit, spec)) = h.split_once('=') else {
        return ByteRange::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return ByteRange::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return ByteRange::Full;
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    if a.is_empty() {
        // Suffix: the last n bytes.
        return match num(b) {
            None => ByteRange::Full,
            Some(0) => ByteRange::Unsatisfiable,
            Some(_) if len == 0 => ByteRange::Unsatisfiable,
            Some(n) => ByteRange::Part {
                start: len.saturating_sub(n),
                end: len - 1,
            },
        };
    }
    let Some(start) = num(a) else {
        return ByteRange::Full;
    };
    let end = if b.is_empty() {
        u64::MAX
    } else {
        match num(b) {
            Some(e) if e >= start => e,
            _ => return ByteRange::Full,
        }
    };
    if start >= len {
        return ByteRange::Unsatisfiable;
    }
    ByteRange::Part {
        start,
        end: end.min(len - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use ByteRange::*;
        let r = |h: &str, len| parse_range(Some(h), len);
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(r("bytes=0-4", 10), Part { start: 0, end: 4 });
        assert_eq!(r("bytes=3-", 10), Part { start: 3, end: 9 });
        assert_eq!(r("bytes=-3", 10), Part { start: 7, end: 9 });
        assert_eq!(r("bytes=-30", 10), Part { start: 0, end: 9 });
        assert_eq!(r("bytes=5-100", 10), Part { start: 5, end: 9 });
        assert_eq!(r("BYTES = 9-9", 10), Part { start: 9, end: 9 });
        assert_eq!(r("bytes=10-", 10), Unsatisfiable);
        assert_eq!(r("bytes=10-20", 10), Unsatisfiable);
        assert_eq!(r("bytes=-0", 10), Unsatisfiable);
        assert_eq!(r("bytes=0-", 0), Unsatisfiable);
        assert_eq!(r("bytes=-5", 0), Unsatisfiable);
        // Ignored, whole file: malformed, reversed, multiple, other unit.
        for h in [
            "bytes=5-2",
            "bytes=a-b",
            "bytes=-",
            "bytes=+1-2",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes",
            "bytes=1",
        ] {
            assert_eq!(r(h, 10), Full, "{h}");
        }
        assert_eq!(
            r("bytes=0-", u64::MAX),
            Part {
                start: 0,
                end: u64::MAX - 1
            }
        );
    }
}
