//! The boot events the driver emits, captured as typed values by an event sink.
//! One test per binary: it installs the process's sink.

mod common;

use common::*;
use ironpxe_tftp::{ErrorCode, Options, Packet, TftpConfig};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Fields = BTreeMap<String, String>;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Fields>>>);

impl ironpxe_core::EventSink for Capture {
    fn event(&self, event: &ironpxe_core::BootEvent) {
        let mut f = Fields::new();
        f.insert("event".into(), event.name().into());
        event.fields(&mut |k, v| {
            f.insert(k.into(), v.to_string());
        });
        let level = match event.loudness() {
            ironpxe_core::event::Loudness::Debug => "DEBUG",
            ironpxe_core::event::Loudness::Info => "INFO",
            ironpxe_core::event::Loudness::Warn => "WARN",
        };
        f.insert("level".into(), level.into());
        self.0.lock().unwrap().push(f);
    }
}

impl Capture {
    /// Waits for the record `event` about `file`: transfers log their end
    /// asynchronously, after the client has its last ACK sent.
    fn wait(&self, event: &str, file: &str) -> Fields {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = self
                .0
                .lock()
                .unwrap()
                .iter()
                .find(|f| {
                    f.get("event").map(String::as_str) == Some(event)
                        && f.get("file").map(String::as_str) == Some(file)
                })
                .cloned();
            if let Some(f) = found {
                return f;
            }
            assert!(Instant::now() < deadline, "no {event} for {file}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_emit_start_done_aborted_and_failed() {
    let cap = Capture::default();
    assert!(ironpxe_core::event::set_sink(Arc::new(cap.clone())));
    let srv = Server::start(TftpConfig::default()).await;
    let addr = srv.addr;
    let c = cap.clone();
    tokio::task::spawn_blocking(move || {
        let opts = Options {
            blksize: Some(1432),
            windowsize: Some(4),
            tsize: Some(0),
            ..Options::default()
        };
        assert!(matches!(
            fetch(addr, "undionly.kpxe", opts),
            Fetched::File { .. }
        ));
        let start = c.wait("tftp.start", "undionly.kpxe");
        assert_eq!(start["peer"].split(':').next(), Some("127.0.0.1"));
        assert_eq!(start["blksize"], "1432");
        assert_eq!(start["windowsize"], "4");
        assert_eq!(start["tsize"], "true");
        let done = c.wait("tftp.done", "undionly.kpxe");
        assert_eq!(done["bytes"], "100000");
        assert_eq!(done["blksize"], "1432");
        assert_eq!(done["windowsize"], "4");
        // A count, not zero: on a loaded machine an ACK can miss the 10 ms timer floor.
        assert!(
            done["retransmits"].parse::<u64>().is_ok(),
            "retransmits = {:?}",
            done["retransmits"]
        );
        assert_eq!(done["level"], "INFO");
        assert!(done.contains_key("duration_ms"));

        assert!(matches!(
            fetch(addr, "nope.efi", Options::default()),
            Fetched::Error(ErrorCode::FileNotFound, _)
        ));
        let failed = c.wait("tftp.failed", "nope.efi");
        assert_eq!(failed["reason"], "file not found");
        assert_eq!(failed["level"], "WARN");

        // EDK2's size probe: OACK, then ERROR 8.
        let s = client();
        let probe = Options {
            tsize: Some(0),
            ..Options::default()
        };
        s.send_to(&rrq("efi/ipxe.efi", probe), addr).unwrap();
        let (_, tid) = recv(&s);
        let abort = Packet::Error {
            code: ErrorCode::OptionNegotiation,
            message: "probe".into(),
        };
        s.send_to(&abort.encode().unwrap(), tid).unwrap();
        let aborted = c.wait("tftp.aborted", "efi/ipxe.efi");
        assert_eq!(aborted["code"], "8");
        assert_eq!(aborted["level"], "INFO");
    })
    .await
    .unwrap();
    srv.stop().await;
}
