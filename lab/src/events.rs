//! ironpxe's boot events as the lab reads them.
//!
//! The lab reads the events from ironpxe's own status feed, `GET /api/v1/log`
//! ([`EventFeed`]): the typed events the status store received, in order, with
//! their fields. For a process that has exited, the last feed read is kept. The
//! feed is fetched from inside ironpxe's namespace, by a thread that enters it.
//!
//! [`parse_event_line`] reads the same events from a log line instead (text format,
//! values bare or double-quoted, span fields in `name{k=v}:` prefixes, or JSON), for
//! people reading logs and for logs kept from elsewhere.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use ironpxe_core::EVENT_TARGET;

/// One boot event logged by ironpxe.
#[derive(Debug, Clone)]
pub struct Event {
    /// When the line was read.
    pub at: Instant,
    /// The `event` field, e.g. `dhcp.offer`.
    pub name: String,
    /// The other fields, in order, unquoted (span fields last).
    pub fields: Vec<(String, String)>,
    /// The log line as printed, or for events read from the feed, their summary.
    pub line: String,
}

impl Event {
    /// The value of a field.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `name k=v k=v`, for timelines and messages.
    pub fn summary(&self) -> String {
        let mut s = self.name.clone();
        for (k, v) in &self.fields {
            if v.contains(' ') || v.is_empty() {
                s.push_str(&format!(" {k}={v:?}"));
            } else {
                s.push_str(&format!(" {k}={v}"));
            }
        }
        s
    }
}

/// Reads a running ironpxe's status feed (`GET /api/v1/log`) from inside its
/// network namespace (or the host's, with user networking), keeping every event
/// seen so far.
#[derive(Debug)]
pub struct EventFeed {
    ns: Option<String>,
    url: String,
    seen: Mutex<(u64, Vec<Event>)>,
}

impl EventFeed {
    /// The feed of the ironpxe in namespace `ns` (`None`: this process's own)
    /// whose status server is at `base` (`http://ADDR:PORT`).
    pub fn new(ns: Option<&str>, base: &str) -> Self {
        EventFeed {
            ns: ns.map(str::to_string),
            url: format!("{base}/api/v1/log"),
            seen: Mutex::new((0, Vec::new())),
        }
    }

    /// The feed of an ironpxe started in place of the one `previous` read: its
    /// events start with those `previous` saw, and its own are read from the start
    /// (a restarted ironpxe numbers its events afresh).
    pub fn after(previous: &EventFeed, ns: Option<&str>, base: &str) -> Self {
        let feed = EventFeed::new(ns, base);
        let seen = previous.events();
        feed.seen.lock().unwrap_or_else(|e| e.into_inner()).1 = seen;
        feed
    }

    /// Every event so far: what was read before, plus what the feed has now. When
    /// the feed cannot be read (ironpxe has exited), what was read before.
    pub fn events(&self) -> Vec<Event> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let after = seen.0;
        if let Some((next, new)) = self.fetch(after) {
            seen.0 = next.saturating_sub(1).max(after);
            seen.1.extend(new);
        }
        seen.1.clone()
    }

    fn fetch(&self, after: u64) -> Option<(u64, Vec<Event>)> {
        let url = format!("{}?after={after}", self.url);
        let get = move || crate::fetch::http_get(&url, Duration::from_secs(3));
        let body = match &self.ns {
            Some(ns) => crate::netns::in_netns(ns, get).ok()??,
            None => get()?,
        };
        parse_log_json(&body, Instant::now(), SystemTime::now())
    }
}

/// Reads a `GET /api/v1/log` answer: the next sequence number and the events.
/// Times are placed on the lab's clock by their distance from `now_wall`.
pub fn parse_log_json(
    body: &[u8],
    now: Instant,
    now_wall: SystemTime,
) -> Option<(u64, Vec<Event>)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let next = v.get("next")?.as_u64()?;
    let wall_ms = now_wall.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64;
    let events = v
        .get("events")?
        .as_array()?
        .iter()
        .filter_map(|e| {
            let name = e.get("event")?.as_str()?.to_string();
            let t_ms = e.get("t_ms")?.as_u64()?;
            let ago = Duration::from_millis(wall_ms.saturating_sub(t_ms));
            let fields: Vec<(String, String)> = e
                .get("details")?
                .as_object()?
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect();
            let mut ev = Event {
                at: now.checked_sub(ago).unwrap_or(now),
                name,
                fields,
                line: String::new(),
            };
            ev.line = ev.summary();
            Some(ev)
        })
        .collect();
    Some((next, events))
}

/// Parses one log line; `None` unless it is an `ironpxe::event` with an `event` field.
pub fn parse_event_line(line: &str) -> Option<(String, Vec<(String, String)>)> {
    let line = line.trim();
    if line.starts_with('{') {
        return parse_json_line(line);
    }
    let pos = line.find(EVENT_TARGET)?;
    let (before, after) = line.split_at(pos);
    let after = &after[EVENT_TARGET.len()..];
    let after = after.strip_prefix(':').unwrap_or(after);
    let mut fields = parse_kv(after);
    // Span fields: `span{k=v k2="x y"}:` segments before the target.
    let mut rest = before;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        for (k, v) in parse_kv(&rest[open + 1..open + close]) {
            if !fields.iter().any(|(fk, _)| *fk == k) {
                fields.push((k, v));
            }
        }
        rest = &rest[open + close + 1..];
    }
    let idx = fields.iter().position(|(k, _)| k == "event")?;
    let (_, name) = fields.remove(idx);
    Some((name, fields))
}

fn parse_json_line(line: &str) -> Option<(String, Vec<(String, String)>)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("target")?.as_str()? != EVENT_TARGET {
        return None;
    }
    let obj = v.get("fields")?.as_object()?;
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let name = text(obj.get("event")?);
    let mut fields: Vec<(String, String)> = obj
        .iter()
        .filter(|(k, _)| *k != "event" && *k != "message")
        .map(|(k, v)| (k.clone(), text(v)))
        .collect();
    // A boot event's fields are rendered into its message as `k=v` pairs.
    if let Some(m) = obj.get("message").and_then(|m| m.as_str()) {
        for (k, v) in parse_kv(m) {
            if !fields.iter().any(|(fk, _)| *fk == k) {
                fields.push((k, v));
            }
        }
    }
    if let Some(span) = v.get("span").and_then(|s| s.as_object()) {
        for (k, v) in span {
            if k != "name" && !fields.iter().any(|(fk, _)| fk == k) {
                fields.push((k.clone(), text(v)));
            }
        }
    }
    Some((name, fields))
}

/// Parses `k=v k2="quoted \"value\"" words k3=v3`; tokens without `=` (the message)
/// are skipped.
pub(crate) fn parse_kv(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.peek() != Some(&'=') {
            continue; // a bare word of the message
        }
        chars.next();
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(match n {
                                'n' => '\n',
                                't' => '\t',
                                other => other,
                            });
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        let valid_key = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
        if valid_key {
            out.push((key, value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_event_with_quotes_and_spans() {
        let line = "2026-01-01T00:00:00.123Z  INFO client{mac=52:54:00:aa:bb:cc xid=0x1}: \
                    ironpxe::event: offered boot event=\"dhcp.offer\" file=\"undionly.kpxe\" \
                    note=\"a \\\"b\\\" c\" bytes=123";
        let (name, fields) = parse_event_line(line).unwrap();
        assert_eq!(name, "dhcp.offer");
        let get = |k: &str| {
            fields
                .iter()
                .find(|(fk, _)| fk == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("file").as_deref(), Some("undionly.kpxe"));
        assert_eq!(get("note").as_deref(), Some("a \"b\" c"));
        assert_eq!(get("bytes").as_deref(), Some("123"));
        assert_eq!(get("mac").as_deref(), Some("52:54:00:aa:bb:cc"));
    }

    #[test]
    fn bare_event_and_non_events() {
        let (name, _) =
            parse_event_line(" INFO ironpxe::event: event=tftp.done file=x bytes=9").unwrap();
        assert_eq!(name, "tftp.done");
        assert!(parse_event_line(" INFO ironpxe::dhcp: event=dhcp.offer").is_none());
        assert!(parse_event_line(" INFO ironpxe::event: no event here").is_none());
    }

    #[test]
    fn json_event() {
        let line = r#"{"timestamp":"x","level":"INFO","fields":{"event":"http.booting","mac":"52:54:00:00:00:01","bytes":5},"target":"ironpxe::event"}"#;
        let (name, fields) = parse_event_line(line).unwrap();
        assert_eq!(name, "http.booting");
        assert!(fields.contains(&("bytes".to_string(), "5".to_string())));
    }

    #[test]
    fn the_status_log_feed_is_read_with_times_on_the_lab_clock() {
        let body = br#"{"next": 3, "events": [
            {"seq": 1, "t_ms": 1000, "event": "dhcp.offer", "details": {"mac": "52:54:00:00:00:01", "ipxe": false}},
            {"seq": 2, "t_ms": 1500, "event": "tftp.done", "details": {"bytes": 70000, "file": "undionly.kpxe"}}
        ]}"#;
        let now = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_millis(2000);
        let (next, evs) = parse_log_json(body, now, wall).unwrap();
        assert_eq!(next, 3);
        assert_eq!(evs[0].name, "dhcp.offer");
        assert_eq!(evs[0].field("ipxe"), Some("false"));
        assert_eq!(evs[1].field("bytes"), Some("70000"));
        assert_eq!(now.duration_since(evs[0].at), Duration::from_millis(1000));
        assert_eq!(
            evs[1].at.duration_since(evs[0].at),
            Duration::from_millis(500)
        );
    }
}
