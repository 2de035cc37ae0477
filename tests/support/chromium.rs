//! Debian's headless `chromium`, run two ways: from the command line
//! ([`Chromium::run`], `--dump-dom`, `--screenshot`), and driven over the
//! DevTools protocol ([`Devtools`]) to type into a page, click its buttons
//! and read it back, as a person would, with no other client than a
//! WebSocket.
//!
//! Chromium is a hard requirement, not a silent skip: `.ci/run` installs it.
#![allow(clippy::disallowed_methods)] // deadlines of the test itself run on real time

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::files::TempDir;
use super::process::{self, Process};

/// Flags for every run: headless in a container, nothing fetched from the
/// network behind the test's back, a French browser.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--lang=fr-FR",
    "--accept-lang=fr-FR,fr,en",
];

/// Headless Chromium with its own profile, kept across runs like a
/// person's browser between two visits.
pub struct Chromium {
    exe: PathBuf,
    profile: TempDir,
}

impl Chromium {
    /// Finds `chromium` on `PATH`; fails, with how to install it, if absent.
    pub fn new() -> Chromium {
        let exe = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .map(|dir| dir.join("chromium"))
            .find(|exe| exe.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "this test drives a real headless Chromium, and `chromium` is not on PATH. \
                     Install it with `apt-get install chromium` (Debian; `.ci/run` does it)."
                )
            });
        Chromium {
            exe,
            profile: TempDir::new("chromium"),
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.exe);
        command
            .args(CHROMIUM_FLAGS)
            .arg(format!("--user-data-dir={}", self.profile.path().display()));
        command
    }

    /// The DOM after the page's scripts ran for `budget_ms` of virtual time.
    pub async fn dump_dom(&self, url: &str, budget_ms: u64, limit: Duration) -> String {
        let args = [
            format!("--virtual-time-budget={budget_ms}"),
            "--dump-dom".to_owned(),
            url.to_owned(),
        ];
        self.run(&args, limit).await
    }

    /// Runs Chromium to the end (killing it after `limit`) and returns its
    /// standard output.
    pub async fn run(&self, args: &[String], limit: Duration) -> String {
        let chromium = Process::spawn("chromium", self.command().args(args));
        let out = chromium.exit_within(limit).await.unwrap_or_else(|running| {
            panic!("chromium did not finish within {limit:?}: {running:?}")
        });
        let stdout = String::from_utf8(out.stdout).expect("chromium's output is UTF-8");
        assert!(
            out.status.success(),
            "chromium failed: {}\nchromium's stderr (end):\n{}",
            out.status,
            process::tail(&out.stderr)
        );
        stdout
    }

    /// Starts Chromium with its DevTools endpoint on a free loopback port
    /// and opens one tab of `width`×`height` CSS pixels on `url`.
    pub async fn devtools(&self, url: &str, width: u32, height: u32) -> Devtools {
        let process = Process::spawn(
            "chromium",
            self.command()
                .arg("--remote-debugging-port=0")
                .arg("--remote-debugging-address=127.0.0.1")
                .arg("about:blank"),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let endpoint = loop {
            let stderr = process.stderr();
            if let Some(line) = stderr
                .lines()
                .find_map(|l| l.split("DevTools listening on ").nth(1))
            {
                break line.trim().to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "chromium's DevTools did not start: {process:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let authority = endpoint
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .expect("a ws:// endpoint")
            .to_owned();
        let stream = TcpStream::connect(&authority)
            .await
            .expect("connect to DevTools");
        let (ws, _) = tokio_tungstenite::client_async(endpoint.as_str(), stream)
            .await
            .expect("DevTools WebSocket handshake");
        let mut tools = Devtools {
            ws,
            next: 0,
            session: None,
            _process: process,
        };
        let target = tools
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target_id = target["targetId"].as_str().expect("a target id").to_owned();
        let attached = tools
            .call(
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await;
        tools.session = Some(
            attached["sessionId"]
                .as_str()
                .expect("a session id")
                .to_owned(),
        );
        tools.resize(width, height).await;
        tools.call("Page.enable", json!({})).await;
        tools.call("Page.navigate", json!({"url": url})).await;
        tools
    }
}

impl Default for Chromium {
    fn default() -> Self {
        Chromium::new()
    }
}

/// One tab of a Chromium driven over the DevTools protocol; the browser
/// is killed when this is dropped.
pub struct Devtools {
    ws: WebSocketStream<TcpStream>,
    next: u64,
    /// The tab's session, once attached.
    session: Option<String>,
    _process: Process,
}

impl Devtools {
    /// Sends one command and returns its result, skipping the events that
    /// come in between; fails the test on a protocol error.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .expect("DevTools accepts a command");
        let answer = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let frame = self
                    .ws
                    .next()
                    .await
                    .expect("DevTools stays open")
                    .expect("a DevTools frame");
                let Ok(text) = frame.to_text() else { continue };
                let value: Value = serde_json::from_str(text).expect("DevTools speaks JSON");
                if value["id"] == json!(id) {
                    return value;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{method}: no answer within 20 s"));
        assert!(answer.get("error").is_none(), "{method} failed: {answer}");
        answer["result"].clone()
    }

    /// The viewport, as a phone or a laptop shows the page.
    pub async fn resize(&mut self, width: u32, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1,
                   "mobile": width < 700}),
        )
        .await;
    }

    /// The value of a JavaScript expression in the page.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression} threw: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page, failing the test
    /// with `what` after `limit`.
    pub async fn wait_for(&mut self, what: &str, expression: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self.eval(expression).await == json!(true) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A real click (mouse down and up) in the middle of the element
    /// `selector` picks, as a person's.
    pub async fn click(&mut self, selector: &str) {
        let quoted = serde_json::to_string(selector).expect("a string");
        let at = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({quoted}); if (!e) return null; \
                 e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
                 return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
            ))
            .await;
        let (Some(x), Some(y)) = (at[0].as_f64(), at[1].as_f64()) else {
            panic!("nothing to click at {selector}")
        };
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            )
            .await;
        }
    }

    /// Types `text` into the focused element, as a keyboard would.
    pub async fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({"text": text})).await;
    }

    /// A PNG of the whole page at the current viewport width.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        let layout = self.call("Page.getLayoutMetrics", json!({})).await;
        let size = &layout["cssContentSize"];
        let clip = json!({"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                          "scale": 1});
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true, "clip": clip}),
            )
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("PNG data"))
            .expect("base64 PNG")
    }
}
