//! Child processes (the `digue` binary, `redis-server`, Chromium): killed
//! when the test ends, their output captured for assertions and failure
//! messages, and ports for the children that cannot be handed a socket.
//!
//! Ports are held, not picked then dropped, wherever the child allows it:
//! `digue run` and `digue demo` are given port 0 and report the port they
//! bound (a log line, the banner). A child that cannot (`redis-server`
//! cannot take a bound socket nor report a port it chose; `digue demo`
//! with its stdout closed cannot print one) is given a port that was free
//! a moment ago ([`unused_ports`]), and [`on_free_ports`] starts it again
//! on new ports when it lost the race for them (it exits, "Address
//! already in use"), a bounded number of times.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::wait::POLL;

/// Tries of [`on_free_ports`] before the test gives up.
pub const PORT_ATTEMPTS: usize = 5;

/// `n` distinct loopback ports that were free a moment ago: bound together,
/// then released. Another process may take one before the child binds it:
/// use them through [`on_free_ports`]. Also what a test needs for an
/// address where nothing listens (connections refused).
pub fn unused_ports(n: usize) -> Vec<u16> {
    let held: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}

/// Starts something on `n` ports that were free a moment ago; when `start`
/// says it lost the race for one (`Err` with what the child said), tries
/// again on new ports, [`PORT_ATTEMPTS`] times at most.
pub async fn on_free_ports<T>(
    n: usize,
    what: &str,
    mut start: impl AsyncFnMut(&[u16]) -> Result<T, String>,
) -> T {
    let mut lost = Vec::new();
    for _ in 0..PORT_ATTEMPTS {
        match start(&unused_ports(n)).await {
            Ok(started) => return started,
            Err(why) => lost.push(why),
        }
    }
    panic!("{what} lost the race for its ports {PORT_ATTEMPTS} times: {lost:#?}")
}

/// The last lines of an output, for failure messages.
pub fn tail(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// What a child wrote on one of its pipes so far.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Reads `pipe` to its end on a thread of its own.
    fn read(mut pipe: impl Read + Send + 'static) -> (Captured, std::thread::JoinHandle<()>) {
        let captured = Captured::default();
        let into = captured.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0_u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                into.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&buf[..n]);
            }
        });
        (captured, reader)
    }

    fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A child process, killed when dropped if still running. Its stdout and
/// stderr are read as they come (a full pipe would block it).
pub struct Process {
    child: Option<Child>,
    what: String,
    stdout: Captured,
    stderr: Captured,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Process {
    /// Starts `command`, reading both its outputs.
    pub fn spawn(what: &str, command: &mut Command) -> Process {
        Process::start(what, command, true)
    }

    /// Starts `command` with its stdout closed from the start, as under
    /// `| head -1` once `head` is gone; stderr is read.
    pub fn spawn_unread(what: &str, command: &mut Command) -> Process {
        Process::start(what, command, false)
    }

    fn start(what: &str, command: &mut Command, read_stdout: bool) -> Process {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {what} ({e})"));
        let mut readers = Vec::new();
        let stdout = child.stdout.take().expect("piped");
        let stdout = if read_stdout {
            let (captured, reader) = Captured::read(stdout);
            readers.push(reader);
            captured
        } else {
            drop(stdout);
            Captured::default()
        };
        let (stderr, reader) = Captured::read(child.stderr.take().expect("piped"));
        readers.push(reader);
        Process {
            child: Some(child),
            what: what.to_owned(),
            stdout,
            stderr,
            readers,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().expect("the child is waitable")
    }

    /// What it wrote on stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.bytes()).into_owned()
    }

    /// What it wrote on stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.bytes()).into_owned()
    }

    /// The last lines of both outputs, for failure messages.
    pub fn tail(&self) -> String {
        format!(
            "{}'s stdout (end):\n{}\n{}'s stderr (end):\n{}",
            self.what,
            tail(&self.stdout.bytes()),
            self.what,
            tail(&self.stderr.bytes())
        )
    }

    /// Sends a signal (`"TERM"`, `"HUP"`...).
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIG{signal} delivered to {}", self.what);
    }

    /// SIGKILL, and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits at most `limit` for it to exit, then collects its output;
    /// gives it back if it is still running (dropping it kills it).
    pub async fn exit_within(mut self, limit: Duration) -> Result<Output, Process> {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.exited() {
                break status;
            }
            if Instant::now() >= deadline {
                return Err(self);
            }
            tokio::time::sleep(POLL).await;
        };
        // The pipes close when it exits, unless a grandchild kept them
        // (Chromium's helpers): then what was read by now is the output.
        let drained = Instant::now() + Duration::from_secs(2);
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < drained {
            tokio::time::sleep(POLL).await;
        }
        self.child = None;
        Ok(Output {
            status,
            stdout: self.stdout.bytes(),
            stderr: self.stderr.bytes(),
        })
    }
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (still running)\n{}", self.what, self.tail())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
