//! `herald.toml`: `herald_server::config::flatten` on arbitrary text, then
//! what `herald serve` does with the result: the values installed beneath
//! the environment and read by the server's and the bus's `from_env` (which
//! may refuse them, never panic). Every key flatten yields is one herald
//! knows (`config::keys()`); `HERALD_TOKENS` is read as the server reads it.
#![no_main]

use herald_server::auth::{Grant, Tokens};
use herald_server::config::{self, ServerConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(values) = config::flatten(text) else {
        return;
    };
    let known = config::keys();
    for (key, _) in &values {
        assert!(
            known.iter().any(|spec| spec.key == key),
            "flatten yielded unknown key {key}"
        );
    }
    if let Some((_, json)) = values.iter().find(|(k, _)| k == "HERALD_TOKENS") {
        // `[[tokens]]` tables arrive as JSON; a string (`TOKENS = "…"`)
        // as it is, like the environment's.
        if let Ok(grants) = serde_json::from_str::<Vec<Grant>>(json) {
            let _ = Tokens::new(grants);
        }
    }
    herald::config::set_file_values("herald.toml", values);
    let _ = ServerConfig::from_env();
    let _ = herald::Config::from_env();
});
