//! Child processes of a lab and the timestamped lines they print.
//!
//! Every process the lab starts (site dnsmasq, ironpxe, QEMU) is a [`Proc`]: a
//! `std::process::Child` plus reader threads that split its stdout and stderr into
//! lines, stamp each line with the moment it arrived, append it to a log file under
//! the lab's output directory and keep it in memory for waiting and timelines.
//!
//! Processes are only ever ended through their own `Child` handle (that is, by PID,
//! and before the PID is reaped, so it cannot have been reused).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{io_err, Error, Result};

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The child's standard output (for QEMU: the guest's serial port).
    Stdout,
    /// The child's standard error.
    Stderr,
}

/// One line printed by a child process, cleaned of terminal control sequences.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// When the end of the line was read.
    pub at: Instant,
    /// The pipe it came from.
    pub stream: Stream,
    /// The text without its line ending.
    pub text: String,
}

/// How a pipe's bytes become lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineMode {
    /// Ordinary log output: strip ANSI escapes and a trailing `\r`.
    Plain,
    /// A firmware console: also apply backspaces and carriage returns the way a
    /// terminal would, so iPXE's progress lines read as they looked on screen.
    Terminal,
}

struct LogState {
    lines: Vec<LogLine>,
    open_streams: usize,
}

/// The lines of one process, shared between its reader threads and waiters.
pub(crate) struct LineLog {
    state: Mutex<LogState>,
    cv: Condvar,
}

/// Why a wait ended without its condition becoming true.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The deadline passed.
    Timeout,
    /// Every pipe of the process reached end of file: it exited.
    Closed,
}

impl LineLog {
    fn new(open_streams: usize) -> Self {
        LineLog {
            state: Mutex::new(LogState {
                lines: Vec::new(),
                open_streams,
            }),
            cv: Condvar::new(),
        }
    }

    fn push(&self, line: LogLine) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.lines.push(line);
        self.cv.notify_all();
    }

    fn close_stream(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.open_streams = st.open_streams.saturating_sub(1);
        self.cv.notify_all();
    }

    pub(crate) fn snapshot(&self) -> Vec<LogLine> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lines
            .clone()
    }

    /// Waits until `check` finds something in the lines, the deadline passes, or the
    /// process has closed all its pipes (and `check` still finds nothing).
    pub(crate) fn wait_for<T>(
        &self,
        deadline: Instant,
        mut check: impl FnMut(&[LogLine]) -> Option<T>,
    ) -> std::result::Result<T, Stop> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(found) = check(&st.lines) {
                return Ok(found);
            }
            if st.open_streams == 0 {
                return Err(Stop::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Stop::Timeout);
            }
            // Wake up at least every second so a stuck condition variable can never
            // outlive the deadline by much.
            let step = (deadline - now).min(Duration::from_secs(1));
            st = self
                .cv
                .wait_timeout(st, step)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// A process started by the lab.
pub struct Proc {
    name: String,
    pid: u32,
    child: Mutex<Option<Child>>,
    pub(crate) log: Arc<LineLog>,
    readers: Mutex<Vec<JoinHandle<()>>>,
    started: Instant,
}

impl Proc {
    /// The short name used in logs and messages (`site-dnsmasq`, `ironpxe`, `guest0`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// When the process was spawned.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// All lines read so far.
    pub fn lines(&self) -> Vec<LogLine> {
        self.log.snapshot()
    }

    /// The last `n` lines, joined, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines();
        let start = lines.len().saturating_sub(n);
        lines[start..]
            .iter()
            .map(|l| format!("    {}", l.text))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Whether the process is still running.
    pub fn is_running(&self) -> bool {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the process (SIGKILL through its own handle) and reaps it. Idempotent.
    pub fn kill(&self) {
        let child = self.child.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut child) = child {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        // The pipes close once the process is gone; let the readers finish writing
        // their log files.
        let readers: Vec<_> = self
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for r in readers {
            let _ = r.join();
        }
    }

    /// Sends `signal` to the process, by PID, while it has not been reaped (so the
    /// PID cannot belong to another process). Whether it was sent.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> bool {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let Some(child) = guard.as_mut() else {
            return false;
        };
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal).is_ok()
    }

    /// Waits for the process to exit on its own, up to `timeout`.
    pub fn wait_exit(&self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
                match guard.as_mut() {
                    Some(child) => {
                        if let Ok(Some(status)) = child.try_wait() {
                            return Some(status);
                        }
                    }
                    None => return None,
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where one pipe's lines go.
pub(crate) struct PipeSink {
    pub mode: LineMode,
    /// Cleaned, timestamped lines.
    pub log_file: File,
    /// The bytes exactly as received, for a firmware console.
    pub raw_file: Option<File>,
}

/// Spawns `cmd` with stdin closed and both pipes read into a [`LineLog`].
///
/// The child gets its own process group, so a Ctrl-C in the terminal reaches only
/// the lab, which then ends the child by PID and removes its namespaces in order.
pub(crate) fn spawn(
    name: &str,
    mut cmd: Command,
    t0: Instant,
    stdout: PipeSink,
    stderr: PipeSink,
) -> Result<Arc<Proc>> {
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        program: format!("{name} ({})", show_command(&cmd)),
        hint: None,
        source,
    })?;
    let log = Arc::new(LineLog::new(2));
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Error::Startup {
            process: name.to_string(),
            why: "started without its output pipes".into(),
            tail: String::new(),
        });
    };
    let readers = [
        reader_thread(name, out, Stream::Stdout, stdout, log.clone(), t0),
        reader_thread(name, err, Stream::Stderr, stderr, log.clone(), t0),
    ];
    let readers = match readers {
        [Ok(a), Ok(b)] => vec![a, b],
        [a, b] => {
            let _ = child.kill();
            let _ = child.wait();
            let source = [a.err(), b.err()]
                .into_iter()
                .flatten()
                .next()
                .unwrap_or_else(|| std::io::Error::other("no reader thread"));
            return Err(Error::Spawn {
                program: format!("the log reader of {name}"),
                hint: None,
                source,
            });
        }
    };
    Ok(Arc::new(Proc {
        name: name.to_string(),
        pid: child.id(),
        child: Mutex::new(Some(child)),
        log,
        readers: Mutex::new(readers),
        started,
    }))
}

fn reader_thread(
    name: &str,
    pipe: impl Read + Send + 'static,
    stream: Stream,
    mut sink: PipeSink,
    log: Arc<LineLog>,
    t0: Instant,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("lab-{name}-{stream:?}").to_lowercase())
        .spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let at = Instant::now();
                if let Some(raw) = sink.raw_file.as_mut() {
                    let _ = raw.write_all(&buf);
                }
                let text = match sink.mode {
                    LineMode::Plain => clean_plain(&buf),
                    LineMode::Terminal => clean_terminal(&buf),
                };
                if sink.mode == LineMode::Terminal && text.trim().is_empty() {
                    continue;
                }
                let secs = at.saturating_duration_since(t0).as_secs_f64();
                let _ = writeln!(sink.log_file, "[{secs:9.3}] {text}");
                log.push(LogLine { at, stream, text });
            }
            let _ = sink.log_file.flush();
            log.close_stream();
        })
}

/// Removes ANSI escape sequences and a trailing line ending.
pub(crate) fn clean_plain(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = strip_ansi(&s);
    s.trim_end_matches(['\n', '\r']).to_string()
}

/// Renders a console line the way a terminal would show it: escapes removed,
/// backspace erases, carriage return restarts the line (overwriting).
pub(crate) fn clean_terminal(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = strip_ansi(&s);
    let mut out: Vec<char> = Vec::new();
    let mut col = 0usize;
    for c in s.chars() {
        match c {
            '\n' => {}
            '\r' => col = 0,
            '\u{8}' => col = col.saturating_sub(1),
            c if c.is_control() && c != '\t' => {}
            c => {
                if col < out.len() {
                    out[col] = c;
                } else {
                    out.push(c);
                }
                col += 1;
            }
        }
    }
    let line: String = out.into_iter().collect();
    line.trim_end().to_string()
}

/// Removes CSI (`ESC [ ... final`), OSC and two-byte escape sequences.
pub(crate) fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('[') => {
                // Parameters and intermediates, then one final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                // OSC: up to BEL or ESC \.
                while let Some(c) = chars.next() {
                    if c == '\u{7}' {
                        break;
                    }
                    if c == '\u{1b}' {
                        chars.next();
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Creates (truncating) a log file, with a readable error.
pub(crate) fn create_log(path: &Path) -> Result<File> {
    File::create(path).map_err(io_err("create the log file", path))
}

/// `program arg arg ...`, for messages.
pub(crate) fn show_command(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[0;1miPXE 1.0\u{1b}[0m -- x"),
            "iPXE 1.0 -- x"
        );
        assert_eq!(strip_ansi("\u{1b}c\u{1b}[?7lSeaBIOS"), "SeaBIOS");
    }

    #[test]
    fn terminal_applies_backspace_and_cr() {
        let line = b"Press Ctrl-B...\x08 \x08\x08 \x08\x08 \x08net0: up\r\n";
        assert_eq!(clean_terminal(line), "Press Ctrl-Bnet0: up");
        assert_eq!(clean_terminal(b"abcdef\rxy\r\n"), "xycdef");
        assert_eq!(
            clean_terminal(b"Configuring (net0)...... ok\r\n"),
            "Configuring (net0)...... ok"
        );
    }
}
