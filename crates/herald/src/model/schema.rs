//! The JSON Schema of the wire envelope.
//!
//! Owns the generation of `schema/envelope.v1.json` from
//! [`WireEnvelope`](crate::model::envelope::WireEnvelope), the type the decoder reads,
//! so the schema and the decoder cannot drift apart unnoticed (a test compares
//! the generated schema with the checked-in file). Validation rules the
//! schema language cannot state — the id is a v7 UUID whose time equals
//! `time`, a topic's segment rules beyond its pattern — live in the decoder.

use crate::model::envelope::WireEnvelope;

/// The `$id` of envelope v1's schema.
pub const ENVELOPE_V1_ID: &str = "https://herald.dev/schema/envelope.v1.json";

/// The JSON Schema (draft 2020-12) of envelope v1, as checked in at
/// `schema/envelope.v1.json`.
///
/// ```
/// let schema = herald::schema::envelope_v1();
/// let required = schema["required"].as_array().unwrap();
/// assert!(required.iter().any(|f| f == "correlation_id"));
/// ```
pub fn envelope_v1() -> serde_json::Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(WireEnvelope))
        .expect("a generated schema is valid JSON");
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("$id".into(), ENVELOPE_V1_ID.into());
    }
    schema
}

/// [`envelope_v1`] as the pretty-printed text of the checked-in file.
pub fn envelope_v1_text() -> String {
    let mut text = serde_json::to_string_pretty(&envelope_v1()).expect("JSON values serialize");
    text.push('\n');
    text
}
