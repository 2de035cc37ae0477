use super::*;

fn path(target: &str) -> String {
    String::from_utf8_lossy(&read(target).expect("readable").path).into_owned()
}

#[test]
fn a_plain_path_is_read_as_itself_without_copying() {
    let r = read("/static/app.css?v=3").expect("readable");
    assert!(matches!(r.path, Cow::Borrowed(_)), "no allocation");
    assert_eq!(r.path.as_ref(), b"/static/app.css");
    assert_eq!(r.raw_query, Some("v=3"));
    for plain in ["/", "/?q", "/a/", "/a/b?x=/./", "/a.b/..c"] {
        assert!(
            matches!(read(plain).expect("readable").path, Cow::Borrowed(_)),
            "{plain} reads as itself"
        );
    }
    for not_plain in [
        "//a", "/a/./b", "/a/..", "/a/.?q", "/a%41", "/a;b", "\\a", "a",
    ] {
        assert!(
            matches!(read(not_plain).expect("readable").path, Cow::Owned(_)),
            "{not_plain} is normalised"
        );
    }
}

#[test]
fn spellings_of_one_path_read_the_same() {
    for spelling in [
        "/login",
        "/%6cogin",
        "/%6Cogin",
        "//login",
        "/./login",
        "/x/../login",
        "/%2flogin",
        "/%2Flogin",
        "/login;jsessionid=abc",
        "/x;p=1/../login",
        "/%2e/login",
        "/x/%2e%2e/login",
        "\\login",
    ] {
        assert_eq!(path(spelling), "/login", "{spelling}");
    }
}

#[test]
fn dot_segments_follow_rfc_3986() {
    assert_eq!(path("/a/b/c/./../../g"), "/a/g");
    assert_eq!(path("/a/b/."), "/a/b/");
    assert_eq!(path("/a/b/.."), "/a/");
    assert_eq!(path("/a//b///"), "/a/b/");
    assert_eq!(path("/."), "/");
}

#[test]
fn hostile_targets_are_unreadable() {
    for (target, why) in [
        ("/a%00b", Unreadable::Control),
        ("/a%0d%0aSet-Cookie:x", Unreadable::Control),
        ("/a\u{7f}", Unreadable::Control),
        ("/a%zz", Unreadable::BadEscape),
        ("/a%4", Unreadable::BadEscape),
        ("/%", Unreadable::BadEscape),
        ("/..", Unreadable::AboveRoot),
        ("/x/../../etc/passwd", Unreadable::AboveRoot),
        ("/%2e%2e/x", Unreadable::AboveRoot),
    ] {
        assert_eq!(read(target).map(|_| ()), Err(why), "{target:?}");
    }
    assert!(read("/q?a=%zz").is_ok(), "the query is read leniently");
}

fn gates(paths: &[&str], case_sensitive: bool) -> Gates {
    let paths: Vec<String> = paths.iter().map(|p| (*p).to_owned()).collect();
    Gates::new(&paths, case_sensitive)
}

fn gated(g: &Gates, target: &str) -> bool {
    g.gate(target, &read(target).expect("readable"))
}

#[test]
fn a_gate_catches_every_spelling_of_its_path() {
    let g = gates(&["/login"], false);
    for target in [
        "/login",
        "/LOGIN",
        "/Login?next=/",
        "/%6cogin",
        "//login",
        "/./login",
        "/x/../login",
        "/%2flogin",
        "/login;jsessionid=1",
        "/loginform",
    ] {
        assert!(gated(&g, target), "{target}");
    }
    assert!(!gated(&g, "/static/login.css"), "elsewhere");
    let strict = gates(&["/login"], true);
    assert!(!gated(&strict, "/LOGIN"), "a case-sensitive site");
    assert!(gated(&strict, "/%6cogin"), "still decoded");
}

#[test]
fn a_gate_with_a_query_catches_its_parameter_anywhere() {
    let g = gates(&["/index.php?title=Special:UserLogin"], false);
    for target in [
        "/index.php?title=Special:UserLogin",
        "/index.php?title=Special%3AUserLogin&returnto=Main+Page",
        "/index.php?returnto=Main&title=Special:UserLogin",
        "/index.php?title=Main&title=Special:UserLogin",
        "/index.php?%74itle=Special:UserLogin",
        "/index.php?title=special:userlogin",
        "/INDEX.php?title=Special:UserLogin",
    ] {
        assert!(gated(&g, target), "{target}");
    }
    for target in [
        "/index.php?title=Main_Page",
        "/index.php",
        "/index.php?titles=Special:UserLogin",
    ] {
        assert!(!gated(&g, target), "{target}");
    }
}

fn rules(text: &str) -> Vec<CacheRule> {
    crate::config::Config::parse(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[site]]\nname = \"p\"\nhosts = [\"*\"]\n\
         origin = \"http://127.0.0.1:1\"\n{text}"
    ))
    .expect("valid")
    .sites
    .remove(0)
    .cache
    .rules
}

fn rule<'r>(rules: &'r [CacheRule], target: &str) -> Option<&'r str> {
    rule_for(rules, &read(target).expect("readable"), false).map(|r| r.prefix.as_str())
}

#[test]
fn a_rule_that_shares_needs_both_readings_and_a_bypass_either() {
    let r = rules(
        "[[site.cache.rule]]\nprefix = \"/static/\"\nttl = \"1h\"\nshared = true\n\
         [[site.cache.rule]]\nprefix = \"/api/\"\nbypass = true\n",
    );
    assert_eq!(rule(&r, "/static/app.css"), Some("/static/"));
    assert_eq!(rule(&r, "/static//app.css"), Some("/static/"));
    assert_eq!(
        rule(&r, "/static/..%2fapi/me"),
        Some("/api/"),
        "bypass wins"
    );
    assert_eq!(rule(&r, "/static/%2e%2e/api/me"), Some("/api/"));
    assert_eq!(rule(&r, "/static/../me"), None, "not static once read");
    assert_eq!(rule(&r, "/%73tatic/app.css"), None, "not static as sent");
    assert_eq!(rule(&r, "/API/me"), Some("/api/"), "bypass in any case");
    assert_eq!(rule(&r, "/page"), None);
}

#[test]
fn the_longest_rule_prefix_wins() {
    let r = rules(
        "[[site.cache.rule]]\nprefix = \"/static/\"\nttl = \"1h\"\n\
         [[site.cache.rule]]\nprefix = \"/static/private/\"\nbypass = true\n",
    );
    assert_eq!(rule(&r, "/static/private/x"), Some("/static/private/"));
    assert_eq!(rule(&r, "/static/a.css"), Some("/static/"));
    assert_eq!(rule(&r, "/other"), None);
}

/// Generated inputs: the reader never panics, its reading is stable, and no
/// spelling of a gated path or query slips past its gate.
mod properties {
    use super::*;
    use percent_encoding::{AsciiSet, CONTROLS, percent_encode};
    use proptest::prelude::*;

    /// Pieces of a path that make it interesting to the reader: separators,
    /// dot-segments, escapes, parameters.
    const PIECES: &[&str] = &[
        "/", "//", ".", "..", "./", "../", "%2f", "%2F", "%2e", "%2E%2e", "%25", "%41", "%ff",
        "%C3%A9", ";", ";p=v", "\\", "a", "B", "login", "é", " ", "+", "=", "&", "#",
    ];
    /// Pieces that end the path or make it unreadable: kept rarer, or few
    /// targets would be read at all.
    const BREAKERS: &[&str] = &["?", "?a=%zz&b", "%", "%2", "%00", "%0a", "\u{7f}", "\r"];

    /// A target: pieces after a `/`, a small alphabet where dot-segments
    /// come often, or any string at all.
    fn target() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            9 => prop::sample::select(PIECES),
            1 => prop::sample::select(BREAKERS),
        ];
        prop_oneof![
            prop::collection::vec(piece, 0..12).prop_map(|p| format!("/{}", p.concat())),
            "/[/.a;\\\\]{0,12}",
            any::<String>(),
        ]
    }

    /// The reader is cheap: more cases find the rare shapes.
    const READER_CASES: u32 = 1024;

    /// What must be escaped to write a read path back as a target: the
    /// bytes that mean something else in a target (`%`, `?`); controls and
    /// non-ASCII bytes are escaped by `percent_encode` anyway.
    const RESPELL: &AsciiSet = &CONTROLS.add(b'%').add(b'?');

    /// One character of a word as a link builder might write it: either
    /// case, and maybe percent-encoded in either hex case.
    fn spelled(word: &'static str) -> impl Strategy<Value = String> {
        prop::collection::vec((any::<bool>(), 0..3_u8), word.len()).prop_map(move |choices| {
            word.bytes()
                .zip(choices)
                .map(|(b, (upper, how))| {
                    let b = if upper { b.to_ascii_uppercase() } else { b };
                    match how {
                        0 => char::from(b).to_string(),
                        1 => format!("%{b:02X}"),
                        _ => format!("%{b:02x}"),
                    }
                })
                .collect()
        })
    }

    /// Ways to get back to where one was before a segment.
    const DETOURS: &[&str] = &[
        "./",
        "x/../",
        "/",
        "%2f",
        "%2F",
        ";p=v/",
        "x;p=v/../",
        "%2e/",
        "x/%2E%2e/",
    ];
    /// What may follow a gated path and still be under it.
    const TAILS: &[&str] = &["", ";jsessionid=abc", ";p=v", "?next=/", "/", "/x", ".php"];

    /// The gate `/index.php?title=Special:UserLogin` as a request may write
    /// its parameter.
    fn login_param() -> impl Strategy<Value = String> {
        (spelled("title"), spelled("Special:UserLogin")).prop_map(|(n, v)| format!("{n}={v}"))
    }

    /// Other parameters: never named `title` (no `t` in their names).
    fn other_params() -> impl Strategy<Value = Vec<String>> {
        let param = ("[a-s]{1,6}", "[a-zA-Z0-9_]{0,6}").prop_map(|(n, v)| format!("{n}={v}"));
        (prop::collection::vec(param, 0..5), any::<bool>()).prop_map(|(mut params, decoy)| {
            if decoy {
                params.push("title=Main_Page".to_owned());
            }
            params
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(READER_CASES))]

        #[test]
        fn any_target_is_read_or_refused_without_panicking(target in target()) {
            let g = gates(&["/login", "/index.php?title=Special:UserLogin"], false);
            if let Ok(reading) = read(&target) {
                g.gate(&target, &reading);
                rule_for(&[], &reading, false);
                reading.query_pairs().count();
            }
        }

        #[test]
        fn a_read_path_reads_as_itself(target in target()) {
            let Ok(reading) = read(&target) else { return Ok(()) };
            let respelled = percent_encode(&reading.path, RESPELL).to_string();
            let again = read(&respelled);
            prop_assert!(again.is_ok(), "{respelled:?} from {target:?}: {again:?}");
            let again = again.expect("checked just above");
            prop_assert_eq!(
                &again.path, &reading.path, "{:?} read from {:?}", respelled, target
            );
            if respelled.as_bytes() == reading.path.as_ref() {
                prop_assert!(
                    matches!(again.path, Cow::Borrowed(_)),
                    "{:?} reads as itself without copying", respelled
                );
            }
        }

        #[test]
        fn the_one_pass_reading_agrees_with_the_full_normalisation(target in target()) {
            let Ok(reading) = read(&target) else { return Ok(()) };
            let full = normalise(reading.raw_path);
            prop_assert_eq!(
                full.as_deref(), Ok(reading.path.as_ref()), "{:?}", target
            );
        }

        #[test]
        fn every_spelling_of_a_gated_path_is_gated(
            detours in prop::collection::vec(prop::sample::select(DETOURS), 0..4),
            word in spelled("login"),
            tail in prop::sample::select(TAILS),
        ) {
            let target = format!("/{}{word}{tail}", detours.concat());
            let g = gates(&["/login"], false);
            prop_assert!(gated(&g, &target), "{} walks past the gate /login", target);
        }

        #[test]
        fn a_gate_s_parameter_is_found_wherever_and_however_it_is_written(
            params in (other_params(), login_param())
                .prop_map(|(mut others, login)| { others.push(login); others })
                .prop_shuffle(),
        ) {
            let target = format!("/index.php?{}", params.join("&"));
            let g = gates(&["/index.php?title=Special:UserLogin"], false);
            prop_assert!(gated(&g, &target), "{} walks past the gate", target);
        }

        #[test]
        fn a_query_without_the_gate_s_parameter_is_not_gated(
            params in other_params().prop_shuffle(),
        ) {
            let target = format!("/index.php?{}", params.join("&"));
            let g = gates(&["/index.php?title=Special:UserLogin"], false);
            prop_assert!(!gated(&g, &target), "{} is gated", target);
        }
    }
}
