//! The proxy's modules are layers (see the crate documentation): a module uses only the layers
//! before its own, and no two files import each other, directly or around a loop. This test
//! reads `src/` and fails naming the import that breaks either rule, so the architecture the
//! folders show stays the one the code has.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level modules, lowest layer first. Modules on one line are one layer.
const LAYERS: &[&[&str]] = &[
    &["error", "observe", "wire"],
    &["mesh"],
    &["policy"],
    &["forward"],
    &["route"],
    &["config"],
    &["shared"],
    &["pipeline"],
    &["serve"],
    &["runtime"],
    &["app"],
];

/// Every module of `src/` (as `a::b`) with the crate paths its non-test code names.
fn modules() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(&root)
                .expect("under src")
                .with_extension("");
            let mut segs: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into()).collect();
            if segs.last().is_some_and(|s| s == "mod") {
                segs.pop();
            }
            if segs == ["lib"] || segs == ["main"] {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read file");
            out.insert(segs.join("::"), paths_named(&text, &segs));
        }
    }
    out
}

/// The `crate::…` and `super::…` paths named in code (not comments, not the test module),
/// `super` resolved against the module `segs`.
fn paths_named(text: &str, segs: &[String]) -> BTreeSet<String> {
    let code = text
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    // Comments out; lines joined, as an import group may span several.
    let code: String = code
        .lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent(segs))] {
        let mut rest = code.as_str();
        while let Some(i) = rest.find(prefix) {
            let after = &rest[i + prefix.len()..];
            let path: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let mut full = base.clone();
            full.extend(path.split("::").filter(|s| !s.is_empty()).map(String::from));
            // `use crate::a::{b, c::{self, d}}`: `a`, `a::b`, `a::c`, `a::c::d` are named.
            if let Some(group) = after[path.len()..].strip_prefix('{') {
                expand(&full, group, &mut found);
            }
            found.insert(full.join("::"));
            rest = after;
        }
    }
    found
}

/// Adds the paths of a `{…}` import group (its text from after the `{`) under `base`.
/// Returns the bytes consumed, up to and including the matching `}`.
fn expand(base: &[String], group: &str, found: &mut BTreeSet<String>) -> usize {
    let mut item = String::new();
    let mut i = 0;
    let bytes = group.as_bytes();
    let flush = |item: &mut String, found: &mut BTreeSet<String>| {
        let name = item.trim().trim_end_matches("::").to_owned();
        let name = name.split_whitespace().next().unwrap_or_default();
        if !name.is_empty() && name != "self" {
            let mut p = base.to_vec();
            p.extend(name.split("::").map(String::from));
            found.insert(p.join("::"));
        }
        item.clear();
    };
    while i < bytes.len() {
        match bytes[i] {
            b'{' => {
                let mut inner = base.to_vec();
                inner.extend(
                    item.trim()
                        .trim_end_matches("::")
                        .split("::")
                        .filter(|s| !s.is_empty())
                        .map(String::from),
                );
                found.insert(inner.join("::"));
                i += 1 + expand(&inner, &group[i + 1..], found);
                item.clear();
                continue;
            }
            b'}' => {
                flush(&mut item, found);
                return i + 1;
            }
            b',' => flush(&mut item, found),
            c => item.push(char::from(c)),
        }
        i += 1;
    }
    flush(&mut item, found);
    i
}

/// The module `super` names from a file of module `segs`.
fn parent(segs: &[String]) -> Vec<String> {
    segs[..segs.len().saturating_sub(1)].to_vec()
}

/// The longest known module a path starts with.
fn module_of<'a>(path: &str, known: &'a BTreeMap<String, BTreeSet<String>>) -> Option<&'a str> {
    let segs: Vec<&str> = path.split("::").collect();
    (1..=segs.len()).rev().find_map(|n| {
        known
            .get_key_value(&segs[..n].join("::"))
            .map(|(k, _)| k.as_str())
    })
}

fn layer(module: &str) -> usize {
    let top = module.split("::").next().unwrap_or_default();
    LAYERS
        .iter()
        .position(|l| l.contains(&top))
        .unwrap_or_else(|| panic!("module {top} is in no layer: add it to LAYERS and lib.rs"))
}

/// Module → the other modules it uses.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules();
    mods.iter()
        .map(|(m, paths)| {
            let deps = paths
                .iter()
                .filter_map(|p| module_of(p, &mods))
                .filter(|d| *d != m && !m.starts_with(&format!("{d}::")))
                .map(String::from)
                .collect();
            (m.clone(), deps)
        })
        .collect()
}

#[test]
fn each_module_uses_only_the_layers_below_its_own() {
    let mut wrong = Vec::new();
    for (m, deps) in graph() {
        let top = m.split("::").next().unwrap_or_default();
        for d in deps {
            let dtop = d.split("::").next().unwrap_or_default();
            if dtop != top && layer(&d) >= layer(&m) {
                wrong.push(format!("{m} uses {d}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_two_modules_import_each_other_even_around_a_loop() {
    let g = graph();
    // Depth-first search for a back edge; the stack is the loop when one is found.
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(m.to_owned());
            return Some(cycle);
        }
        if !done.insert(m.to_owned()) {
            return None;
        }
        stack.push(m.to_owned());
        for d in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, g, done, stack) {
                return Some(c);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    for m in g.keys() {
        if let Some(cycle) = visit(m, &g, &mut done, &mut Vec::new()) {
            panic!("import cycle: {}", cycle.join(" → "));
        }
    }
}

#[test]
fn the_reader_finds_imports_in_every_form() {
    let segs = vec!["serve".to_owned(), "h1".to_owned()];
    let found = paths_named(
        "use crate::wire::{\n    codec::{self, X},\n    buffers,\n};\nuse super::hyper::serve;\n// crate::app\nlet x = crate::pipeline::plan(a);\n",
        &segs,
    );
    for want in [
        "wire",
        "wire::codec",
        "wire::buffers",
        "serve::hyper::serve",
        "pipeline::plan",
    ] {
        assert!(found.contains(want), "{want} not in {found:?}");
    }
    assert!(
        !found.iter().any(|p| p.starts_with("app")),
        "a comment is not code"
    );
}
