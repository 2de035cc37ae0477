use super::*;

const MINIMAL: &str = r#"
    [server]
    listen = "127.0.0.1:8080"
    [[site]]
    name = "portal"
    hosts = ["*"]
    origin = "http://127.0.0.1:8081"
"#;

fn errors_of(text: &str) -> Vec<String> {
    match Config::parse(text) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

/// Fails unless each of `expected` starts one of `errs`.
fn assert_reported(errs: &[String], expected: &[&str]) {
    for expected in expected {
        assert!(
            errs.iter().any(|e| e.starts_with(expected)),
            "missing {expected:?} in {errs:#?}"
        );
    }
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = Config::parse(MINIMAL).expect("minimal config is valid");
    assert_eq!(c.restart.cache.max_size, DEFAULT_CACHE_BYTES);
    let site = &c.sites[0];
    assert_eq!(site.live.origin_concurrency, DEFAULT_ORIGIN_CONCURRENCY);
    assert_eq!(site.origin_queue_timeout, DEFAULT_ORIGIN_QUEUE_TIMEOUT);
    assert_eq!(site.session_cookies, DEFAULT_SESSION_COOKIES);
}

#[test]
fn shipped_example_config_is_valid() {
    let text = include_str!("../../config.toml");
    if let Err(e) = Config::parse(text) {
        panic!("config.toml must parse:\n{e}");
    }
}

#[test]
fn every_problem_is_reported_with_its_key_path() {
    let text = r#"
        [server]
        listen = "nowhere"
        colour = "blue"
        [cache]
        max_size = "lots"
        [[site]]
        name = "portal"
        hosts = ["*"]
        origin = "http://127.0.0.1:8081"
        [[site.cache.rule]]
        prefix = "/static/"
        ttl = "1h"
        [[site.cache.rule]]
        prefix = "static"
        ttl = "1 hour please"
        typo = 1
    "#;
    assert_reported(
        &errors_of(text),
        &[
            "server.listen: \"nowhere\" is not an address",
            "server.colour: unknown key",
            "cache.max_size: \"lots\" is not a size",
            "site[0].cache.rule[1].prefix: \"static\" must start with '/'",
            "site[0].cache.rule[1].ttl: \"1 hour please\" is not a duration",
            "site[0].cache.rule[1].typo: unknown key",
        ],
    );
}

#[test]
fn type_errors_name_the_key() {
    let errs = errors_of(&MINIMAL.replace(
        "hosts = [\"*\"]",
        "hosts = [\"*\"]\norigin_concurrency = \"many\"",
    ));
    assert!(
        errs.len() == 1 && errs[0].contains("origin_concurrency"),
        "{errs:?}"
    );
}

#[test]
fn bad_origins_and_duplicate_hosts_are_refused() {
    let text =
        format!("{MINIMAL}\n[[site]]\nname = \"portal\"\nhosts = [\"*\"]\norigin = \"ftp://x\"\n");
    let errs = errors_of(&text);
    assert!(
        errs.iter().any(|e| e.starts_with("site[1].name")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with("site[1].hosts[0]")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with("site[1].origin")),
        "{errs:?}"
    );
}

#[test]
fn an_https_origin_names_its_certificate_after_origin_tls_name_then_origin_host() {
    let https = MINIMAL.replace("http://127.0.0.1:8081", "https://10.0.0.5");
    let config = Config::parse(&https).expect("an https origin is valid");
    let tls = config.sites[0].origin.tls.clone().expect("TLS settings");
    assert_eq!(tls.name, None, "each address's own host by default");
    assert!(!tls.http2, "HTTP/1.1 by default");

    let with_host = https.replace(
        "hosts = [\"*\"]",
        "hosts = [\"*\"]\norigin_host = \"pronote.example.fr:443\"",
    );
    let config = Config::parse(&with_host).expect("valid");
    let name = config.sites[0].origin.tls.clone().and_then(|t| t.name);
    assert_eq!(
        name.map(|n| n.to_str().into_owned()),
        Some("pronote.example.fr".to_owned()),
        "origin_host's name, without its port"
    );

    let explicit = with_host.replace(
        "hosts = [\"*\"]",
        "hosts = [\"*\"]\norigin_tls_name = \"portal.ac-lille.fr\"\norigin_http2 = true",
    );
    let config = Config::parse(&explicit).expect("valid");
    let tls = config.sites[0].origin.tls.clone().expect("TLS settings");
    assert_eq!(
        tls.name.map(|n| n.to_str().into_owned()),
        Some("portal.ac-lille.fr".to_owned()),
        "origin_tls_name wins over origin_host"
    );
    assert!(tls.http2);

    let errs = errors_of(&https.replace(
        "hosts = [\"*\"]",
        "hosts = [\"*\"]\norigin_tls_name = \"not a name\"\norigin_client_key = \"k.pem\"",
    ));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("site[0].origin_tls_name")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("site[0].origin_client_cert")),
        "a key without its certificate: {errs:?}"
    );
}

#[test]
fn tls_keys_on_an_http_origin_are_refused_by_name() {
    let errs = errors_of(&MINIMAL.replace(
        "hosts = [\"*\"]",
        "hosts = [\"*\"]\norigin_tls_name = \"x.fr\"\norigin_client_cert = \"c.pem\"\n\
         origin_client_key = \"k.pem\"\norigin_http2 = false",
    ));
    for key in [
        "origin_tls_name",
        "origin_client_cert",
        "origin_client_key",
        "origin_http2",
    ] {
        assert!(
            errs.iter()
                .any(|e| e.starts_with(&format!("site[0].{key}"))),
            "{key}: {errs:?}"
        );
    }
}

#[test]
fn an_admission_that_would_admit_nobody_is_refused() {
    let errs = errors_of(&format!(
        "{MINIMAL}\n[site.admission]\npaths = [\"/login\"]\nnew_users_per_minute = 60\n\
         burst = 0\nmax_active_users = 0\n"
    ));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("site[0].admission.burst: must be between 1 and")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("site[0].admission.max_active_users: must be between 1 and")),
        "{errs:?}"
    );
}

#[test]
fn exact_host_wins_over_wildcard_whatever_the_order() {
    let text = format!(
        "{MINIMAL}\n[[site]]\nname = \"ent\"\nhosts = [\"ent.example.fr\"]\norigin = \"http://127.0.0.1:9\"\n"
    );
    let c = Config::parse(&text).expect("valid");
    assert_eq!(c.site_for_host("ent.example.fr"), Some(1));
    assert_eq!(c.site_for_host("other"), Some(0));
}

#[test]
fn cluster_refresh_interval_stays_within_the_node_heartbeat() {
    let with = |interval: &str| {
        errors_of(&format!(
            "{MINIMAL}\n[cluster]\nredis_url = \"redis://127.0.0.1:6379\"\n\
             refresh_interval = \"{interval}\"\n"
        ))
    };
    for ok in ["50ms", "250ms", "2s"] {
        assert_eq!(with(ok), Vec::<String>::new(), "{ok} is a sane refresh");
    }
    for bad in ["10ms", "3s", "5s", "1m"] {
        let errs = with(bad);
        assert!(
            errs.len() == 1 && errs[0].starts_with("cluster.refresh_interval: must be between"),
            "{bad}: {errs:?}"
        );
    }
}

#[test]
fn cluster_redis_is_one_url_or_the_seed_nodes_of_a_redis_cluster() {
    let parse = |keys: &str| Config::parse(&format!("{MINIMAL}\n[cluster]\n{keys}\n"));
    let target = |keys: &str| {
        parse(keys)
            .unwrap_or_else(|e| panic!("{keys}: {e}"))
            .restart
            .cluster
            .expect("a cluster section")
            .redis
    };
    assert_eq!(
        target("redis_url = \"redis://10.0.0.20:6379\""),
        RedisTarget::Single("redis://10.0.0.20:6379".to_owned()),
        "redis_url alone is one Redis, as before"
    );
    assert_eq!(
        target("redis_url = \"rediss://:pw@r1:6379\"\nredis_cluster = true"),
        RedisTarget::Cluster(vec!["rediss://:pw@r1:6379".to_owned()]),
        "one seed is enough for a Redis Cluster"
    );
    assert_eq!(
        target("redis_urls = [\"redis://r1:7000\", \"redis://r2:7000\"]\nredis_cluster = true"),
        RedisTarget::Cluster(vec![
            "redis://r1:7000".to_owned(),
            "redis://r2:7000".to_owned()
        ]),
        "seeds in the order given"
    );
    let errs = |keys: &str| errors_of(&format!("{MINIMAL}\n[cluster]\n{keys}\n"));
    let cases = [
        (
            "redis_url = \"redis://a:1\"\nredis_urls = [\"redis://b:1\"]",
            "cluster.redis_urls: give either redis_url or redis_urls",
        ),
        ("redis_urls = []", "cluster.redis_urls: empty"),
        ("redis_cluster = true", "cluster.redis_url: missing"),
        (
            "redis_urls = [\"redis://a:1\", \"redis://b:1\"]",
            "cluster.redis_urls: several URLs are the seed nodes of a Redis Cluster",
        ),
        (
            "redis_urls = [\"redis://a:1\", \"http://b:1\"]\nredis_cluster = true",
            "cluster.redis_urls[1]: must start with redis:// or rediss://",
        ),
        (
            "redis_urls = [\"redis://a:1\", \"rediss://b:1\"]\nredis_cluster = true",
            "cluster.redis_urls: mixes redis:// and rediss://",
        ),
        (
            "redis_url = \"redis://a:1/2\"\nredis_cluster = true",
            "cluster.redis_url: a Redis Cluster has only database 0",
        ),
        (
            "redis_url = \"redis://secret-pw@a:notaport\"",
            "cluster.redis_url: is not a valid Redis URL",
        ),
    ];
    for (keys, expected) in cases {
        let found = errs(keys);
        assert!(
            found.len() == 1 && found[0].starts_with(expected),
            "{keys:?} gives one error starting {expected:?}: {found:?}"
        );
        assert!(
            !found[0].contains("secret-pw"),
            "errors never quote a URL (it may hold a password): {found:?}"
        );
    }
    let both = errs("redis_url = \"ftp://a\"\non_store_failure = \"maybe\"");
    assert_eq!(both.len(), 2, "all errors at once: {both:?}");
}

#[test]
fn cidr_ranges_match_v4_and_mapped_v6() {
    let net: Cidr = "10.0.0.0/8".parse().expect("valid");
    assert!(net.contains("10.1.2.3".parse().expect("ip")));
    assert!(net.contains("::ffff:10.1.2.3".parse().expect("ip")));
    assert!(!net.contains("11.0.0.1".parse().expect("ip")));
    let all: Cidr = "0.0.0.0/0".parse().expect("valid");
    assert!(all.contains("1.2.3.4".parse().expect("ip")));
    assert!("10.0.0.0/33".parse::<Cidr>().is_err());
}

/// Generated config text: parsing never panics, whatever the file holds
/// (errors are the expected answer to most of it).
mod properties {
    use super::*;
    use proptest::prelude::*;

    const SHIPPED: &str = include_str!("../../config.toml");

    /// Values that have broken parsers: zero, negatives, the edges of the
    /// integer types, huge durations and sizes, wrong types, odd strings.
    const ODD_VALUES: &[&str] = &[
        "0",
        "-1",
        "1",
        "18446744073709551615",
        "9223372036854775807",
        "-9223372036854775808",
        "1e309",
        "nan",
        "-inf",
        "0.5",
        "true",
        "\"\"",
        "\" \"",
        "\"0s\"",
        "\"-5s\"",
        "\"1ns\"",
        "\"1h\"",
        "\"584542046091y\"",
        "\"99999999999999999999h\"",
        "\"0B\"",
        "\"1\"",
        "\"1KiB\"",
        "\"16EiB\"",
        "\"99999999999999999999TiB\"",
        "\"1.5e300 GiB\"",
        "\"*\"",
        "\"http://\"",
        "\"http://[::1]:0\"",
        "\"::\"",
        "\"0.0.0.0/33\"",
        "\"::/129\"",
        "\"é\"",
        "[]",
        "[\"\"]",
        "[\"*\", \"*\"]",
        "{}",
        "{ a = 1 }",
    ];

    /// A change to one line of the shipped config (not a comment).
    #[derive(Debug, Clone)]
    enum Edit {
        /// A key or a table header gone.
        Drop,
        /// Its value replaced (a `key = value` line; a header is kept).
        Value(String),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            1 => Just(Edit::Drop),
            4 => prop::sample::select(ODD_VALUES).prop_map(|v| Edit::Value(v.to_owned())),
            1 => any::<i64>().prop_map(|n| Edit::Value(n.to_string())),
            1 => "[ -~]{0,16}".prop_map(|s| Edit::Value(format!("{s:?}"))),
        ]
    }

    /// The shipped config with a few lines dropped or given odd values:
    /// text that mostly gets past the TOML reader into validation.
    fn edited_config() -> impl Strategy<Value = String> {
        let meaningful: Vec<usize> = SHIPPED
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(|(i, _)| i)
            .collect();
        let edits = prop::collection::vec((prop::sample::select(meaningful), edit()), 1..4);
        edits.prop_map(|edits| {
            let mut lines: Vec<String> = SHIPPED.lines().map(str::to_owned).collect();
            for (at, edit) in edits {
                let line = &mut lines[at];
                match edit {
                    Edit::Drop => line.clear(),
                    Edit::Value(v) => {
                        if let Some((key, _)) = line.split_once('=') {
                            *line = format!("{key}= {v}");
                        }
                    }
                }
            }
            lines.join("\n")
        })
    }

    proptest! {
        #[test]
        fn any_text_is_parsed_or_refused_without_panicking(
            text in prop_oneof![edited_config(), any::<String>(), "[\\[\\]a-z=\" .\n0-9]{0,200}"],
        ) {
            let _ = Config::parse(&text);
        }
    }
}

#[test]
fn a_list_of_backends_is_checked_one_by_one_with_its_index() {
    let site = |keys: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:8080\"\n[[site]]\nname = \"portal\"\nhosts = [\"*\"]\n{keys}\n"
        )
    };
    let c = Config::parse(&site(
        "origin = [\"http://10.0.0.1:8080\", \"http://10.0.0.2:8080\"]",
    ))
    .expect("two backends");
    assert_eq!(c.sites[0].origin.backends.len(), 2);
    assert_eq!(c.sites[0].balance, BalanceConfig::default());
    let errs = errors_of(&site(
        "origin = [\"http://10.0.0.1:8080\", \"ftp://10.0.0.2\", \"http://10.0.0.1:8080\"]\n\
         eject_after = 0\neject_for = \"1h\"",
    ));
    for key in [
        "site[0].origin[1]",
        "site[0].origin[2]",
        "site[0].eject_after",
        "site[0].eject_for",
    ] {
        assert!(errs.iter().any(|e| e.starts_with(key)), "{key}: {errs:?}");
    }
    let errs = errors_of(&site(
        "origin = [\"http://10.0.0.1:8080\"]\n\
         health_check = { path = \"ping\", interval = \"1s\", timeout = \"2s\", expect = 900 }",
    ));
    for key in [
        "site[0].health_check.path",
        "site[0].health_check.timeout",
        "site[0].health_check.expect",
    ] {
        assert!(errs.iter().any(|e| e.starts_with(key)), "{key}: {errs:?}");
    }
    let errs = errors_of(&site(
        "origin = [\"http://10.0.0.1:8080\"]\naffinity = \"sticky\"",
    ));
    assert!(
        errs.len() == 1 && errs[0].contains("affinity") && errs[0].contains("session"),
        "{errs:?}"
    );
    assert!(
        errors_of(&site("origin = []"))
            .iter()
            .any(|e| e.starts_with("site[0].origin")),
        "an empty list is refused"
    );
}

#[test]
fn tunnel_keys_have_defaults_and_their_errors_name_their_keys() {
    let c = Config::parse(MINIMAL).expect("minimal config is valid");
    let tunnels = &c.sites[0].tunnels;
    assert_eq!(tunnels.max_websockets, DEFAULT_MAX_WEBSOCKETS);
    assert_eq!(tunnels.idle_timeout, DEFAULT_WEBSOCKET_IDLE_TIMEOUT);
    assert!(tunnels.allows("WebSocket"), "websocket is always tunnelled");
    assert!(!tunnels.allows("mqtt"), "nothing else unless listed");

    let allowed = Config::parse(&format!("{MINIMAL}allow_upgrades = [\"MQTT\"]\n"))
        .expect("a listed protocol is valid");
    assert!(allowed.sites[0].tunnels.allows("mqtt"));

    let errs = errors_of(&format!(
        "{MINIMAL}max_websockets = 0\nwebsocket_idle_timeout = \"1ms\"\n\
         allow_upgrades = [\"h2c\", \"a b\"]\n"
    ));
    assert_reported(
        &errs,
        &[
            "site[0].max_websockets: must be at least 1",
            "site[0].websocket_idle_timeout: must be at least 100ms",
            "site[0].allow_upgrades[0]: \"h2c\" cannot be tunnelled",
            "site[0].allow_upgrades[1]: \"a b\" is not a protocol name",
        ],
    );
}

#[test]
fn a_huge_origin_concurrency_in_the_file_is_an_error_not_a_panic_at_start() {
    for value in ["18446744073709551615", "100001", "0"] {
        let errs = errors_of(&MINIMAL.replace(
            "hosts = [\"*\"]",
            &format!("hosts = [\"*\"]\norigin_concurrency = {value}"),
        ));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("site[0].origin_concurrency: must be between 1 and 100000")),
            "{value}: {errs:?}"
        );
    }
}

#[test]
fn routing_headers_are_header_names_a_request_can_do_without() {
    let with =
        |list: &str| MINIMAL.replace("[server]", &format!("[server]\nrouting_headers = {list}"));
    let c = Config::parse(&with("[\"X-Tenant\"]")).expect("valid");
    assert_eq!(c.server.routing_headers, ["x-tenant"]);
    let c = Config::parse(MINIMAL).expect("valid");
    assert_eq!(
        c.server.routing_headers.len(),
        DEFAULT_ROUTING_HEADERS.len()
    );
    let errs = errors_of(&with("[\"a b\", \"Host\"]"));
    for key in ["server.routing_headers[0]", "server.routing_headers[1]"] {
        assert!(errs.iter().any(|e| e.starts_with(key)), "{key}: {errs:?}");
    }
}

#[test]
fn the_origin_share_per_network_is_a_percentage() {
    let with = |value: &str| {
        MINIMAL.replace(
            "hosts = [\"*\"]",
            &format!("hosts = [\"*\"]\norigin_share_per_network = {value}"),
        )
    };
    let site = |text: &str| Config::parse(text).expect("valid").sites.remove(0);
    assert_eq!(site(MINIMAL).origin_share_per_network, 50, "the default");
    assert_eq!(site(&with("100")).origin_share_per_network, 100);
    for value in ["0", "101", "18446744073709551615"] {
        assert_reported(
            &errors_of(&with(value)),
            &["site[0].origin_share_per_network: must be a percentage from 1 to 100"],
        );
    }
}

#[test]
fn the_client_send_timeout_is_at_least_a_second() {
    let with = |value: &str| {
        MINIMAL.replace(
            "hosts = [\"*\"]",
            &format!("hosts = [\"*\"]\nclient_send_timeout = {value:?}"),
        )
    };
    let site = |text: &str| Config::parse(text).expect("valid").sites.remove(0);
    assert_eq!(
        site(MINIMAL).client_send_timeout,
        std::time::Duration::from_secs(10)
    );
    assert_eq!(
        site(&with("3s")).client_send_timeout,
        std::time::Duration::from_secs(3)
    );
    for value in ["0s", "500ms"] {
        assert_reported(
            &errors_of(&with(value)),
            &["site[0].client_send_timeout: must be at least 1s"],
        );
    }
    assert_reported(
        &errors_of(&with("soon")),
        &["site[0].client_send_timeout: \"soon\" is not a duration"],
    );
}
