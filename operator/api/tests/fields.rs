//! No field without effect: every leaf field under `spec` of every CRD is listed in
//! `docs/fields.md` with the tests that prove its effect, and every test named there exists.
//!
//! The table format (also described at the top of docs/fields.md):
//!
//! ```text
//! | Field | Effect | Proving test(s) |
//! |---|---|---|
//! | `Route.spec.rules[].timeouts.request` | … | `tests/operator: name`; `unit index::tests::name` |
//! ```
//!
//! * Field cell: one or more backticked paths. A path is a leaf (`Kind.spec.a[].b`); `X.*`
//!   stands for every leaf under the object `X`. Arrays of objects are walked as `[]`; arrays of
//!   scalars, maps (`additionalProperties`) and scalars are leaves.
//! * Proving cell: backticked references, `<where>: <name>` or `<where> <path>::<name>`:
//!   `tests/<suite>: <name>` — an end-to-end test registered in `tests/tests/<suite>.rs` (or its
//!   `tests/tests/<suite>/` modules) by name (also as a case of a `format!("prefix{…}")`-named
//!   table, such as `tests/foundation: rejects_<case>`) or as `fn <name>`;
//!   `proxy tests/<suite>: <name>` — `fn <name>` in the proxy crate's `sidecar/tests/`;
//!   `unit <module path>::<name>` — `fn <name>` in the operator crates (`operator/`);
//!   `proxy <module path>::<name>` — `fn <name>` in the proxy crate (`sidecar/`). The module
//!   path must be where the function is (see [`test_paths`]), so a moved test is caught.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use portico_api::crds;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every leaf field under `spec` of every CRD, as `Kind.spec.a[].b`.
fn leaves() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for crd in crds::all() {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema as JSON");
        let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
        assert!(
            spec.is_object(),
            "{} has no spec schema",
            crd.spec.names.kind
        );
        walk(&format!("{}.spec", crd.spec.names.kind), spec, &mut out);
    }
    out
}

fn walk(path: &str, schema: &Value, out: &mut BTreeSet<String>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            walk(&format!("{path}.{name}"), sub, out);
        }
        return;
    }
    let items = schema.get("items");
    if let Some(items) = items.filter(|i| i.get("properties").is_some()) {
        walk(&format!("{path}[]"), items, out);
        return;
    }
    out.insert(path.to_owned());
}

/// One row of the table.
struct Row {
    line: usize,
    fields: Vec<String>,
    tests: Vec<String>,
}

/// The backticked parts of a table cell.
fn ticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn rows(doc: &str) -> Vec<Row> {
    let mut out = Vec::new();
    let mut in_table = false;
    for (i, line) in doc.lines().enumerate() {
        let line = line.trim();
        if line.starts_with("| Field | Effect | Proving test(s) |") {
            in_table = true;
            continue;
        }
        if !in_table || line.starts_with("|---") {
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").collect();
        assert_eq!(
            cells.len(),
            3,
            "docs/fields.md:{}: a row has 3 cells separated by \" | \"",
            i + 1
        );
        out.push(Row {
            line: i + 1,
            fields: ticked(cells[0]),
            tests: ticked(cells[2]),
        });
    }
    out
}

/// Every `.rs` file under `dir`, skipping build output.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if p.is_dir() && name != "target" && name != ".git" {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Whether a source file under `dirs` defines `fn name` (or, with `registered`, names the test
/// as a string, as the end-to-end harness registers them).
fn defined(dirs: &[PathBuf], name: &str, registered: bool) -> bool {
    let mut files = Vec::new();
    for d in dirs {
        if d.is_file() {
            files.push(d.clone());
        } else {
            rust_files(d, &mut files);
        }
    }
    let fn_def = format!("fn {name}(");
    files.iter().any(|f| {
        std::fs::read_to_string(f)
            .is_ok_and(|text| text.contains(&fn_def) || (registered && registers(&text, name)))
    })
}

/// Whether a harness suite's source registers test `name`: as the literal `"name"`, or as a
/// case `"rest"` of a table whose tests are named `format!("prefix{…}")` with
/// `name == prefix + rest` (as `tests/foundation`'s `rejects_…` admission cases are).
fn registers(text: &str, name: &str) -> bool {
    if text.contains(&format!("\"{name}\"")) {
        return true;
    }
    text.match_indices("format!(\"").any(|(at, open)| {
        let rest = &text[at + open.len()..];
        let prefix = rest.split('{').next().unwrap_or_default();
        !prefix.is_empty()
            && !prefix.contains('"')
            && name
                .strip_prefix(prefix)
                .is_some_and(|case| text.contains(&format!("\"{case}\"")))
    })
}

/// The test a reference names, or why the reference is malformed or the test missing.
fn check_reference(reference: &str) -> Result<String, String> {
    let root = repo();
    if let Some((scope, name)) = reference.split_once(": ") {
        let name = name.trim();
        let (dirs, registered) = if let Some(suite) = scope.strip_prefix("proxy tests/") {
            (
                vec![
                    root.join(format!("sidecar/tests/{suite}.rs")),
                    root.join(format!("sidecar/tests/{suite}")),
                ],
                false,
            )
        } else if let Some(suite) = scope.strip_prefix("tests/") {
            (
                vec![
                    root.join(format!("tests/tests/{suite}.rs")),
                    root.join(format!("tests/tests/{suite}")),
                ],
                true,
            )
        } else {
            return Err(format!("`{reference}`: unknown scope {scope:?}"));
        };
        return if defined(&dirs, name, registered) {
            Ok(name.to_owned())
        } else {
            Err(format!("`{reference}`: no test {name:?} in {scope}"))
        };
    }
    let Some((scope, path)) = reference.split_once(' ') else {
        return Err(format!(
            "`{reference}`: not `<where>: <name>` nor `<where> <path>::<name>`"
        ));
    };
    let dir = match scope {
        "unit" => root.join("operator"),
        "proxy" => root.join("sidecar"),
        _ => return Err(format!("`{reference}`: unknown scope {scope:?}")),
    };
    let path = path.trim();
    let name = path.rsplit("::").next().unwrap_or(path);
    let found = test_paths(&dir, name);
    if found.iter().any(|p| p == path) {
        Ok(name.to_owned())
    } else if found.is_empty() {
        Err(format!("`{reference}`: no fn {name} in {scope} code"))
    } else {
        Err(format!(
            "`{reference}`: fn {name} is at {}",
            found.join(", ")
        ))
    }
}

/// The module paths of every `fn name` under `dir`, as a reader would look for them: relative
/// to the crate's `src/` (`route::router::tests::name`; `mod.rs`, `lib.rs` and `main.rs` name
/// their directory or the crate), or to its `tests/` for an integration test
/// (`fields::name`). `tests` is added when the function follows an inline `mod tests {`.
fn test_paths(dir: &Path, name: &str) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    let fn_def = format!("fn {name}(");
    let mut out = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let Some(at) = text.find(&fn_def) else {
            continue;
        };
        let parts: Vec<String> = f
            .with_extension("")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        // The last `src` or `tests` directory (not the file itself: `index/tests.rs`).
        let dirs = &parts[..parts.len().saturating_sub(1)];
        let Some(base) = dirs.iter().rposition(|p| p == "src" || p == "tests") else {
            continue;
        };
        let mut module: Vec<&str> = parts[base + 1..]
            .iter()
            .map(String::as_str)
            .filter(|p| !["mod", "lib", "main"].contains(p))
            .collect();
        if text[..at]
            .lines()
            .any(|l| l.trim_start().starts_with("mod tests {"))
        {
            module.push("tests");
        }
        module.push(name);
        out.push(module.join("::"));
    }
    out
}

#[test]
fn every_spec_field_is_listed_in_docs_fields_md_with_tests_that_exist() {
    let doc = std::fs::read_to_string(repo().join("docs/fields.md")).expect("docs/fields.md");
    let leaves = leaves();
    let rows = rows(&doc);
    assert!(!rows.is_empty(), "docs/fields.md has no field table");
    let mut problems = Vec::new();
    let mut covered = BTreeSet::new();
    for row in &rows {
        if row.fields.is_empty() {
            problems.push(format!("line {}: no backticked field path", row.line));
        }
        for field in &row.fields {
            let matched: Vec<&String> = match field.strip_suffix(".*") {
                Some(prefix) => leaves
                    .iter()
                    .filter(|l| {
                        l.strip_prefix(prefix)
                            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with("[]."))
                    })
                    .collect(),
                None => leaves.iter().filter(|l| *l == field).collect(),
            };
            if matched.is_empty() {
                problems.push(format!(
                    "line {}: `{field}` is not a field of the schema (a leaf, or `<object>.*`)",
                    row.line
                ));
            }
            covered.extend(matched.into_iter().cloned());
        }
        if row.tests.is_empty() {
            problems.push(format!("line {}: no proving test", row.line));
        }
        let mut names = Vec::new();
        for t in &row.tests {
            match check_reference(t) {
                Ok(name) => names.push(name),
                Err(e) => problems.push(format!("line {}: {e}", row.line)),
            }
        }
    }
    for leaf in leaves.difference(&covered) {
        problems.push(format!("`{leaf}` is not listed"));
    }
    assert!(
        problems.is_empty(),
        "docs/fields.md does not match the CRDs ({} problems):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

#[test]
fn the_walk_finds_nested_array_and_map_leaves() {
    let leaves = leaves();
    for leaf in [
        "Route.spec.rules[].timeouts.request",
        "Route.spec.rules[].filters[].requestMirror.backendRef.port",
        "Route.spec.hostnames",
        "Gateway.spec.listeners[].allowedRoutes.selector",
        "ServicePolicy.spec.targetRef.name",
    ] {
        assert!(leaves.contains(leaf), "{leaf} missing from {leaves:#?}");
    }
    assert!(leaves.iter().all(|l| l.split('.').nth(1) == Some("spec")));
}

/// The schema node at a `Kind.spec.a[].b` path.
fn node(path: &str) -> Value {
    let (kind, rest) = path.split_once(".spec").expect("Kind.spec path");
    let crd = crds::all()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .expect("kind");
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema");
    let mut at = schema["openAPIV3Schema"]["properties"]["spec"].clone();
    for part in rest.split('.').filter(|p| !p.is_empty()) {
        let (name, array) = match part.strip_suffix("[]") {
            Some(n) => (n, true),
            None => (part, false),
        };
        at = at["properties"][name].clone();
        if array {
            at = at["items"].clone();
        }
    }
    at
}

/// Fields kept for the Gateway API's shape that admit one value only: the schema refuses any
/// other, so a user cannot write a value that would be ignored.
#[test]
fn single_valued_fields_admit_only_their_one_value() {
    for path in [
        "Route.spec.rules[].backendRefs[].kind",
        "Route.spec.rules[].aggregate.backends[].kind",
        "Route.spec.rules[].filters[].requestMirror.backendRef.kind",
        "ServicePolicy.spec.targetRef.kind",
    ] {
        assert_eq!(node(path)["enum"], serde_json::json!(["Service"]), "{path}");
    }
    assert_eq!(node("ServicePolicy.spec.targetRef.group")["maxLength"], 0);
}
