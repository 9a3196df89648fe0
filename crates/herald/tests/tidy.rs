//! Tidy checks over the workspace's sources and its map, in the manner of
//! rust-analyzer's `xtask/src/tidy.rs`: they fail the build when the code
//! and what is written about its shape drift apart.
//!
//! - Every Rust source file opens with a `//!` doc saying what it owns
//!   (trybuild's `tests/ui` cases, which are compiler input, excepted).
//! - `ARCHITECTURE.md` names no source file and no type that is gone.
//! - `herald/src` keeps its layers (`model` → `config` → `observe` →
//!   `backend` → `memory` → `runtime` → `bus` → `testing`, as `lib.rs`
//!   lists them): a module imports only from its own folder and the folders
//!   below it, through the real paths or the root's re-exports, and no
//!   modules import each other in a circle.
//! - The backend crates reach herald through `herald::backend`, the root's
//!   items and `herald::config`, never through another module; each has
//!   the same layout (`conn` → `log` → `tail`, `group` → `dead_letters` →
//!   `inspect` → `transport`, `store`) and no import circle.
//! - Every builder's `start` says what a start means in the same words,
//!   which point at `StartPosition` (issue 22 item 19: one said "where to
//!   start", another "where a new group starts").
//!
//! Code inside `#[cfg(test)]` modules and comments is not an import.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

/// The layers of `herald/src`, bottom first; a module may import its own
/// layer and those before it.
const LAYERS: &[&str] = &[
    "model", "config", "observe", "backend", "memory", "runtime", "bus", "testing",
];

/// Names `ARCHITECTURE.md` may give that are not herald's own.
const FOREIGN_NAMES: &[&str] = &["Host", "MissedTickBehavior"];

/// The crates that implement `herald::Transport` on a store.
const BACKENDS: &[&str] = &[
    "herald-sqlite",
    "herald-postgres",
    "herald-nats",
    "herald-kafka",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target"
                && name != "node_modules"
                && !name.to_string_lossy().starts_with('.')
            {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The file's code as imports see it: comments blanked, and everything from
/// the first `#[cfg(test)]` on cut (test modules sit at the end of a file).
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Each `prefix::a::b::…` path in `code`, as its segments after `prefix`,
/// with `use prefix::a::{b::c, d}` groups opened into one path per item.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let needle = format!("{prefix}::");
    let mut rest = code;
    while let Some(i) = rest.find(&needle) {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + needle.len()..];
        if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            out.extend(expand(rest));
        }
    }
    out.retain(|p| !p.is_empty());
    out
}

/// The paths one path expression at the start of `s` names.
fn expand(s: &str) -> Vec<Vec<String>> {
    let s = s.trim_start();
    if let Some(group) = s.strip_prefix('{') {
        let end = matching_brace(group);
        return split_top(&group[..end])
            .into_iter()
            .flat_map(expand)
            .collect();
    }
    let (segs, rest) = segments(s);
    match rest.strip_prefix("::{") {
        Some(group) if !segs.is_empty() => {
            let end = matching_brace(group);
            split_top(&group[..end])
                .into_iter()
                .flat_map(expand)
                .map(|tail| segs.iter().cloned().chain(tail).collect())
                .collect()
        }
        _ => vec![segs],
    }
}

fn matching_brace(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    s.len()
}

fn split_top(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// The `a::b::c` segments at the start of `s`, and what follows them.
fn segments(s: &str) -> (Vec<String>, &str) {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            return (out, rest);
        }
        out.push(rest[..end].to_owned());
        match rest[end..].strip_prefix("::") {
            Some(next) if next.starts_with(|c: char| c.is_alphabetic() || c == '_') => rest = next,
            _ => return (out, &rest[end..]),
        }
    }
}

#[test]
fn every_source_file_opens_with_its_doc() {
    let mut files = Vec::new();
    for dir in ["crates", "examples", "fuzz"] {
        rust_files(&workspace().join(dir), &mut files);
    }
    assert!(files.len() > 100, "found only {} files", files.len());
    let missing: Vec<String> = files
        .iter()
        .filter(|f| !f.components().any(|c| c.as_os_str() == "ui"))
        .filter(|f| {
            let text = read(f);
            !text
                .lines()
                .find(|l| !l.trim().is_empty())
                .is_some_and(|l| l.starts_with("//!"))
        })
        .map(|f| {
            f.strip_prefix(workspace())
                .unwrap_or(f)
                .display()
                .to_string()
        })
        .collect();
    assert!(
        missing.is_empty(),
        "these files do not open with a `//!` doc saying what they own: {missing:?}"
    );
}

/// The module of `herald/src` a file is (`backend/queue`, `bus`, `lib`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let rel = rel.to_string_lossy().replace('\\', "/");
    rel.strip_suffix("/mod").unwrap_or(&rel).to_owned()
}

/// The root's re-exports: name → the module path it stands for.
fn root_reexports(lib: &str) -> HashMap<String, Vec<String>> {
    let mut out = HashMap::new();
    for stmt in lib.split(';') {
        let stmt = stmt.trim();
        let Some(body) = stmt
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#') && !l.starts_with("//"))
            .collect::<Vec<_>>()
            .join(" ")
            .strip_prefix("pub use ")
            .map(str::to_owned)
        else {
            continue;
        };
        let (base, items) = match body.find('{') {
            Some(i) => (
                body[..i].trim_end_matches("::").to_owned(),
                split_top(&body[i + 1..body.len() - 1])
                    .into_iter()
                    .map(|s| s.trim().to_owned())
                    .collect(),
            ),
            None => match body.rsplit_once("::") {
                Some((b, item)) => (b.to_owned(), vec![item.to_owned()]),
                None => continue,
            },
        };
        for item in items.into_iter().filter(|i| !i.is_empty()) {
            let mut path: Vec<String> = base.split("::").map(str::to_owned).collect();
            path.extend(item.split("::").map(str::to_owned));
            let name = path.last().cloned().unwrap_or_default();
            out.insert(name, path);
        }
    }
    out
}

/// Which modules each module of `herald/src` imports.
fn herald_imports() -> BTreeMap<String, BTreeSet<String>> {
    imports_of("herald")
}

/// Which modules each module of crate `krate` imports (the root's
/// re-exports resolved to the modules they stand for).
fn imports_of(krate: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = workspace().join("crates").join(krate).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // `tests.rs` files are `#[cfg(test)] mod tests;`: test code, not imports.
    files.retain(|f| f.file_name().is_none_or(|n| n != "tests.rs"));
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let reexports = root_reexports(&read(&src.join("lib.rs")));
    let resolve = |path: &[String]| -> Option<String> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].join("/"))
            .find(|m| modules.contains(m))
    };
    let mut graph = BTreeMap::new();
    for file in &files {
        let module = module_of(&src, file);
        let mut targets = BTreeSet::new();
        for path in paths_after(&code_of(&read(file)), "crate") {
            let path = match reexports.get(&path[0]) {
                Some(real) => real
                    .iter()
                    .cloned()
                    .chain(path[1..].iter().cloned())
                    .collect(),
                None => path,
            };
            if let Some(target) = resolve(&path) {
                if target != module {
                    targets.insert(target);
                }
            }
        }
        graph.insert(module, targets);
    }
    graph
}

fn layer_of(module: &str) -> Option<usize> {
    let top = module.split('/').next().unwrap_or(module);
    LAYERS.iter().position(|l| *l == top)
}

#[test]
fn herald_imports_only_downwards() {
    let graph = herald_imports();
    assert!(graph.len() > 30, "found only {} modules", graph.len());
    let mut upward = Vec::new();
    for (module, targets) in &graph {
        let Some(from) = layer_of(module) else {
            assert_eq!(module, "lib", "{module} is in no layer of LAYERS");
            continue;
        };
        for target in targets {
            match layer_of(target) {
                Some(to) if to <= from => {}
                _ => upward.push(format!("{module} -> {target}")),
            }
        }
    }
    assert!(upward.is_empty(), "imports that run up a layer: {upward:?}");
}

/// Groups of modules that import each other in a circle (Tarjan).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: HashMap<&'a str, usize>,
        low: HashMap<&'a str, usize>,
        stack: Vec<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a str) {
        let i = w.index.len();
        w.index.insert(v, i);
        w.low.insert(v, i);
        w.stack.push(v);
        for t in w.graph.get(v).into_iter().flatten() {
            if !w.graph.contains_key(t) {
                continue;
            }
            if !w.index.contains_key(t.as_str()) {
                visit(w, t);
                let low = w.low[v].min(w.low[t.as_str()]);
                w.low.insert(v, low);
            } else if w.stack.contains(&t.as_str()) {
                let low = w.low[v].min(w.index[t.as_str()]);
                w.low.insert(v, low);
            }
        }
        if w.low[v] == w.index[v] {
            let mut group = Vec::new();
            while let Some(t) = w.stack.pop() {
                group.push(t.to_owned());
                if t == v {
                    break;
                }
            }
            if group.len() > 1 {
                w.out.push(group);
            }
        }
    }
    let mut w = Walk {
        graph,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !w.index.contains_key(v.as_str()) {
            visit(&mut w, v);
        }
    }
    w.out
}

#[test]
fn herald_modules_import_in_no_circle() {
    let found = circles(&herald_imports());
    assert!(
        found.is_empty(),
        "modules importing each other in a circle: {found:?}"
    );
}

/// The modules every backend crate has, bottom first (ARCHITECTURE.md,
/// "One layout for every backend"): `conn` (the connection and the state
/// every part shares) → `log` → `tail`, `group` → `dead_letters` →
/// `inspect` → `transport` (the trait impls and the group-vs-tail
/// dispatch), with `store` (the public handle, opening and closing) beside
/// `transport` at the top.
const BACKEND_LAYOUT: &[&str] = &[
    "conn",
    "log",
    "tail",
    "group",
    "dead_letters",
    "inspect",
    "transport",
    "store",
];

#[test]
fn backend_crates_share_one_layout_and_import_in_no_circle() {
    for krate in BACKENDS {
        let graph = imports_of(krate);
        for module in BACKEND_LAYOUT {
            assert!(
                graph.contains_key(*module),
                "{krate} has no `{module}` module"
            );
        }
        let found = circles(&graph);
        assert!(
            found.is_empty(),
            "{krate}: modules importing each other in a circle: {found:?}"
        );
        let conn_up: Vec<_> = graph["conn"]
            .iter()
            .filter(|t| BACKEND_LAYOUT.contains(&t.as_str()) && *t != "conn")
            .collect();
        assert!(
            conn_up.is_empty(),
            "{krate}: `conn` is the bottom, yet imports {conn_up:?}"
        );
        for (module, targets) in &graph {
            for top in ["transport", "store"] {
                let allowed = module == "lib" || module == "transport" || module == "store";
                assert!(
                    allowed || !targets.contains(top),
                    "{krate}: `{module}` imports `{top}`, the top of the crate"
                );
            }
        }
    }
}

#[test]
fn the_circle_finder_finds_circles() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    let found = circles(&graph);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].len(), 3);
}

#[test]
fn paths_are_read_as_imports() {
    let code = code_of(
        "use crate::model::{envelope::Envelope, error::{Error, Result}};\n\
         // use crate::bus::Bus;\n\
         fn f() -> crate::observe::metrics::Metrics { todo() }\n\
         #[cfg(test)]\nmod tests { use crate::bus::Bus; }",
    );
    let paths = paths_after(&code, "crate");
    let joined: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        joined,
        [
            "model::envelope::Envelope",
            "model::error::Error",
            "model::error::Result",
            "observe::metrics::Metrics"
        ]
    );
}

#[test]
fn backend_crates_reach_herald_through_its_backend_module() {
    let allowed = ["backend", "config"];
    let mut stray = Vec::new();
    for krate in BACKENDS {
        let mut files = Vec::new();
        rust_files(
            &workspace().join("crates").join(krate).join("src"),
            &mut files,
        );
        assert!(!files.is_empty(), "{krate} has no sources");
        for file in files {
            for path in paths_after(&code_of(&read(&file)), "herald") {
                let root_item = path.len() == 1 || path[0].starts_with(char::is_uppercase);
                if !root_item && !allowed.contains(&path[0].as_str()) {
                    stray.push(format!("{}: herald::{}", file.display(), path.join("::")));
                }
            }
        }
    }
    assert!(
        stray.is_empty(),
        "backend crates import herald through `herald::backend`, the root's items and \
         `herald::config` only: {stray:?}"
    );
}

/// Types, traits and other items defined anywhere in the workspace.
fn defined_names() -> BTreeSet<String> {
    let mut files = Vec::new();
    for dir in ["crates", "examples", "fuzz"] {
        rust_files(&workspace().join(dir), &mut files);
    }
    let mut names = BTreeSet::new();
    for file in files {
        for line in read(&file).lines() {
            let words: Vec<&str> = line
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty())
                .collect();
            for pair in words.windows(2) {
                if matches!(
                    pair[0],
                    "struct"
                        | "enum"
                        | "trait"
                        | "type"
                        | "fn"
                        | "const"
                        | "static"
                        | "mod"
                        | "macro_rules"
                ) {
                    names.insert(pair[1].to_owned());
                }
            }
            // Enum variants: a line that is a capitalised name and then
            // `,`, `(` or `{`.
            let t = line.trim();
            if let Some(first) = words.first() {
                if t.starts_with(first) && first.starts_with(char::is_uppercase) {
                    names.insert((*first).to_owned());
                }
            }
        }
    }
    names
}

#[test]
fn the_architecture_map_names_only_what_exists() {
    let root = workspace();
    let map = read(&root.join("ARCHITECTURE.md"));
    let names = defined_names();
    let mut gone = Vec::new();
    let mut dir: Option<PathBuf> = None;
    for line in map.lines() {
        if line.starts_with("## ") {
            dir = line
                .split('`')
                .find(|s| s.starts_with("crates/") && s.ends_with("/src"))
                .map(|s| root.join(s));
        }
        let code_spans: Vec<&str> = line.split('`').skip(1).step_by(2).collect();
        for span in code_spans {
            if span.starts_with("crates/") || span.starts_with("scripts/") {
                let path = span.split_whitespace().next().unwrap_or(span);
                if !root.join(path.trim_end_matches('/')).exists() {
                    gone.push(format!("file {span}"));
                }
            } else if let Some(dir) = &dir {
                let is_file = span.ends_with(".rs") || (span.ends_with('/') && !span.contains(' '));
                if is_file
                    && line.trim_start().starts_with("- ")
                    && !dir.join(span.trim_end_matches('/')).exists()
                {
                    gone.push(format!("file {} in {}", span, dir.display()));
                }
            }
            let first = span.split("::").next().unwrap_or(span);
            let first = first.split(['<', '(']).next().unwrap_or(first);
            let type_like = first.len() > 1
                && first.starts_with(char::is_uppercase)
                && first.chars().any(char::is_lowercase)
                && first.chars().all(|c| c.is_alphanumeric());
            if type_like && !names.contains(first) && !FOREIGN_NAMES.contains(&first) {
                gone.push(format!("type {span}"));
            }
        }
    }
    assert!(
        gone.is_empty(),
        "ARCHITECTURE.md names what the code no longer has: {gone:?}"
    );
}

/// The line every `start(StartPosition)` builder's doc opens with.
const START_DOC: &str =
    "/// Where to start reading, as [`StartPosition`] says: an existing group keeps its position.";

#[test]
fn every_start_builder_says_what_a_start_means_in_the_same_words() {
    let mut files = Vec::new();
    rust_files(&workspace().join("crates"), &mut files);
    let mut builders = 0;
    for file in files {
        let text = read(&file);
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let line = line.trim();
            if !(line.starts_with("pub fn start(") && line.contains("start: StartPosition")) {
                continue;
            }
            builders += 1;
            let doc: Vec<&str> = lines[..i]
                .iter()
                .rev()
                .map(|l| l.trim())
                .take_while(|l| l.starts_with("///"))
                .collect();
            assert_eq!(
                doc.last().copied(),
                Some(START_DOC),
                "{}:{}: a `start` builder's doc opens with another line than START_DOC",
                file.display(),
                i + 1
            );
        }
    }
    assert!(builders >= 4, "found {builders} `start` builders");
}
