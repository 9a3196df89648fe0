//! Invariants the fuzz targets share: what must hold for anything herald's
//! decoders accept. A violated invariant panics, which libFuzzer reports as
//! a crash.

use std::collections::BTreeMap;

use herald::backend::headers::{self, Origin};
use herald::{Bus, Envelope, Limits};
use herald_server::message::MessageIn;
use serde_json::value::RawValue;

thread_local! {
    /// The bus the gateway would hand messages to: default config and limits.
    static BUS: Bus = Bus::memory();
}

/// An envelope `Envelope::from_json_with(_, limits)` accepted:
/// - it encodes (`to_json`), and the encoding decodes again under the same
///   limits to an equal envelope (the round trip the schema test promises);
/// - encoding is a fixed point (the second encoding is byte-for-byte the
///   first), so a store re-encoding what it read changes nothing;
/// - a store can read it back (`from_stored`, the widest limits);
/// - as broker headers and a body (`herald::backend::headers`, NATS and Kafka) it
///   decodes to the same envelope, but for `seq` and `attempt`, which the
///   broker gives (the round trip `headers`' module docs show).
pub fn check_envelope(env: &Envelope, limits: &Limits) {
    let json = env
        .to_json()
        .unwrap_or_else(|e| panic!("an accepted envelope does not encode: {e}\n{env:?}"));
    let text = String::from_utf8_lossy(&json);
    let again = Envelope::from_json_with(&json, limits)
        .unwrap_or_else(|e| panic!("the envelope's own encoding is refused: {e}\n{text}"));
    assert_eq!(&again, env, "the round trip changed the envelope\n{text}");
    let json2 = again.to_json().expect("encodes again");
    assert_eq!(
        json2,
        json,
        "encoding is not a fixed point\n{text}\n{}",
        String::from_utf8_lossy(&json2)
    );
    let stored = Envelope::from_stored(&json)
        .unwrap_or_else(|e| panic!("a store could not read the envelope back: {e}\n{text}"));
    assert_eq!(&stored, env, "from_stored differs\n{text}");

    // A header with a reserved name is refused by the encoder: nothing to check.
    if let Ok((names, body)) = headers::encode(env) {
        let back = headers::decode(
            env.topic().clone(),
            names.iter().map(|(n, v)| (*n, v.as_str())),
            body,
            Origin {
                time_ms: 0,
                unique: 0,
                source: "fuzz",
            },
        )
        .unwrap_or_else(|e| {
            panic!("headers::decode refused headers::encode's output: {e}\n{text}")
        });
        let back_json = back.to_json().expect("encodes");
        let (want, got) = (fields(&json), fields(&back_json));
        assert_eq!(
            got,
            want,
            "the headers round trip changed the envelope\n{text}\n{}",
            String::from_utf8_lossy(&back_json)
        );
    }
}

/// An encoded envelope's fields as their JSON text, but `seq` and `attempt`
/// (raw, so payloads are compared as text: a number `serde_json::Value`
/// cannot hold is still valid JSON).
fn fields(json: &[u8]) -> BTreeMap<String, String> {
    let map: BTreeMap<String, Box<RawValue>> = serde_json::from_slice(json).expect("an object");
    map.into_iter()
        .filter(|(k, _)| k != "seq" && k != "attempt")
        .map(|(k, v)| (k, v.get().to_owned()))
        .collect()
}

/// A message a client sent (HTTP body, WebSocket frame, CloudEvent) for
/// `topic`: whatever `into_message` and the bus's `prepare` accept must be
/// an envelope every store can encode and decode (see [`check_envelope`]).
/// Returns the envelope the bus would append.
pub fn check_message_in(topic: &str, m: MessageIn) -> Option<Envelope> {
    let _ = m.payload_len();
    let message = m.into_message(topic).ok()?;
    let mut envelopes = BUS.with(|bus| bus.prepare([message])).ok()?;
    assert_eq!(envelopes.len(), 1);
    let env = envelopes.remove(0);
    check_envelope(&env, &Limits::default());
    Some(env)
}

/// An envelope sent to a subscription opened with `"format":
/// "cloudevents"` (`cloudevents::from_envelope`) keeps its time and payload
/// (once lost for a payload with a number `serde_json::Value` cannot hold,
/// such as `1e400`: `regressions/README.md`).
pub fn check_cloudevent(env: &Envelope) {
    let ce = herald_server::cloudevents::from_envelope(env);
    let fields: std::collections::BTreeMap<String, Box<serde_json::value::RawValue>> =
        serde_json::from_str(ce.get()).expect("a CloudEvent is a JSON object");
    assert!(
        fields.get("time").is_some_and(|t| t.get().starts_with('"')),
        "no time in the CloudEvent {}",
        ce.get()
    );
    let data = fields.get("data").or_else(|| fields.get("data_base64"));
    assert!(
        data.is_some() || env.payload().is_null(),
        "the CloudEvent {} lost the payload of {env:?}",
        ce.get()
    );
}
