//! What operators read off a store: its topics, a topic's events page by
//! page, and each consumer group's offset and lag (the server's topics,
//! replay and groups endpoints stand on these).

use std::future::Future;
use std::time::Duration;

use herald::{Bus, GroupInfo, StartPosition};

use crate::support::{number, numbered, recv};
use crate::Harness;

/// Poll `read` until `done` holds of its answer, for state other tasks or
/// processes settle (group offsets); fails after 30 s with the last answer.
async fn eventually<T: std::fmt::Debug, F, Fut>(mut read: F, done: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = read().await;
        if done(&got) {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reached within 30 s; last: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every topic with events is listed with its last `seq`.
pub async fn topics_list_their_last_seq(h: &Harness) {
    let bus = h.bus().await;
    bus.publish((1..=3).map(|i| numbered("conf.inspect.a", i)))
        .await
        .unwrap();
    bus.publish((1..=2).map(|i| numbered("conf.inspect.b", i)))
        .await
        .unwrap();
    let topics = bus.topics().await.unwrap();
    let ours: Vec<(String, u64)> = topics
        .iter()
        .filter(|t| t.topic.as_str().starts_with("conf.inspect."))
        .map(|t| (t.topic.to_string(), t.last_seq))
        .collect();
    assert_eq!(
        ours,
        [
            ("conf.inspect.a".to_owned(), 3),
            ("conf.inspect.b".to_owned(), 2)
        ],
        "sorted by name, each with its last seq"
    );
}

/// Replay reads pages from a `seq` or a time, and nothing from `Latest` or
/// past the end; it leaves groups alone.
pub async fn replay_reads_pages_by_seq_and_time(h: &Harness) {
    let bus = h.bus().await;
    if !Harness::requires(
        &bus,
        "replay pages",
        |f| f.retains_history,
        "retains_history",
    ) {
        return;
    }
    let topic = "conf.inspect.pages";
    let mut group = bus.subscribe_raw(topic).group("pager").await.unwrap();
    bus.publish((1..=6).map(|i| numbered(topic, i)))
        .await
        .unwrap();
    let cut = chrono::DateTime::from_timestamp_millis(chrono::Utc::now().timestamp_millis() + 1)
        .expect("in range");
    while chrono::Utc::now() < cut {
        tokio::task::yield_now().await;
    }
    bus.publish((7..=10).map(|i| numbered(topic, i)))
        .await
        .unwrap();

    let seqs =
        |page: &[herald::Envelope]| page.iter().map(|e| e.seq().unwrap()).collect::<Vec<_>>();
    let mut pages = Vec::new();
    let mut from = 1;
    loop {
        let page = bus
            .replay(topic, StartPosition::Seq(from), 4)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        from = page.last().unwrap().seq().unwrap() + 1;
        pages.push(seqs(&page));
    }
    assert_eq!(pages, [vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9, 10]]);
    let all = bus
        .replay(topic, StartPosition::Earliest, 100)
        .await
        .unwrap();
    assert_eq!(seqs(&all), (1..=10).collect::<Vec<_>>());
    let payloads: Vec<u64> = all
        .iter()
        .map(|e| {
            e.decode::<serde_json::Value>().unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(payloads, (1..=10).collect::<Vec<_>>(), "payloads intact");
    let later = bus
        .replay(topic, StartPosition::Time(cut), 100)
        .await
        .unwrap();
    assert_eq!(seqs(&later), [7, 8, 9, 10]);
    assert!(bus
        .replay(topic, StartPosition::Latest, 100)
        .await
        .unwrap()
        .is_empty());
    assert!(bus
        .replay(topic, StartPosition::Seq(11), 100)
        .await
        .unwrap()
        .is_empty());
    assert!(bus
        .replay("conf.inspect.never", StartPosition::Earliest, 100)
        .await
        .unwrap()
        .is_empty());

    let d = recv(&mut group).await;
    assert_eq!(number(&d), 1, "the group still starts at the beginning");
    d.ack().await.unwrap();
}

fn standing(groups: &[GroupInfo], name: &str, topic: &str) -> Option<(u64, u64, u64)> {
    groups
        .iter()
        .find(|g| g.name == name)?
        .topics
        .iter()
        .find(|t| t.topic.as_str() == topic)
        .map(|t| (t.acked_through, t.last_seq, t.lag))
}

/// A group is listed with the patterns it follows and, per topic, the
/// `seq` it has settled through and how many events it has not settled.
pub async fn groups_report_offset_and_lag(h: &Harness) {
    let bus = h.bus().await;
    let topic = "conf.inspect.lag";
    let mut sub = bus.subscribe_raw(topic).group("lagger").await.unwrap();
    bus.publish((1..=5).map(|i| numbered(topic, i)))
        .await
        .unwrap();
    let read = |bus: &Bus| {
        let bus = bus.clone();
        move || {
            let bus = bus.clone();
            async move { bus.groups().await.unwrap() }
        }
    };
    let groups = eventually(read(&bus), |g: &Vec<GroupInfo>| {
        standing(g, "lagger", topic) == Some((0, 5, 5))
    })
    .await;
    let lagger = groups.iter().find(|g| g.name == "lagger").unwrap();
    assert_eq!(lagger.patterns, [topic.to_owned()]);
    assert_eq!(lagger.lag(), 5);

    for expected in 1..=2 {
        let d = recv(&mut sub).await;
        assert_eq!(number(&d), expected);
        d.ack().await.unwrap();
    }
    eventually(read(&bus), |g: &Vec<GroupInfo>| {
        standing(g, "lagger", topic) == Some((2, 5, 3))
    })
    .await;
    for _ in 3..=5 {
        recv(&mut sub).await.ack().await.unwrap();
    }
    eventually(read(&bus), |g: &Vec<GroupInfo>| {
        standing(g, "lagger", topic) == Some((5, 5, 0))
    })
    .await;
}
