//! The fragile demo portal on its own, for benchmarks that put something
//! other than digue in front of it (benches/surge.sh: nginx vs digue).
//!
//! ```sh
//! cargo run --release --example portal -- 127.0.0.1:8081 [CAPACITY] [BASE_LATENCY_MS]
//! ```
//!
//! Defaults: capacity 32, base latency 20 ms (`PortalOptions::default()`).
//! CAPACITY may be a schedule, as `digue demo --capacity` takes it:
//! `0s:24,60s:12,2m:36`. The portal's counters are also served at
//! `GET /__demo/stats`.
//! Prints one JSON line to stdout when listening, one with its counters on
//! SIGUSR1, and a last one on SIGTERM / SIGINT before exiting:
//! `{"event":"stats","requests":N,"peak_in_flight":N,"overload_errors":N,"in_flight":N}`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use digue::demo::{CapacitySchedule, Portal, PortalOptions};
use tokio::signal::unix::{SignalKind, signal};

fn usage() -> ExitCode {
    eprintln!(
        "usage: portal ADDR [CAPACITY|SCHEDULE] [BASE_LATENCY_MS]   e.g. portal 127.0.0.1:8081 24 20, \
         or portal 127.0.0.1:8081 0s:24,60s:12 20"
    );
    ExitCode::from(2)
}

fn stats(event: &str, portal: &Portal) -> String {
    format!(
        "{{\"event\":\"{event}\",\"requests\":{},\"peak_in_flight\":{},\"overload_errors\":{},\"in_flight\":{}}}",
        portal.requests(),
        portal.peak_in_flight(),
        portal.overload_errors(),
        portal.in_flight()
    )
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.len() > 3 || args[0] == "-h" || args[0] == "--help" {
        return usage();
    }
    let Ok(addr) = args[0].parse::<SocketAddr>() else {
        eprintln!(
            "portal: {:?} is not an address like 127.0.0.1:8081",
            args[0]
        );
        return usage();
    };
    let mut opts = PortalOptions::default();
    let mut schedule = None;
    if let Some(c) = args.get(1) {
        match CapacitySchedule::parse(c) {
            Ok(s) => {
                opts.capacity = s.initial().get();
                schedule = Some(s);
            }
            Err(e) => {
                eprintln!("portal: {e}");
                return usage();
            }
        }
    }
    if let Some(l) = args.get(2) {
        match l.parse::<u64>() {
            Ok(ms) => opts.base_latency = Duration::from_millis(ms),
            Err(_) => {
                eprintln!("portal: base latency {l:?} is not a number of milliseconds");
                return usage();
            }
        }
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portal: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("portal: cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let (capacity, latency_ms) = (opts.capacity, opts.base_latency.as_millis());
        let mut portal = Portal::spawn(listener, opts);
        if let Some(schedule) = schedule {
            portal.follow(schedule);
        }
        let (Ok(mut term), Ok(mut int), Ok(mut usr1)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::user_defined1()),
        ) else {
            eprintln!("portal: cannot install signal handlers");
            return ExitCode::FAILURE;
        };
        println!(
            "{{\"event\":\"listening\",\"addr\":\"{}\",\"capacity\":{capacity},\"base_latency_ms\":{latency_ms}}}",
            portal.addr
        );
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = usr1.recv() => println!("{}", stats("stats", &portal)),
            }
        }
        println!("{}", stats("final", &portal));
        ExitCode::SUCCESS
    })
}
