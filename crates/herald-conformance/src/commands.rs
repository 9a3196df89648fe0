//! Commands (DESIGN.md §4.9): one handler per topic; `call` returns the
//! response, `NOT_FOUND`, `TIMEOUT` or the handler's error.

use std::time::Duration;

use herald::{Error, ErrorCode, Kind, Payload};

use crate::support::numbered;
use crate::Harness;

/// A second handler on a topic is `DUPLICATE` until the first unregisters.
pub async fn one_handler_per_topic(h: &Harness) {
    let bus = h.bus().await;
    let first = bus
        .handle_command("conf.cmd.one", |_| async { Payload::json(&1) })
        .unwrap();
    let err = bus
        .handle_command("conf.cmd.one", |_| async { Payload::json(&2) })
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Duplicate);
    let answer = |bus: herald::Bus| async move {
        let resp = bus.call(numbered("conf.cmd.one", 0)).await.unwrap();
        resp.decode::<u32>().unwrap()
    };
    assert_eq!(answer(bus.clone()).await, 1);
    assert!(first.unregister());
    let err = bus.call(numbered("conf.cmd.one", 0)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
    bus.handle_command("conf.cmd.one", |_| async { Payload::json(&2) })
        .unwrap();
    assert_eq!(answer(bus.clone()).await, 2);
    assert!(bus
        .handle_command("Not A Topic", |_| async { Payload::json(&0) })
        .is_err());
}

/// The four outcomes of a call.
pub async fn call_returns_response_not_found_timeout_or_error(h: &Harness) {
    let bus = h.bus().await;
    bus.handle_command("conf.cmd.double", |req| async move {
        let n: serde_json::Value = req.decode()?;
        Payload::json(&(n["n"].as_u64().unwrap_or(0) * 2))
    })
    .unwrap();
    bus.handle_command("conf.cmd.slow", |_| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Payload::json(&0)
    })
    .unwrap();
    bus.handle_command("conf.cmd.fail", |_| async {
        Err::<Payload, _>(Error::new(ErrorCode::Forbidden, "not yours"))
    })
    .unwrap();

    let cmd = numbered("conf.cmd.double", 21);
    let resp = bus.call(cmd).await.unwrap();
    assert_eq!(resp.decode::<u64>().unwrap(), 42);
    assert_eq!(resp.kind(), Kind::Response);
    assert_eq!(resp.topic().as_str(), "conf.cmd.double");
    assert!(
        resp.causation_id().is_some(),
        "the response names the command"
    );

    let err = bus.call(numbered("conf.cmd.none", 1)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);

    let err = bus
        .call(numbered("conf.cmd.slow", 1))
        .timeout(Duration::from_millis(20))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout);
    assert!(err.correlation_id().is_some());

    let err = bus.call(numbered("conf.cmd.fail", 1)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Forbidden);
    assert_eq!(err.message(), "not yours");
}

/// A handler that panics is an `INTERNAL` error for its caller; the bus and
/// the handler stay usable.
pub async fn panicking_handler_is_internal_not_a_crash(h: &Harness) {
    let bus = h.bus().await;
    bus.handle_command("conf.cmd.panic", |req| async move {
        let n: serde_json::Value = req.decode()?;
        if n["n"] == 0 {
            panic!("boom");
        }
        Payload::json(&n["n"])
    })
    .unwrap();
    let err = bus.call(numbered("conf.cmd.panic", 0)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Internal);
    assert!(err.message().contains("boom"), "{}", err.message());
    let ok = bus.call(numbered("conf.cmd.panic", 5)).await.unwrap();
    assert_eq!(ok.decode::<u64>().unwrap(), 5);
}
