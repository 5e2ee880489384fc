//! One boot event as the status store keeps (and saves) it, made from a typed
//! [`BootEvent`].

use ironpxe_core::event::{BootEvent, FieldValue};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use ironpxe_core::EVENT_TARGET;

/// One boot event: when, which, and its other fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Wall-clock time, Unix milliseconds.
    pub t_ms: u64,
    /// The event name, e.g. `dhcp.offer`.
    pub event: String,
    /// The other fields (`mac`, `arch`, `peer`, `bytes`, ...). Numbers and booleans
    /// stay JSON numbers and booleans; everything else is text. The store adds `kind`
    /// (`kernel`, `initrd`) to HTTP file events.
    pub details: Map<String, Value>,
}

impl Record {
    /// A record with no details.
    pub fn new(t_ms: u64, event: &str) -> Self {
        Record {
            t_ms,
            event: event.to_string(),
            details: Map::new(),
        }
    }

    /// Adds a detail (builder style, for tests and callers that make records).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }

    /// A detail as text (numbers are formatted).
    pub fn text(&self, key: &str) -> Option<String> {
        match self.details.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }

    /// A detail that is text, borrowed.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.details.get(key)?.as_str()
    }

    /// A detail as a number, if it is one.
    pub fn number(&self, key: &str) -> Option<u64> {
        self.details.get(key)?.as_u64()
    }

    /// The time as RFC 3339 UTC with milliseconds.
    pub fn rfc3339(&self) -> String {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.t_ms);
        humantime::format_rfc3339_millis(t).to_string()
    }
}

/// The longest text kept from one event field: the store is bounded in events per
/// machine, and this bounds each event.
const MAX_FIELD_CHARS: usize = 512;

/// `s`, cut to [`MAX_FIELD_CHARS`] characters with a marker when longer.
fn bounded(mut s: String) -> String {
    if let Some((cut, _)) = s.char_indices().nth(MAX_FIELD_CHARS) {
        s.truncate(cut);
        s.push('…');
    }
    s
}

impl Record {
    /// The record of `event`, at `t_ms`: its name and its fields, numbers and flags
    /// kept as JSON numbers and booleans, text bounded.
    pub fn from_event(t_ms: u64, event: &BootEvent) -> Self {
        let mut details = Map::new();
        event.fields(&mut |key, value| {
            let v = match value {
                FieldValue::Text(t) => Value::String(bounded(t.into_owned())),
                FieldValue::Number(n) => Value::from(n),
                FieldValue::Bool(b) => Value::from(b),
            };
            details.insert(key.to_string(), v);
        });
        Record {
            t_ms,
            event: event.name().to_string(),
            details,
        }
    }
}

#[cfg(test)]
mod bound_tests {
    use super::bounded;

    #[test]
    fn long_field_values_are_cut() {
        assert_eq!(bounded("short".into()), "short");
        let long = bounded("é".repeat(2000));
        assert_eq!(long.chars().count(), super::MAX_FIELD_CHARS + 1);
        assert!(long.ends_with('…'));
    }
}
