//! The hit path: key computation, store lookup and response build, against a
//! naive baseline (a mutex-guarded map whose hits copy the body); and the
//! same hit with the target read first (`target::read`, the gate and the
//! cache rule), as the request path does, to price the URL reader.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use digue::cache::key::CacheKey;
use digue::cache::policy;
use digue::cache::serve;
use digue::cache::store::{Entry, Lookup, Store};
use digue::config::Config;
use digue::outcome::CacheStatus;
use digue::target::{self, Gates};
use http::{HeaderMap, Request, Response};

const OBJECT_BYTES: usize = 2048;

fn site() -> digue::config::SiteConfig {
    let text = "[server]\nlisten = \"127.0.0.1:0\"\n[[site]]\nname = \"bench\"\nhosts = [\"*\"]\n\
                origin = \"http://127.0.0.1:1\"\n[[site.cache.rule]]\nprefix = \"/static/\"\n\
                ttl = \"1h\"\nshared = true\n[[site.cache.rule]]\nprefix = \"/api/\"\nbypass = true\n\
                [site.admission]\npaths = [\"/pronote/eleve.html\"]\nnew_users_per_minute = 600\n";
    Config::parse(text).expect("valid").sites.remove(0)
}

fn hit_path(c: &mut Criterion) {
    let site = site();
    let store = Store::new(
        64 << 20,
        std::time::Duration::from_secs(60),
        prometheus::IntCounter::new("e", "e").expect("valid"),
    );
    let (req, ()) = Request::get("/static/app.css")
        .header("host", "ent.example.fr")
        .header("accept-encoding", "gzip, br")
        .body(())
        .expect("valid")
        .into_parts();
    let (res, ()) = Response::builder()
        .header("cache-control", "max-age=3600")
        .header("content-type", "text/css")
        .header("etag", "\"v1\"")
        .body(())
        .expect("valid")
        .into_parts();
    let body = Bytes::from(vec![b'x'; OBJECT_BYTES]);
    let clock = digue::clock::Clock::system();
    let now = clock.now();
    let plan = policy::plan(&req, &res, &site, None, now.system).expect("storable");
    let primary = CacheKey::primary("bench", "https", "ent.example.fr", "/static/app.css");
    let entry = Entry::new(
        primary.clone(),
        res.status,
        res.headers.clone(),
        body.clone(),
        plan,
        now,
    );
    store.insert(&primary, std::sync::Arc::new(entry));

    let mut group = c.benchmark_group("hit_path");
    group.bench_function("digue", |b| {
        b.iter(|| {
            let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
            let key = CacheKey::primary("bench", "https", "ent.example.fr", target);
            let Lookup::Found(entry) = store.lookup(&key, &req.headers) else {
                panic!("stored above")
            };
            serve::respond(&entry, &req, CacheStatus::Hit { ttl: 60 }, clock.instant())
        });
    });

    let gates = Gates::new(
        &site.admission.as_ref().expect("a waiting room").paths,
        site.case_sensitive,
    );
    group.bench_function("digue_with_url_reading", |b| {
        b.iter(|| {
            let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
            let reading = target::read(target).expect("readable");
            assert!(!gates.gate(target, &reading), "not an entry point");
            let rule = target::rule_for(&site.cache.rules, &reading, site.case_sensitive);
            assert!(rule.is_some(), "under /static/");
            let key = CacheKey::primary("bench", "https", "ent.example.fr", target);
            let Lookup::Found(entry) = store.lookup(&key, &req.headers) else {
                panic!("stored above")
            };
            serve::respond(&entry, &req, CacheStatus::Hit { ttl: 60 }, clock.instant())
        });
    });

    let naive: Mutex<HashMap<String, (HeaderMap, Vec<u8>)>> = Mutex::new(HashMap::new());
    naive.lock().expect("fresh").insert(
        "ent.example.fr/static/app.css".to_owned(),
        (res.headers.clone(), body.to_vec()),
    );
    group.bench_function("naive_mutex_map_copying_body", |b| {
        b.iter(|| {
            let key = format!("{}{}", "ent.example.fr", req.uri.path());
            let map = naive.lock().expect("not poisoned");
            let (headers, body) = map.get(&key).expect("stored above");
            let mut res = Response::new(Bytes::copy_from_slice(body));
            *res.headers_mut() = headers.clone();
            res
        });
    });
    group.finish();
}

criterion_group!(benches, hit_path);
criterion_main!(benches);
