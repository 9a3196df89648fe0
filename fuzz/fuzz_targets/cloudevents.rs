//! CloudEvents input: a structured-mode body (one event, or a batch as a
//! JSON list) decoded as the gateway does, `cloudevents::to_message` for the
//! event's topic, then `MessageIn::into_message` and the bus's `prepare`;
//! whatever is accepted must be an envelope every store can round-trip
//! (`herald_fuzz::check_message_in`), and must go out again as a CloudEvent
//! with its time and payload (`herald_fuzz::check_cloudevent`).
#![no_main]

use herald_server::cloudevents;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn one(ce: Value) {
    // The route's topic; the event's `type` must equal it, so take it from
    // there to get past that check (a mismatch is refused before anything).
    let topic = ce
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("orders.placed")
        .to_owned();
    let Ok(m) = cloudevents::to_message(&topic, ce) else {
        return;
    };
    if let Some(env) = herald_fuzz::check_message_in(&topic, m) {
        herald_fuzz::check_cloudevent(&env);
    }
}

fuzz_target!(|data: &[u8]| {
    match herald_server::extract::decode::<Value>(data) {
        Ok(Value::Array(batch)) => batch.into_iter().for_each(one),
        Ok(ce) => one(ce),
        Err(_) => {}
    }
});
