//! Correlation (DESIGN.md §4.10): what a handler publishes inherits the
//! handled message's `correlation_id` and gets `causation_id` = its id;
//! concurrent and nested handlers stay isolated.

use std::collections::HashMap;
use std::time::Duration;

use herald::context::{self, Context};
use herald::{current_correlation_id, Message, Payload};
use uuid::Uuid;

use crate::support::recv;
use crate::Harness;

/// An event published inside a command handler carries the command's
/// correlation and names the command as its cause; outside, there is none.
pub async fn events_published_in_a_handler_inherit_correlation(h: &Harness) {
    let bus = h.bus().await;
    assert_eq!(
        current_correlation_id(),
        None,
        "no context outside a handler"
    );
    let mut events = bus
        .subscribe_raw("conf.corr.created")
        .ephemeral()
        .await
        .unwrap();
    let inner = bus.clone();
    bus.handle_command("conf.corr.create", move |_| {
        let bus = inner.clone();
        async move {
            bus.publish(Message::new("conf.corr.created", Payload::null()))
                .await?;
            Payload::json(&current_correlation_id())
        }
    })
    .unwrap();
    let root = Uuid::now_v7();
    let resp = bus
        .call(Message::new("conf.corr.create", Payload::null()).correlation_id(root))
        .await
        .unwrap();
    assert_eq!(resp.correlation_id(), root);
    assert_eq!(
        resp.decode::<Option<Uuid>>().unwrap(),
        Some(root),
        "the handler saw the context"
    );
    let command_id = resp.causation_id().expect("response names the command");
    let event = recv(&mut events).await;
    assert_eq!(event.correlation_id(), root);
    assert_eq!(event.causation_id(), Some(command_id));
    event.ack().await.unwrap();
    assert_eq!(
        current_correlation_id(),
        None,
        "the context ends with the handler"
    );
}

/// A call made inside a handler runs in its own context (same correlation,
/// its own cause); the outer context is restored after it.
pub async fn nested_calls_get_their_own_causation(h: &Harness) {
    let bus = h.bus().await;
    let mut events = bus
        .subscribe_raw("conf.nested.>")
        .ephemeral()
        .await
        .unwrap();
    let b = bus.clone();
    bus.handle_command("conf.nested.inner", move |_| {
        let bus = b.clone();
        async move {
            bus.publish(Message::new("conf.nested.from_inner", Payload::null()))
                .await?;
            Payload::json(&Context::current().and_then(|c| c.message_id()))
        }
    })
    .unwrap();
    let b = bus.clone();
    bus.handle_command("conf.nested.outer", move |_| {
        let bus = b.clone();
        async move {
            let before = Context::current().and_then(|c| c.message_id());
            let inner = bus
                .call(Message::new("conf.nested.inner", Payload::null()))
                .await?;
            let after = Context::current().and_then(|c| c.message_id());
            assert_eq!(before, after, "outer context restored");
            bus.publish(Message::new("conf.nested.from_outer", Payload::null()))
                .await?;
            Payload::json(&(before, inner.decode::<Option<Uuid>>()?))
        }
    })
    .unwrap();
    let root = Uuid::now_v7();
    let resp = bus
        .call(Message::new("conf.nested.outer", Payload::null()).correlation_id(root))
        .await
        .unwrap();
    let (outer_id, inner_id): (Option<Uuid>, Option<Uuid>) = resp.decode().unwrap();
    let (outer_id, inner_id) = (outer_id.unwrap(), inner_id.unwrap());
    assert_ne!(outer_id, inner_id);
    assert_eq!(resp.causation_id(), Some(outer_id));
    let mut seen = HashMap::new();
    for _ in 0..2 {
        let d = recv(&mut events).await;
        seen.insert(
            d.topic().to_string(),
            (d.correlation_id(), d.causation_id()),
        );
        d.ack().await.unwrap();
    }
    assert_eq!(seen["conf.nested.from_inner"], (root, Some(inner_id)));
    assert_eq!(seen["conf.nested.from_outer"], (root, Some(outer_id)));
}

/// 100 concurrent calls, interleaving at every await: each handler sees only
/// its own correlation, and its events carry it.
pub async fn concurrent_handlers_are_isolated(h: &Harness) {
    const CALLS: usize = 100;
    let bus = h.bus().await;
    let mut events = bus
        .subscribe_raw("conf.iso.done")
        .ephemeral()
        .await
        .unwrap();
    let b = bus.clone();
    bus.handle_command("conf.iso.work", move |req| {
        let bus = b.clone();
        async move {
            let mine = req.correlation_id();
            for _ in 0..5 {
                tokio::task::yield_now().await;
                assert_eq!(
                    current_correlation_id(),
                    Some(mine),
                    "saw another handler's context"
                );
            }
            bus.publish(Message::json("conf.iso.done", &mine)?).await?;
            Ok::<_, herald::Error>(Payload::null())
        }
    })
    .unwrap();
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let id = Uuid::now_v7();
                bus.call(Message::new("conf.iso.work", Payload::null()).correlation_id(id))
                    .await
                    .unwrap();
                id
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for c in calls {
        ids.insert(c.await.unwrap());
    }
    for _ in 0..CALLS {
        let d = recv(&mut events).await;
        let claimed: Uuid = d.decode().unwrap();
        assert_eq!(
            d.correlation_id(),
            claimed,
            "event carries its own handler's correlation"
        );
        assert!(ids.remove(&claimed));
        d.ack().await.unwrap();
    }
}

/// The context survives `.await` points, and work spawned with
/// `context::spawn` publishes later with the same correlation.
pub async fn context_survives_await_and_delayed_emission(h: &Harness) {
    let bus = h.bus().await;
    let mut events = bus.subscribe_raw("conf.later.>").ephemeral().await.unwrap();
    let b = bus.clone();
    bus.handle_command("conf.later.start", move |_| {
        let bus = b.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            bus.publish(Message::new("conf.later.after_await", Payload::null()))
                .await?;
            let later = bus.clone();
            context::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                later
                    .publish(Message::new("conf.later.delayed", Payload::null()))
                    .await
                    .unwrap();
            });
            Ok::<_, herald::Error>(Payload::null())
        }
    })
    .unwrap();
    let root = Uuid::now_v7();
    let resp = bus
        .call(Message::new("conf.later.start", Payload::null()).correlation_id(root))
        .await
        .unwrap();
    let command_id = resp.causation_id().unwrap();
    // Two topics: DESIGN.md orders each topic, not one against another.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let d = recv(&mut events).await;
        seen.push(d.topic().as_str().to_owned());
        assert_eq!(
            (d.correlation_id(), d.causation_id()),
            (root, Some(command_id))
        );
        d.ack().await.unwrap();
    }
    seen.sort();
    assert_eq!(seen, ["conf.later.after_await", "conf.later.delayed"]);
}
