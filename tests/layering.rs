//! The crate's modules import one another in one direction: no file of
//! `src/` reaches, through `crate::` paths, a file that reaches it back.
//! `lib.rs` (the `App` every stage is handed) is the composition root and
//! stands outside the check. A new import that closes a circle fails here,
//! with the files of the circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`admission::gate`) → the file's text, without comments and
/// unit tests (a test may reach anywhere).
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path
                .strip_prefix(src)
                .expect("under src/")
                .with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            let name = parts.join("::");
            if name == "main" || name == "lib" {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("a readable source file");
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let code: String = code
                .lines()
                .map(|l| l.split("//").next().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n");
            out.insert(name, code);
        }
    }
    out
}

/// The `crate::a::b::c` paths of a file, braces of `use` groups expanded
/// one level (`crate::a::{b, c}` → `a::b`, `a::c`).
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let path = path.trim_end_matches(':').to_owned();
        if let Some(group) = rest[path.len()..].strip_prefix("::{") {
            let inner = group.split('}').next().unwrap_or_default();
            for name in inner.split(',') {
                let name = name.trim().split("::").next().unwrap_or_default();
                if !name.is_empty() {
                    out.push(format!("{path}::{name}"));
                }
            }
        }
        out.push(path);
    }
    out
}

/// The deepest module a path names (`config::AdmissionMode` → `config`).
fn resolve(path: &str, modules: &BTreeMap<String, String>) -> Option<String> {
    let segments: Vec<&str> = path.split("::").collect();
    (1..=segments.len())
        .rev()
        .map(|n| segments[..n].join("::"))
        .find(|m| modules.contains_key(m))
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    modules
        .iter()
        .map(|(name, code)| {
            let deps = paths(code)
                .iter()
                .filter_map(|p| resolve(p, &modules))
                // A module's own children are part of it.
                .filter(|d| d != name && !d.starts_with(&format!("{name}::")))
                .collect();
            (name.clone(), deps)
        })
        .collect()
}

/// The strongly connected components of more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            for w in &self.graph[v] {
                if !self.index.contains_key(w.as_str()) {
                    self.visit(w);
                    let lw = self.low[w.as_str()];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.stack.contains(&w.as_str()) {
                    let iw = self.index[w.as_str()];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let graph = graph();
    assert!(
        graph.len() > 40 && graph.contains_key("admission::gate"),
        "the walk found the crate's modules: {:?}",
        graph.keys()
    );
    assert!(
        graph["admission::gate"].contains("config"),
        "imports are read: {:?}",
        graph["admission::gate"]
    );
    let cycles = cycles(&graph);
    assert!(cycles.is_empty(), "import circles: {cycles:#?}");
}

#[test]
fn config_is_a_leaf() {
    let graph = graph();
    let config: Vec<_> = graph
        .iter()
        .filter(|(name, _)| name.as_str() == "config" || name.starts_with("config::"))
        .flat_map(|(_, deps)| deps.iter())
        .filter(|d| !d.starts_with("config"))
        .collect();
    assert!(
        config.is_empty(),
        "config depends only on itself and crates: {config:?}"
    );
}

#[test]
fn a_circle_is_found_when_there_is_one() {
    let mut graph = BTreeMap::new();
    let edge = |a: &str, b: &str| (a.to_owned(), BTreeSet::from([b.to_owned()]));
    graph.extend([edge("a", "b"), edge("b", "c"), edge("c", "a")]);
    graph.insert("d".to_owned(), BTreeSet::new());
    assert_eq!(cycles(&graph), vec![vec!["a", "b", "c"]]);
}
