//! `herald.toml`: one configuration file for a service and for `herald
//! serve` alike.
//!
//! Owns reading the file into `HERALD_*` keys ([`flatten`]) and installing
//! them as the file layer beneath the environment ([`load`]), so every
//! `from_env` of the bus, the delivery settings and the stores sees them:
//! code over the environment over the file over the defaults, with each
//! value's origin reported by `herald::config::origin` (and `herald
//! config`). Does not own what a value means: that is each config's.
//!
//! In the file, `key = value` at the top is `HERALD_KEY`, `[pg] schema = …`
//! is `HERALD_PG_SCHEMA`, and an array of tables (`[[tokens]]`) is its key
//! as a JSON list (`HERALD_TOKENS`, as the environment gives it).

use std::path::Path;

use herald::config::{invalid, KeySpec};
use herald::{Error, Result};

/// The variable naming the file [`crate::bus_from_env`] and
/// [`crate::Store::from_env`] load when it is set.
pub const CONFIG_FILE_KEY: &str = "HERALD_CONFIG";

/// Read `path` (TOML) and install its values beneath the environment, each
/// checked to be one of `keys`. A key herald does not know, or a value that
/// is not a string, number or boolean, is a `VALIDATION` error naming it;
/// nothing is installed then.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("herald.toml");
/// std::fs::write(&path, "max_retry_attempts = 6\n[sqlite]\nsynchronous = \"normal\"\n").unwrap();
/// herald_store::file::load(&path, &herald_store::keys()).unwrap();
/// assert_eq!(herald::config::env("HERALD_MAX_RETRY_ATTEMPTS").as_deref(), Some("6"));
/// ```
pub fn load(path: &Path, keys: &[&KeySpec]) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        invalid(
            CONFIG_FILE_KEY,
            path.display(),
            &format!("a readable TOML file ({e})"),
        )
    })?;
    let values = flatten(&text, keys)
        .map_err(|e| Error::validation(format!("{}: {}", path.display(), e.message())))?;
    herald::config::set_file_values(path.display().to_string(), values);
    Ok(())
}

/// `herald.toml` text as `HERALD_*` keys (each one of `keys`) and their
/// values.
pub fn flatten(text: &str, keys: &[&KeySpec]) -> Result<Vec<(String, String)>> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| Error::validation(format!("not TOML: {e}")))?;
    let key_of = |name: &str| -> Result<String> {
        let key = format!("HERALD_{}", name.to_ascii_uppercase().replace('-', "_"));
        match keys.iter().any(|k| k.key == key) {
            true => Ok(key),
            false => Err(Error::validation(format!(
                "unknown setting `{name}` ({key}); `herald config` lists them"
            ))),
        }
    };
    let mut out = Vec::new();
    for (name, value) in &table {
        match value {
            toml::Value::Table(inner) => {
                for (k, v) in inner {
                    out.push((key_of(&format!("{name}_{k}"))?, scalar(name, k, v)?));
                }
            }
            toml::Value::Array(items)
                if !items.is_empty() && items.iter().all(|i| i.is_table()) =>
            {
                let json = serde_json::to_string(value)
                    .map_err(|e| Error::validation(format!("{name}: {e}")))?;
                out.push((key_of(name)?, json));
            }
            v => out.push((key_of(name)?, scalar("", name, v)?)),
        }
    }
    Ok(out)
}

fn scalar(table: &str, name: &str, v: &toml::Value) -> Result<String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        _ => Err(Error::validation(format!(
            "setting `{}{name}` must be a string, number or boolean",
            if table.is_empty() {
                String::new()
            } else {
                format!("{table}.")
            }
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald::ErrorCode;

    #[test]
    fn the_file_flattens_to_herald_keys() {
        let v = flatten(
            r#"
            store = "sqlite://app.db"
            max_deliver = 7
            [sqlite]
            synchronous = "normal"
            "#,
            &crate::keys(),
        )
        .unwrap();
        let get = |k: &str| v.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(get("HERALD_STORE").as_deref(), Some("sqlite://app.db"));
        assert_eq!(get("HERALD_MAX_DELIVER").as_deref(), Some("7"));
        assert_eq!(get("HERALD_SQLITE_SYNCHRONOUS").as_deref(), Some("normal"));
    }

    #[test]
    fn unknown_keys_and_bad_toml_are_validation_errors() {
        let keys = crate::keys();
        let e = flatten("max_delivr = 5", &keys).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Validation);
        assert!(e.to_string().contains("max_delivr"), "{e}");
        assert_eq!(
            flatten("store = ", &keys).unwrap_err().code(),
            ErrorCode::Validation
        );
        let e = flatten("store = [1, 2]", &keys).unwrap_err();
        assert!(e.to_string().contains("store"), "{e}");
        // A server's key is not a library's.
        let e = flatten("listen = \"0.0.0.0:1\"", &keys).unwrap_err();
        assert!(e.to_string().contains("HERALD_LISTEN"), "{e}");
    }
}
