//! digue under test: [`Digue`], the builder of its config, and [`Proxy`],
//! a running digue in this process with its listeners on `127.0.0.1:0`.
//!
//! Each [`Proxy`] reads the time from a clock of its own, which the test
//! moves forward ([`Proxy::advance`]) to let a TTL, a claim window or a
//! session expire without sleeping (see `digue::clock`: timers and Redis
//! keep real time).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use digue::clock::Clock;
use http::Method;
use tokio::time::Instant;

use super::browser::ENTRY;
use super::http::{Got, get, request, send};
use super::wait::wait_for;

/// The admin token of every digue started with [`Digue::admin`].
pub const ADMIN_TOKEN: &str = "admin-token-for-tests-7f3a";

/// The config of a digue under test, written as the TOML an operator
/// would write: `[server]` on `127.0.0.1:0` with an admin listener, then
/// the top-level tables, then one site `portal` answering any Host (unless
/// [`Digue::without_site`]), then further sites.
#[must_use]
#[derive(Clone)]
pub struct Digue {
    /// Keys added to `[server]`.
    server: String,
    /// Top-level tables (`[cache]`, `[cluster]`...), in order.
    tables: String,
    /// Keys added to `[cluster]`, when there is one.
    cluster: Option<String>,
    site: Option<Site>,
    /// Further `[[site]]` sections.
    sites: String,
    admin_token: Option<String>,
}

/// The first site: `name`, any Host, `origin`.
#[derive(Clone)]
struct Site {
    name: String,
    origin: String,
    /// Keys and tables after its origin.
    body: String,
    /// The keys of its `[site.admission]`, written last.
    admission: Option<String>,
}

impl Digue {
    /// One site, `portal`, answering any Host, in front of `origin`.
    pub fn new(origin: &str) -> Digue {
        Digue {
            site: Some(Site {
                name: "portal".to_owned(),
                origin: origin.to_owned(),
                body: String::new(),
                admission: None,
            }),
            ..Digue::without_site()
        }
    }

    /// No site of its own: every site comes from [`Digue::sites`].
    pub fn without_site() -> Digue {
        Digue {
            server: String::new(),
            tables: String::new(),
            cluster: None,
            site: None,
            sites: String::new(),
            admin_token: None,
        }
    }

    /// Keys added to `[server]`.
    pub fn server(mut self, keys: &str) -> Digue {
        self.server.push_str(keys);
        self.server.push('\n');
        self
    }

    /// `server.secret_file`: tickets and passes signed with this key.
    pub fn secret(self, path: &Path) -> Digue {
        let line = format!("secret_file = \"{}\"", path.display());
        self.server(&line)
    }

    /// `server.state_file`: the lines survive a restart.
    pub fn state_file(self, path: &Path) -> Digue {
        let line = format!("state_file = \"{}\"", path.display());
        self.server(&line)
    }

    /// A top-level table, e.g. `[cache]` and its keys.
    pub fn table(mut self, toml: &str) -> Digue {
        self.tables.push_str(toml);
        self.tables.push('\n');
        self
    }

    /// Keys added to `[cluster]` (the table is written when first given).
    pub fn cluster(mut self, keys: &str) -> Digue {
        let cluster = self.cluster.get_or_insert_with(String::new);
        cluster.push_str(keys);
        cluster.push('\n');
        self
    }

    /// Renames the first site.
    pub fn name(mut self, name: &str) -> Digue {
        self.first_site().name = name.to_owned();
        self
    }

    /// Keys and tables of the first site, after its origin
    /// (`origin_concurrency = 8`, `[site.cache]`, `[[site.cache.rule]]`...).
    pub fn site(mut self, toml: &str) -> Digue {
        let body = &mut self.first_site().body;
        body.push_str(toml);
        body.push('\n');
        self
    }

    /// A waiting room on the first site, gating [`ENTRY`], with these keys.
    pub fn admission(mut self, keys: &str) -> Digue {
        let admission = self.first_site().admission.get_or_insert_with(String::new);
        admission.push_str(keys);
        admission.push('\n');
        self
    }

    /// Further `[[site]]` sections, as TOML.
    pub fn sites(mut self, toml: &str) -> Digue {
        self.sites.push_str(toml);
        self.sites.push('\n');
        self
    }

    /// The admin API open to [`ADMIN_TOKEN`], as `DIGUE_ADMIN_TOKEN` opens it.
    pub fn admin(self) -> Digue {
        self.admin_token(Some(ADMIN_TOKEN))
    }

    /// The admin token, as `DIGUE_ADMIN_TOKEN` gives it (`None`: unset).
    pub fn admin_token(mut self, token: Option<&str>) -> Digue {
        self.admin_token = token.map(str::to_owned);
        self
    }

    fn first_site(&mut self) -> &mut Site {
        self.site
            .as_mut()
            .expect("a Digue made with Digue::new has a first site")
    }

    /// The whole config file.
    pub fn toml(&self) -> String {
        let mut text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{}\n{}",
            self.server, self.tables
        );
        if let Some(cluster) = &self.cluster {
            text += &format!("[cluster]\n{cluster}\n");
        }
        if let Some(site) = &self.site {
            // Every test client is 127.0.0.1, one network: its share of the
            // origin is the whole origin unless a test sets it.
            let share = if site.body.contains("origin_share_per_network") {
                ""
            } else {
                "origin_share_per_network = 100\n"
            };
            text += &format!(
                "[[site]]\nname = \"{}\"\nhosts = [\"*\"]\norigin = \"{}\"\n{share}{}",
                site.name, site.origin, site.body
            );
            if let Some(keys) = &site.admission {
                text += &admission_table(keys);
            }
        }
        text + &self.sites
    }

    /// Starts digue with this config, without a config file.
    pub async fn start(self) -> Proxy {
        let text = self.toml();
        let config = digue::preflight::parse(&text)
            .unwrap_or_else(|e| panic!("test config must be valid:\n{e}\n---\n{text}"));
        Proxy::launch(config, None, self.admin_token).await
    }

    /// Writes this config to `file` and starts digue from it, as `digue
    /// run --config file` does: reloads read the file again.
    pub async fn start_in(self, file: &Path) -> Proxy {
        std::fs::write(file, self.toml()).expect("config file writable");
        Proxy::from_file(file, self.admin_token.as_deref()).await
    }
}

/// A running digue, stopped when dropped.
///
/// End a test with [`Proxy::shutdown`] to learn of a panic of digue's
/// server tasks: a drop cannot wait for them.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The TLS listener, when configured.
    pub tls: Option<SocketAddr>,
    admin_token: Option<String>,
    /// The clock digue reads; the test moves it.
    clock: Clock,
    running: Option<digue::Running>,
}

impl Proxy {
    /// Starts digue with one site `portal` for `origin`. `server` is TOML
    /// added to `[server]`; `site` is TOML added after the site's origin
    /// (keys, then `[site.cache]` / `[[site.cache.rule]]` tables). The
    /// shorthand of [`Digue`] for the tests that need nothing more.
    pub async fn start(origin: &str, server: &str, site: &str) -> Proxy {
        Digue::new(origin).server(server).site(site).start().await
    }

    /// Starts digue from a config file as `digue run --config file` does.
    pub async fn from_file(file: &Path, admin_token: Option<&str>) -> Proxy {
        let config = digue::preflight::load(file)
            .unwrap_or_else(|e| panic!("{} must load: {e:?}", file.display()));
        Proxy::launch(config, Some(file), admin_token.map(str::to_owned)).await
    }

    async fn launch(
        config: digue::config::Config,
        file: Option<&Path>,
        admin_token: Option<String>,
    ) -> Proxy {
        let clock = Clock::system();
        let options = digue::Options {
            config_path: file.map(Path::to_owned),
            admin_token: admin_token.clone(),
            clock: clock.clone(),
        };
        let running = digue::start_with(config, options)
            .await
            .expect("digue starts");
        Proxy {
            addr: running.listen,
            admin: running.admin.expect("admin listener configured"),
            tls: running.tls,
            admin_token,
            clock,
            running: Some(running),
        }
    }

    /// Moves digue's clock forward by `by` at once: what digue decides on
    /// it (cache freshness, passes, the line's turns, claim windows and
    /// budget) sees that much time pass; its timers do not.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// The instant on digue's clock: real time plus every [`Proxy::advance`]
    /// so far, to measure how long something took as digue saw it.
    pub fn now(&self) -> Instant {
        self.clock.instant()
    }

    pub fn url(&self, target: &str) -> String {
        format!("http://{}{target}", self.addr)
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, target: &str) -> String {
        format!("http://{}{target}", self.admin)
    }

    /// The app, for what a test does from inside the process (a reload as
    /// SIGHUP does it).
    pub fn app(&self) -> &Arc<digue::App> {
        &self.running.as_ref().expect("running").app
    }

    /// An admin API call with this digue's token and a JSON body.
    pub async fn admin_call(&self, method: Method, path: &str, body: &str) -> Got {
        let token = self
            .admin_token
            .as_deref()
            .expect("an admin call needs a digue started with an admin token");
        let auth = format!("Bearer {token}");
        send(request(
            method,
            &self.admin_url(path),
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            body,
        ))
        .await
    }

    /// `PATCH /admin/sites/portal/admission` with this JSON body; fails the
    /// test unless the change applies.
    pub async fn patch_admission(&self, body: &str) {
        let got = self
            .admin_call(Method::PATCH, "/admin/sites/portal/admission", body)
            .await;
        assert_eq!(got.status, 200, "{body} applies: {}", got.text());
    }

    /// Stops accepting and drains, like SIGTERM does; fails the test with
    /// the panic of a server task of digue's, if one panicked.
    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// The whole `/metrics` text.
    pub async fn metrics(&self) -> String {
        get(&self.admin_url("/metrics"), &[]).await.text()
    }

    /// The value of one sample of `/metrics`, e.g.
    /// `digue_requests_total{outcome="hit",site="portal"}` (labels in
    /// alphabetical order, as Prometheus writes them). Fails the test when
    /// the sample is absent: a renamed metric or label must not read as 0.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics().await;
        read_sample(&text, sample).unwrap_or_else(|| {
            let family = sample.split('{').next().unwrap_or(sample);
            let like: Vec<&str> = text.lines().filter(|l| l.starts_with(family)).collect();
            panic!(
                "/metrics has no sample {sample} (renamed metric or label?); \
                 samples of {family}: {like:#?}"
            )
        })
    }

    /// Waits until a `/metrics` sample satisfies `ok`, failing the test
    /// after `limit`; returns its value.
    pub async fn wait_metric(
        &self,
        sample: &str,
        ok: impl Fn(f64) -> bool,
        limit: Duration,
    ) -> f64 {
        let what = format!("{sample} reaches the expected value");
        wait_for(&what, limit, async || {
            let value = self.metric(sample).await;
            if ok(value) { Ok(value) } else { Err(value) }
        })
        .await
    }
}

fn read_sample(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// `[site.admission]` gating [`ENTRY`], with these keys.
pub fn admission_table(keys: &str) -> String {
    format!("[site.admission]\npaths = [\"{ENTRY}\"]\n{keys}\n")
}

/// A `[[site]]` section answering `host`, with `body` after its origin,
/// for [`Digue::sites`].
pub fn site_section(name: &str, host: &str, origin: &str, body: &str) -> String {
    format!("[[site]]\nname = \"{name}\"\nhosts = [\"{host}\"]\norigin = \"{origin}\"\n{body}\n")
}
