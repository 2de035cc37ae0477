use clap::Parser;
use std::process::ExitCode;

#[derive(Parser)]
enum Cli {
    Serve { per_minute: u32 },
    Surge(digue::surge::SurgeArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse() {
        Cli::Surge(a) => digue::surge::run(a).await,
        Cli::Serve { per_minute } => {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let portal = digue::demo::Portal::spawn(l, digue::demo::PortalOptions::default());
            let text = format!(
                r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
max_connections = 50000
[[site]]
name = "portal"
hosts = ["*"]
origin = "http://{}"
origin_concurrency = 24
[[site.cache.rule]]
prefix = "/static/"
ttl = "1h"
shared = true
[[site.cache.rule]]
prefix = "/api/"
bypass = true
[[site.cache.rule]]
prefix = "/pronote/appelfonction/"
bypass = true
[site.admission]
paths = ["/pronote/eleve.html"]
new_users_per_minute = {per_minute}
burst = 20
tickets_per_network_per_minute = 1000000
"#,
                portal.addr
            );
            let config = digue::config::Config::parse(&text).unwrap();
            let running = digue::start(config).await.unwrap();
            println!(
                "target http://{} admin http://{}",
                running.listen,
                running.admin.unwrap()
            );
            tokio::signal::ctrl_c().await.unwrap();
            println!(
                "portal peak in flight {}, overload errors {}",
                portal.peak_in_flight(),
                portal.overload_errors()
            );
            ExitCode::SUCCESS
        }
    }
}
