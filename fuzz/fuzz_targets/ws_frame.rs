//! The WebSocket frame decoder: `herald_server::ws::ClientFrame::parse` on
//! arbitrary text, then what the connection does with a decoded frame
//! before it touches the bus: patterns and topics checked, publish and call
//! messages turned into envelopes (`herald_fuzz::check_message_in`), reply
//! payloads and error codes read. Published envelopes must also go out as
//! CloudEvents intact (`herald_fuzz::check_cloudevent`).
#![no_main]

use herald::{ErrorCode, Pattern, Payload, Topic};
use herald_server::ws::ClientFrame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(frame) = ClientFrame::parse(text) else {
        return;
    };
    let _ = frame.is_request();
    match frame {
        ClientFrame::Subscribe(f) => {
            if let Ok(p) = Pattern::new(&f.pattern) {
                if p.is_literal() {
                    let topic = Topic::new(&f.pattern).expect("a literal pattern is a topic");
                    assert!(p.matches(&topic));
                }
            }
        }
        ClientFrame::Handle(f) => {
            let _ = Topic::new(&f.topic);
        }
        ClientFrame::Publish(f) => {
            for m in f.messages {
                let env = herald_fuzz::check_message_in(&f.topic, m);
                if let Some(env) = env {
                    herald_fuzz::check_cloudevent(&env);
                }
            }
        }
        ClientFrame::Call(f) => {
            herald_fuzz::check_message_in(&f.topic, f.message);
        }
        ClientFrame::Reply(f) => {
            if let Some(p) = f.payload {
                Payload::from_json_text(String::from(Box::<str>::from(p)))
                    .expect("a raw JSON value is a JSON payload");
            }
            if let Some(e) = f.error {
                let _ = e.code.parse::<ErrorCode>();
            }
        }
        ClientFrame::Unsubscribe(_)
        | ClientFrame::Ack(_)
        | ClientFrame::Nack(_)
        | ClientFrame::Term(_) => {}
    }
});
