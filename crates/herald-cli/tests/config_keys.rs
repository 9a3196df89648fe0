//! The README's configuration tables and the key tables `herald config`
//! prints (the server's, herald's, `herald-store`'s and every store's
//! [`KeySpec`](herald::config::KeySpec)s) name the same keys with the same
//! defaults. Here, because this crate builds every store.

use std::collections::{BTreeMap, BTreeSet};

/// The keys of the README's configuration tables (`| key | default |
/// allowed |`), each with its default as written there (a key in two
/// tables keeps the later row: the library's, after `herald serve`'s).
fn readme_keys() -> BTreeMap<String, String> {
    let readme = include_str!("../../../README.md");
    let mut keys = BTreeMap::new();
    let mut in_table = false;
    for line in readme.lines() {
        if line.starts_with("| key | default | allowed |") {
            in_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        if !in_table || line.starts_with("|---") {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let default = cells.get(2).copied().unwrap_or_default().to_owned();
        for name in cells[1].split('`').filter(|c| c.starts_with("HERALD_")) {
            keys.insert(name.to_owned(), default.clone());
        }
    }
    keys
}

/// A default as both sides write it, without backticks and units.
fn normal(default: &str) -> String {
    default
        .replace('`', "")
        .replace(" (s)", "")
        .trim()
        .to_owned()
}

#[test]
fn the_readme_and_the_key_tables_name_the_same_keys() {
    let readme = readme_keys();
    assert!(readme.len() > 50, "found only {} keys", readme.len());
    let documented: BTreeSet<&str> = readme.keys().map(String::as_str).collect();
    let read: BTreeSet<&str> = herald_server::config::keys()
        .iter()
        .map(|k| k.key)
        .collect();
    let undocumented: Vec<_> = read.difference(&documented).collect();
    let unread: Vec<_> = documented.difference(&read).collect();
    assert!(
        undocumented.is_empty() && unread.is_empty(),
        "read but not in the README's tables: {undocumented:?}; in the README but not read: {unread:?}"
    );
}

#[test]
fn every_key_has_the_default_the_readme_gives() {
    let readme = readme_keys();
    let mismatched: Vec<String> = herald_server::config::keys()
        .iter()
        .filter_map(|spec| {
            let documented = readme.get(spec.key)?;
            (normal(documented) != normal(spec.default)).then(|| {
                format!(
                    "{}: README {documented:?}, table {:?}",
                    spec.key, spec.default
                )
            })
        })
        .collect();
    assert!(mismatched.is_empty(), "{mismatched:#?}");
}

#[test]
fn every_key_is_in_one_table_once_with_its_doc() {
    let keys = herald_server::config::keys();
    let mut seen = BTreeSet::new();
    for spec in &keys {
        assert!(seen.insert(spec.key), "{} is in two tables", spec.key);
        assert!(
            !spec.doc.is_empty() && !spec.allowed.is_empty(),
            "{} needs its range and doc",
            spec.key
        );
    }
}
