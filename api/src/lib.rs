//! The pixiecore API client: ironpxe's booter for `ironpxe api URL`.
//!
//! [`Source::parse`] reads the URL; [`ApiBooter::start`] starts the lookup thread;
//! the [`ApiBooter`] then answers [`Booter::decide`] from its memory, asking the API
//! (or reading the file tree) on a miss, and resolves the file ids its answers named.
//! [`lookups`] is the deterministic core: what a machine is answered, and which
//! machine the API is asked about next.
//!
//! # The protocol
//!
//! For each machine, ironpxe asks `GET <URL>/v1/boot/<mac>` (MAC in lowercase
//! `aa:bb:cc:dd:ee:ff` form) and gets JSON: `kernel`, `initrd` (list), `cmdline` (a
//! string, or pixiecore's older object form), `message`, or `ipxe-script` (served
//! verbatim). ironpxe also reads `loader` (`"ipxe"`, `"grub"` or `"shim"`, see
//! [`ironpxe_core::Loader`]), which pixiecore APIs do not send. Any non-200 answer, bad JSON or timeout means "do not boot this
//! machine", with one log line saying why. Relative URLs resolve against `<URL>/v1/`,
//! so `x` is `<URL>/v1/x` and `/x` is the server's root. (pixiecore's code resolves
//! against `<URL>/v1` without the slash, so there `x` is `<URL>/x`; absolute paths and
//! full URLs mean the same in both.)
//!
//! # Off the DHCP path
//!
//! A slow API must not stall other machines (a PXE client gives up on an offer in
//! seconds). Answers are kept ([`CACHE_TTL`]; "don't boot" answers for
//! [`Limits::negative_ttl`]). On a miss the booter queues a lookup, which a separate
//! thread performs, and waits for it only as long as its caller allows
//! ([`Booter::decide`]'s `wait`): the DHCP driver waits up to its lookup wait (1 s by
//! default) off its receive loop, so the first DISCOVER of a machine the API answers
//! quickly gets its offer; when the API is slower, the answer is kept for the
//! client's retransmit. Answers older than half the TTL are refreshed in the
//! background while still being used. The HTTP script request waits longer, up to
//! the request timeout.
//!
//! A flood of invented MACs cannot lock real machines out: the queue serves
//! machines the API told to boot before first, then never-seen machines that
//! retransmitted, then first packets, within a global and a per-machine rate limit
//! ([`Limits`]); see [`lookups`].
//!
//! # Files, and restarts
//!
//! File ids are derived from the file references, so they are the same after a
//! restart. Only files that some answer referenced are served: the booter remembers
//! them (at most [`MAX_FILES`], least recently used forgotten first). After a restart
//! that memory is empty; a client in the middle of a download then fails, and its
//! script, before retrying, fetches its own script URL again. That request makes
//! ironpxe ask the API about the machine, which registers the same ids, and the retry
//! succeeds.
//!
//! # `file:///DIR`
//!
//! `DIR/v1/boot/<mac>` is read directly, with no web server (the layout of a Nix
//! `linkFarm`). Reading a local file is fast, so this needs no cache: every request
//! sees the tree as it is now.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ironpxe_core::event::{emit, BootEvent};
use ironpxe_core::template::resolve_cmdline;
use ironpxe_core::{BootDecision, BootSpec, Booter, ClientArch, FileId, FileRef, MacAddr};
use serde::Deserialize;
use tracing::debug;
use url::Url;

pub mod lookups;

use lookups::{AnswerKind, Asked, Lookups};
pub use lookups::{Limits, CACHE_TTL};

/// The largest API answer read; a boot answer is a few hundred bytes.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// How many served files are remembered at most.
pub const MAX_FILES: usize = 4096;

/// Why the API client could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The `api` argument is not a URL ironpxe can use.
    #[error("API URL {input:?}: {reason}")]
    Url {
        /// The argument as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `file://` API directory without `v1/boot` in it.
    #[error("API directory {}: no v1/boot directory in it (expected {}/v1/boot/<mac> files)", .root.display(), .root.display())]
    NoBootDir {
        /// The directory.
        root: PathBuf,
    },
    /// The HTTP client could not be set up.
    #[error("cannot set up the HTTP client for the API: {0}")]
    Client(#[source] reqwest::Error),
    /// The lookup thread could not be started.
    #[error("cannot start the API lookup thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Where answers come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// An HTTP(S) API; `base` is `<URL>/v1/`.
    Http { base: Url },
    /// A directory holding `v1/boot/<mac>`; `base` is `file:///DIR/v1/`.
    Dir { root: PathBuf, base: Url },
}

impl Source {
    /// Parses the `api` argument.
    pub fn parse(input: &str) -> Result<Source, ApiError> {
        let mut s = input.to_string();
        if !s.ends_with('/') {
            s.push('/');
        }
        let bad = |reason: String| ApiError::Url {
            input: input.to_string(),
            reason,
        };
        let url = Url::parse(&s).map_err(|e| bad(format!("not a valid URL: {e}")))?;
        let base = url.join("v1/").map_err(|e| bad(e.to_string()))?;
        match url.scheme() {
            "http" | "https" => Ok(Source::Http { base }),
            "file" => {
                let root = url
                    .to_file_path()
                    .map_err(|()| bad("not a local path".into()))?;
                if !root.join("v1").join("boot").is_dir() {
                    return Err(ApiError::NoBootDir { root });
                }
                Ok(Source::Dir { root, base })
            }
            other => Err(bad(format!(
                "unsupported scheme {other:?} (use http://, https:// or file://)"
            ))),
        }
    }

    /// The URL relative answers resolve against: `<URL>/v1/`.
    pub fn base(&self) -> &Url {
        match self {
            Source::Http { base } | Source::Dir { base, .. } => base,
        }
    }
}

/// One machine's answer, as pixiecore reads it. Unknown keys are ignored.
#[derive(Deserialize, Default, Debug)]
struct ApiAnswer {
    #[serde(default)]
    kernel: Option<String>,
    #[serde(default)]
    initrd: Option<Vec<String>>,
    #[serde(default)]
    cmdline: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "ipxe-script")]
    ipxe_script: Option<String>,
    /// ironpxe's extension: how the machine is loaded (`ipxe` when absent).
    #[serde(default)]
    loader: Option<String>,
}

/// What a lookup produced.
#[derive(Debug)]
enum Outcome {
    /// Boot this, and serve these files.
    Boot(BootDecision, Vec<FileRef>),
    /// The source said no (non-200, no file): routine.
    Declined(String),
    /// Something is wrong (bad JSON, timeout, unreachable).
    Failed(String),
}

/// Translates one JSON answer into a boot decision and the files it names (which
/// the booter then serves), resolving relative URLs against `base` (see
/// [`Source::base`]). The reason an answer is refused is one line. The lookup uses
/// this; it is public for tools and the fuzzer.
pub fn interpret_answer(body: &[u8], base: &Url) -> Result<(BootDecision, Vec<FileRef>), String> {
    interpret(body, base)
}

/// Turns a JSON answer into a decision. `base` resolves relative URLs.
fn interpret(body: &[u8], base: &Url) -> Result<(BootDecision, Vec<FileRef>), String> {
    let a: ApiAnswer =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON answer: {e}"))?;
    if let Some(script) = a.ipxe_script.filter(|s| !s.is_empty()) {
        return Ok((BootDecision::Script(script.into()), Vec::new()));
    }
    let resolve = |u: &str| -> Result<FileRef, String> {
        let abs = base
            .join(u)
            .map_err(|e| format!("{u:?} is not a URL: {e}"))?;
        FileRef::parse(abs.as_str()).map_err(|e| e.to_string())
    };
    let kernel = match a.kernel.as_deref() {
        Some(k) if !k.is_empty() => resolve(k).map_err(|e| format!("kernel: {e}"))?,
        _ => return Err("the answer has no kernel".into()),
    };
    let initrds = a
        .initrd
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, u)| resolve(u).map_err(|e| format!("initrd[{i}]: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let cmdline = match a.cmdline {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s,
        Some(serde_json::Value::Object(m)) => object_cmdline(&m)?,
        Some(other) => {
            return Err(format!(
                "cmdline must be a string or an object, not {}",
                json_kind(&other)
            ))
        }
    };
    if let Some(i) = cmdline.find(['\n', '\r']) {
        return Err(format!(
            "cmdline contains a line break at byte {i}; a kernel command line is one line"
        ));
    }
    let (cmdline, extra) = resolve_cmdline(&cmdline, &mut |x: &str| resolve(x))
        .map_err(|e| format!("cmdline: {e}"))?;
    let loader = match a.loader.as_deref() {
        None => Default::default(),
        Some(l) => l.parse().map_err(|e| format!("loader: {e}"))?,
    };
    let spec = BootSpec {
        kernel,
        initrds,
        cmdline,
        message: a.message.filter(|m| !m.is_empty()),
        loader,
    };
    // Refuse here, with the reason, what the script could not carry.
    ironpxe_ipxe::check_spec(&spec).map_err(|e| e.to_string())?;
    let mut files: Vec<FileRef> = spec.files().cloned().collect();
    files.extend(extra);
    Ok((BootDecision::Netboot(Arc::new(spec)), files))
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// pixiecore's deprecated object form of `cmdline`, rendered its way: keys sorted;
/// a boolean value (either one) gives the bare key; a string gives `key="value"`
/// (Go-quoted); `{"url": "..."}` gives `key={{ URL "..." }}`, a served file.
fn object_cmdline(m: &serde_json::Map<String, serde_json::Value>) -> Result<String, String> {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    let mut words = Vec::with_capacity(keys.len());
    for k in keys {
        match &m[k] {
            serde_json::Value::Bool(_) => words.push(k.clone()),
            serde_json::Value::String(v) => words.push(format!("{k}={}", go_quote(v))),
            serde_json::Value::Object(o) => match o.get("url") {
                Some(serde_json::Value::String(u)) => {
                    words.push(format!("{k}={{{{ URL {} }}}}", go_quote(u)))
                }
                _ => {
                    return Err(format!(
                        "cmdline key {k:?} has object value with no 'url' attribute"
                    ))
                }
            },
            other => {
                return Err(format!(
                    "unsupported value kind ({}) for cmdline key {k:?}",
                    json_kind(other)
                ))
            }
        }
    }
    Ok(words.join(" "))
}

/// Go's `%q` for a string: double quotes, backslash escapes for `"`, `\` and
/// control characters.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Files handed out, least recently used forgotten first.
#[derive(Default)]
struct FileMemory {
    files: HashMap<FileId, (FileRef, u64)>,
    clock: u64,
}

impl FileMemory {
    fn remember(&mut self, f: FileRef) {
        self.clock += 1;
        let now = self.clock;
        self.files.insert(f.id(), (f, now));
        if self.files.len() > MAX_FILES {
            // Forget the oldest tenth at once, so this scan is rare.
            let mut stamps: Vec<u64> = self.files.values().map(|(_, t)| *t).collect();
            stamps.sort_unstable();
            let cut = stamps[MAX_FILES / 10];
            self.files.retain(|_, (_, t)| *t > cut);
        }
    }

    fn get(&mut self, id: &FileId) -> Option<FileRef> {
        self.clock += 1;
        let now = self.clock;
        self.files.get_mut(id).map(|(f, t)| {
            *t = now;
            f.clone()
        })
    }
}

struct Shared {
    source: Source,
    lookups: Mutex<Lookups>,
    /// Signalled when a lookup completes.
    answered: Condvar,
    /// Wakes the lookup thread: a lookup was queued, or one finished.
    wake: tokio::sync::Notify,
    /// Set when the booter is dropped; the lookup thread then ends.
    closed: AtomicBool,
    files: Mutex<FileMemory>,
}

impl Shared {
    fn remember(&self, files: Vec<FileRef>) {
        let mut m = self.files.lock().unwrap_or_else(|e| e.into_inner());
        for f in files {
            m.remember(f);
        }
    }

    fn lookups(&self) -> std::sync::MutexGuard<'_, Lookups> {
        self.lookups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logs a lookup's outcome once and turns it into a decision.
    fn settle(&self, mac: MacAddr, outcome: Outcome) -> (AnswerKind, BootDecision) {
        match outcome {
            Outcome::Boot(decision, files) => {
                let kind = match &decision {
                    BootDecision::Script(_) => "ipxe-script",
                    _ => "netboot",
                };
                emit(BootEvent::ApiAnswer {
                    mac,
                    answer: kind,
                    files: files.len() as u64,
                });
                self.remember(files);
                (AnswerKind::Boot, decision)
            }
            Outcome::Declined(reason) => {
                let why = format!("the API declined: {reason}");
                emit(BootEvent::ApiDeclined { mac, reason });
                (AnswerKind::Declined, BootDecision::Ignore(why))
            }
            Outcome::Failed(reason) => {
                let why = format!("no usable API answer: {reason}");
                emit(BootEvent::ApiError { mac, reason });
                (AnswerKind::Failed, BootDecision::Ignore(why))
            }
        }
    }
}

/// The booter of `ironpxe api`.
pub struct ApiBooter {
    shared: Arc<Shared>,
    timeout: Duration,
}

impl ApiBooter {
    /// Starts the lookup thread (for an HTTP source), with the default [`Limits`].
    pub fn start(source: Source, timeout: Duration) -> Result<ApiBooter, ApiError> {
        ApiBooter::start_with(source, timeout, Limits::default())
    }

    /// Starts the lookup thread (for an HTTP source); `limits` bound how hard the API
    /// is pressed.
    pub fn start_with(
        source: Source,
        timeout: Duration,
        limits: Limits,
    ) -> Result<ApiBooter, ApiError> {
        let shared = Arc::new(Shared {
            source: source.clone(),
            lookups: Mutex::new(Lookups::new(limits)),
            answered: Condvar::new(),
            wake: tokio::sync::Notify::new(),
            closed: AtomicBool::new(false),
            files: Mutex::new(FileMemory::default()),
        });
        if let Source::Http { .. } = &source {
            let client = reqwest::Client::builder()
                .timeout(timeout)
                .user_agent(concat!("ironpxe/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(ApiError::Client)?;
            let sh = shared.clone();
            std::thread::Builder::new()
                .name("ironpxe-api".into())
                .spawn(move || lookup_thread(sh, client))
                .map_err(ApiError::Thread)?;
        }
        Ok(ApiBooter { shared, timeout })
    }

    /// Reads `DIR/v1/boot/<mac>`.
    fn read_dir_answer(&self, root: &std::path::Path, mac: MacAddr) -> Outcome {
        let dir = root.join("v1").join("boot");
        let lower = mac.to_string();
        // The canonical name first; also the spellings people write by hand.
        let names = [
            lower.clone(),
            lower.to_uppercase(),
            lower.replace(':', "-"),
            lower.to_uppercase().replace(':', "-"),
        ];
        for name in &names {
            let path = dir.join(name);
            match read_answer_file(&path) {
                Ok(body) => {
                    return match interpret(&body, self.shared.source.base()) {
                        Ok((d, files)) => Outcome::Boot(d, files),
                        Err(e) => Outcome::Failed(format!("{}: {e}", path.display())),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Outcome::Failed(format!("{}: {e}", path.display())),
            }
        }
        Outcome::Declined(format!("no file {}", dir.join(&lower).display()))
    }

    /// Waits until `deadline` for an answer about `mac` that arrived after `asked`;
    /// gives up early when no lookup of it is pending any more.
    fn wait_for(&self, mac: MacAddr, asked: Instant, deadline: Instant) -> Option<BootDecision> {
        let mut l = self.shared.lookups();
        loop {
            if let Some(d) = l.answered_since(mac, asked) {
                return Some(d);
            }
            let now = Instant::now();
            if now >= deadline || !l.is_pending(mac) {
                return None;
            }
            l = self
                .shared
                .answered
                .wait_timeout(l, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for ApiBooter {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }
}

impl Booter for ApiBooter {
    /// Answers from memory. On a miss, queues a lookup and waits up to `wait` (and
    /// never longer than the request timeout plus a second) for its answer; if it has
    /// not come by then, [`BootDecision::Pending`]: the answer is kept when it
    /// arrives, for the client's retransmit.
    fn decide(&self, mac: MacAddr, _arch: ClientArch, wait: Duration) -> BootDecision {
        if let Source::Dir { root, .. } = &self.shared.source {
            let outcome = self.read_dir_answer(root, mac);
            if let Outcome::Declined(reason) = &outcome {
                // Every DHCP packet of an unlisted machine gets here: keep it quiet.
                debug!(%mac, %reason, "not in the API directory");
                return BootDecision::Ignore(reason.clone());
            }
            return self.shared.settle(mac, outcome).1;
        }
        let asked = Instant::now();
        let (answer, queued) = self.shared.lookups().ask(mac, asked);
        if queued {
            debug!(%mac, "asking the API");
            self.shared.wake.notify_one();
        }
        match answer {
            Asked::Use(d) => d,
            Asked::Full => BootDecision::Ignore(
                "the API lookup queue is full; asking again on the client's retry".into(),
            ),
            Asked::Pending if wait.is_zero() => BootDecision::Pending,
            Asked::Pending => {
                let wait = wait.min(self.timeout + Duration::from_secs(1));
                self.wait_for(mac, asked, asked + wait)
                    .unwrap_or(BootDecision::Pending)
            }
        }
    }

    fn file(&self, id: &FileId) -> Option<FileRef> {
        self.shared
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
    }
}

/// Performs the lookups [`Lookups::next`] hands out, on its own runtime, until the
/// booter is dropped.
fn lookup_thread(shared: Arc<Shared>, client: reqwest::Client) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the API lookup runtime; no machine will be answered");
            return;
        }
    };
    let Source::Http { base } = shared.source.clone() else {
        return;
    };
    rt.block_on(async move {
        while !shared.closed.load(Ordering::SeqCst) {
            let next_timer = {
                let mut l = shared.lookups();
                let now = Instant::now();
                while let Some(mac) = l.next(now) {
                    let (shared, client, base) = (shared.clone(), client.clone(), base.clone());
                    tokio::spawn(async move {
                        let outcome = fetch(&client, &base, mac).await;
                        let (kind, decision) = shared.settle(mac, outcome);
                        shared
                            .lookups()
                            .complete(mac, kind, decision, Instant::now());
                        shared.answered.notify_all();
                        shared.wake.notify_one();
                    });
                }
                l.poll_timeout(now)
            };
            match next_timer {
                Some(at) => {
                    tokio::select! {
                        () = shared.wake.notified() => {}
                        () = tokio::time::sleep_until(at.into()) => {}
                    }
                }
                None => shared.wake.notified().await,
            }
        }
    });
}

async fn fetch(client: &reqwest::Client, base: &Url, mac: MacAddr) -> Outcome {
    let url = format!("{base}boot/{mac}");
    let started = Instant::now();
    let resp = match client.get(&url).send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return Outcome::Failed(format!("GET {url}: no answer within the timeout"))
        }
        Err(e) => return Outcome::Failed(format!("GET {url}: {}", error_chain(&e))),
    };
    let status = resp.status();
    if status != reqwest::StatusCode::OK {
        return Outcome::Declined(format!("GET {url}: {status}"));
    }
    let mut resp = resp;
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Outcome::Failed(format!(
                        "GET {url}: answer larger than {MAX_ANSWER_BYTES} bytes"
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) if e.is_timeout() => {
                return Outcome::Failed(format!(
                    "GET {url}: the answer did not arrive within the timeout"
                ))
            }
            Err(e) => return Outcome::Failed(format!("GET {url}: {}", error_chain(&e))),
        }
    }
    debug!(%mac, %url, ms = started.elapsed().as_millis() as u64, "API answered");
    match interpret(&body, base) {
        Ok((d, files)) => Outcome::Boot(d, files),
        Err(e) => Outcome::Failed(format!("GET {url}: {e}")),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests;

/// Reads one answer file of a file-tree API: a regular file of at most
/// [`MAX_ANSWER_BYTES`] (a FIFO or a link to a device must not hang the DHCP path).
fn read_answer_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    // Checked before opening: opening a FIFO for reading blocks until a writer comes.
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let file = std::fs::File::open(path)?;
    let mut body = Vec::new();
    file.take(MAX_ANSWER_BYTES as u64 + 1)
        .read_to_end(&mut body)?;
    if body.len() > MAX_ANSWER_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_ANSWER_BYTES} bytes"
        )));
    }
    Ok(body)
}
