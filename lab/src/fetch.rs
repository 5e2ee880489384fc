//! A minimal HTTP/1.1 GET for the lab's own reads of ironpxe's status server: plain
//! `http://ADDR:PORT/path`, one request per connection, a size cap, a timeout.
//! Its parser never panics on what a server sends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The largest answer read; the status feed is far smaller.
const MAX_ANSWER: u64 = 64 << 20;

/// The body of a `200` answer to `GET url`, or `None` (unreachable, not 200,
/// malformed, too large, too slow). `url` is `http://IP:PORT/path?query`.
pub(crate) fn http_get(url: &str, timeout: Duration) -> Option<Vec<u8>> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = authority.parse().ok()?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut answer).ok()?;
    parse_answer(&answer)
}

/// The body of a complete `HTTP/1.x 200` answer: by Content-Length, chunked, or up
/// to the end of the connection.
pub(crate) fn parse_answer(answer: &[u8]) -> Option<Vec<u8>> {
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&answer[..head_end]).ok()?;
    let body = &answer[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next()?;
    let mut words = status.split_whitespace();
    if !words.next()?.starts_with("HTTP/1.") || words.next()? != "200" {
        return None;
    }
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().ok()?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    if chunked {
        return dechunk(body);
    }
    match length {
        Some(n) => body.get(..n).map(<[u8]>::to_vec),
        None => Some(body.to_vec()),
    }
}

/// Decodes a chunked body; `None` if it is cut short or malformed.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size..)?.strip_prefix(b"\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_by_length_chunks_and_end() {
        assert_eq!(
            parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef").as_deref(),
            Some(&b"abc"[..])
        );
        assert_eq!(
            parse_answer(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
            )
            .as_deref(),
            Some(&b"abcde"[..])
        );
        assert_eq!(
            parse_answer(b"HTTP/1.0 200 OK\r\n\r\nall").as_deref(),
            Some(&b"all"[..])
        );
    }

    #[test]
    fn other_answers_and_garbage_are_none() {
        for bad in [
            &b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"garbage",
            b"",
        ] {
            assert_eq!(
                parse_answer(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn unreachable_and_bad_urls_are_none() {
        assert_eq!(http_get("ftp://x/", Duration::from_millis(100)), None);
        assert_eq!(
            http_get("http://not-an-ip:1/", Duration::from_millis(100)),
            None
        );
    }
}
