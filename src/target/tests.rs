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
