//! Reading the store over HTTP: topics with their rate, a topic's events
//! page by page, and consumer groups with offsets and lag.
//!
//! Owns `GET /v1/topics`, `GET /v1/topics/{topic}/events` and
//! `GET /v1/groups`, and [`Rates`]: a sampler that reads every topic's last
//! `seq` every [`SAMPLE_EVERY`] and keeps a minute of readings, so a topic's
//! rate is events per second over the last minute, whoever published them
//! (this server, other processes, plain clients of the store).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use herald::{Bus, Envelope, StartPosition, TopicInfo};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Caller, Permission};
use crate::cloudevents;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{PathParam, QueryParams};
use crate::state::AppState;

/// How often the rate sampler reads the topics.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// The window a rate is measured over.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Most events one replay page returns.
pub const MAX_PAGE: usize = 1_000;

/// Readings of one topic's last `seq`, oldest first.
type Readings = VecDeque<(Instant, u64)>;

/// Recent readings of each topic's last `seq`.
#[derive(Clone, Default)]
pub struct Rates {
    samples: Arc<Mutex<HashMap<String, Readings>>>,
}

impl Rates {
    /// Record `topics` as read at `at`, forgetting readings older than the window.
    pub fn record(&self, at: Instant, topics: &[TopicInfo]) {
        let mut samples = self.samples.lock();
        for t in topics {
            let s = samples.entry(t.topic.to_string()).or_default();
            s.push_back((at, t.last_seq));
            while s.len() > 2
                && s.front()
                    .is_some_and(|(when, _)| at.duration_since(*when) > RATE_WINDOW)
            {
                s.pop_front();
            }
        }
    }

    /// Events per second of `topic` between its oldest reading in the
    /// window and `last_seq` now; `0` with a single reading.
    pub fn rate(&self, topic: &str, now: Instant, last_seq: u64) -> f64 {
        let samples = self.samples.lock();
        match samples.get(topic).and_then(|s| s.front()) {
            Some((when, seq)) if now > *when => {
                last_seq.saturating_sub(*seq) as f64 / now.duration_since(*when).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// Sample `bus`'s topics every [`SAMPLE_EVERY`] until the bus closes.
    pub async fn run(self, bus: Bus) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tick.tick().await;
            match bus.topics().await {
                Ok(topics) => self.record(Instant::now(), &topics),
                Err(e) if e.code() == herald::ErrorCode::Unavailable => return,
                Err(e) => tracing::debug!(error = %e, "rate sampler: reading topics failed"),
            }
        }
    }
}

/// One topic.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TopicView {
    /// Its name.
    pub topic: String,
    /// Its highest `seq`.
    pub last_seq: u64,
    /// Events per second over the last minute.
    pub rate: f64,
    /// Its partitions (1 unless the store partitions topics: Kafka).
    pub partitions: u32,
}

/// Every topic with events.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TopicList {
    /// By name.
    pub topics: Vec<TopicView>,
}

/// List topics with their last `seq` and rate.
#[utoipa::path(get, path = "/v1/topics", tag = "topics",
    responses((status = 200, body = TopicList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("token" = [])))]
pub async fn topics(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<TopicList>> {
    caller.require(Permission::Admin, "topics")?;
    let now = Instant::now();
    let found = state.bus.topics().await?;
    let topics = found
        .iter()
        .map(|t| TopicView {
            topic: t.topic.to_string(),
            last_seq: t.last_seq,
            rate: state.rates.rate(t.topic.as_str(), now, t.last_seq),
            partitions: t.partitions,
        })
        .collect();
    state.rates.record(now, &found);
    Ok(Json(TopicList { topics }))
}

/// Where a page starts.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    /// From this `seq` on (default 1).
    pub from_seq: Option<u64>,
    /// From the first event created at or after this time (RFC 3339); not with `from_seq`.
    pub since: Option<DateTime<Utc>>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// One page of a topic.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Page {
    /// In `seq` order.
    #[schema(value_type = Vec<crate::openapi::EnvelopeSchema>)]
    pub events: Vec<Envelope>,
    /// `from_seq` of the next page; absent when this page reached the end.
    pub next_seq: Option<u64>,
}

/// Read a topic's retained events, page by page; groups are not touched.
/// With `Accept: application/cloudevents-batch+json` the answer is a JSON
/// list of CloudEvents, and the next page's `from_seq` is the
/// `herald-next-seq` header.
/// Payload bytes one replay page holds (past its first event): with large
/// payloads a page ends early, and `next_seq` says where to go on.
pub const PAGE_BYTES: usize = 32 * 1024 * 1024;

/// Up to `limit` events of `topic` from `from`, and the `seq` to read on
/// from when there may be more. Read in chunks that fit what is left of
/// [`PAGE_BYTES`] even at the largest payload allowed, stopping once the
/// page holds that many bytes, so a page of large events stays bounded
/// (small events come in one or a few reads).
async fn read_page(
    state: &AppState,
    topic: &str,
    mut from: StartPosition,
    limit: usize,
) -> ApiResult<(Vec<herald::Envelope>, Option<u64>)> {
    let largest = state.bus.config().limits().payload_bytes().max(1);
    let (mut events, mut bytes) = (Vec::new(), 0usize);
    loop {
        // As many as fit in what is left of the budget at the largest
        // payload (one at least): a page ends under PAGE_BYTES + one event.
        let fit = (PAGE_BYTES.saturating_sub(bytes) / largest).max(1);
        let want = fit.min(limit - events.len());
        let got = state.bus.replay(topic, from, want).await?;
        let full = got.len() == want;
        bytes += got.iter().map(|e| e.payload().len()).sum::<usize>();
        events.extend(got);
        let next = events.last().and_then(|e| e.seq()).map(|s| s + 1);
        if !full {
            return Ok((events, None));
        }
        if events.len() == limit || bytes >= PAGE_BYTES {
            return Ok((events, next));
        }
        match next {
            Some(n) => from = StartPosition::Seq(n),
            None => return Ok((events, None)),
        }
    }
}

#[utoipa::path(get, path = "/v1/topics/{topic}/events", tag = "topics",
    params(("topic" = String, Path), PageParams),
    responses((status = 200, content(
            (Page = "application/json"),
            (Vec<Object> = "application/cloudevents-batch+json"),
        )), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("token" = [])))]
pub async fn replay(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathParam(topic): PathParam<String>,
    QueryParams(page): QueryParams<PageParams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    caller.require(Permission::Subscribe, &topic)?;
    let limit = page.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::validation(format!(
            "limit={limit} is not allowed: expected 1..={MAX_PAGE}"
        )));
    }
    let from = match (page.from_seq, page.since) {
        (Some(_), Some(_)) => {
            return Err(ApiError::validation("give `from_seq` or `since`, not both"))
        }
        (Some(0), None) => {
            return Err(ApiError::validation(
                "from_seq=0 is not allowed: seqs start at 1",
            ))
        }
        (Some(n), None) => StartPosition::Seq(n),
        (None, Some(t)) => StartPosition::Time(t),
        (None, None) => StartPosition::Earliest,
    };
    let (events, next_seq) = read_page(&state, &topic, from, limit).await?;
    let wants_cloudevents = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(cloudevents::BATCH_CONTENT_TYPE));
    if !wants_cloudevents {
        return Ok(Json(Page { events, next_seq }).into_response());
    }
    let list: Vec<Box<serde_json::value::RawValue>> =
        events.iter().map(cloudevents::from_envelope).collect();
    let mut response = Json(list).into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(cloudevents::BATCH_CONTENT_TYPE),
    );
    if let Some(n) = next_seq {
        response
            .headers_mut()
            .insert("herald-next-seq", HeaderValue::from(n));
    }
    Ok(response)
}

/// A group's standing on one topic.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GroupTopicView {
    /// The topic.
    pub topic: String,
    /// Every event with `seq` at or below this is settled for the group.
    pub acked_through: u64,
    /// The topic's highest `seq`.
    pub last_seq: u64,
    /// Events not settled yet.
    pub lag: u64,
    /// Per partition, on stores that partition topics (Kafka); absent on
    /// the others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionView>,
}

/// A group's standing on one partition of a topic.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PartitionView {
    /// The partition.
    pub partition: u32,
    /// The group's committed offset: every event of the partition up to it
    /// is settled.
    pub acked_through: u64,
    /// The partition's highest `seq`.
    pub last_seq: u64,
    /// Events past the committed offset.
    pub lag: u64,
}

/// One consumer group.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GroupView {
    /// Its name.
    pub name: String,
    /// The topic patterns it follows.
    pub patterns: Vec<String>,
    /// Unsettled events over all its topics.
    pub lag: u64,
    /// Per topic, by name.
    pub topics: Vec<GroupTopicView>,
    /// Its members in this server (WebSocket subscribers that joined it),
    /// with their health.
    #[serde(default)]
    pub members: Vec<MemberView>,
}

/// One member of a group in this server, and how it is doing.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MemberView {
    /// The member, unique in this server.
    pub member: String,
    /// `running`, `stalled` (holding deliveries and settling none for
    /// `HERALD_STALL_AFTER`) or `breaker_open`.
    pub state: String,
    /// When it last asked for work (RFC 3339), if it has.
    pub last_poll: Option<DateTime<Utc>>,
    /// Deliveries it holds unsettled.
    pub in_flight: usize,
    /// How long the oldest of them has been held, in milliseconds.
    pub oldest_in_flight_ms: Option<u64>,
    /// When it last settled a delivery (or joined, before the first).
    pub last_progress: DateTime<Utc>,
}

impl From<herald::health::MemberHealth> for MemberView {
    fn from(m: herald::health::MemberHealth) -> Self {
        MemberView {
            member: m.member,
            state: m.state.as_str().to_owned(),
            last_poll: m.last_poll,
            in_flight: m.in_flight,
            oldest_in_flight_ms: m
                .oldest_in_flight
                .map(|d| d.as_millis().min(u64::MAX as u128) as u64),
            last_progress: m.last_progress,
        }
    }
}

impl From<herald::transport::GroupInfo> for GroupView {
    fn from(g: herald::transport::GroupInfo) -> Self {
        GroupView {
            lag: g.lag(),
            name: g.name,
            patterns: g.patterns,
            members: Vec::new(),
            topics: g
                .topics
                .into_iter()
                .map(|t| GroupTopicView {
                    topic: t.topic.to_string(),
                    acked_through: t.acked_through,
                    last_seq: t.last_seq,
                    lag: t.lag,
                    partitions: t
                        .partitions
                        .into_iter()
                        .map(|p| PartitionView {
                            partition: p.partition,
                            acked_through: p.acked_through,
                            last_seq: p.last_seq,
                            lag: p.lag,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// Every durable consumer group.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GroupList {
    /// By name.
    pub groups: Vec<GroupView>,
}

/// List consumer groups with their offsets and lag.
#[utoipa::path(get, path = "/v1/groups", tag = "groups",
    responses((status = 200, body = GroupList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("token" = [])))]
pub async fn groups(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<GroupList>> {
    caller.require(Permission::Admin, "groups")?;
    let mut groups: Vec<GroupView> = state
        .bus
        .groups()
        .await?
        .into_iter()
        .map(GroupView::from)
        .collect();
    for member in state.bus.consumer_health() {
        let at = match groups.iter().position(|g| g.name == member.group) {
            Some(at) => at,
            None => {
                groups.push(GroupView {
                    name: member.group.clone(),
                    patterns: member.patterns.clone(),
                    lag: 0,
                    topics: Vec::new(),
                    members: Vec::new(),
                });
                groups.len() - 1
            }
        };
        groups[at].members.push(MemberView::from(member));
    }
    Ok(Json(GroupList { groups }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_events_per_second_since_the_oldest_reading() {
        let rates = Rates::default();
        let t0 = Instant::now();
        let topic = herald::Topic::new("a.b").unwrap();
        rates.record(t0, &[TopicInfo::new(topic.clone(), 10)]);
        assert_eq!(rates.rate("a.b", t0, 10), 0.0, "one reading, no rate");
        let later = t0 + Duration::from_secs(10);
        assert!((rates.rate("a.b", later, 110) - 10.0).abs() < 1e-9);
        assert_eq!(rates.rate("c.d", later, 5), 0.0, "never sampled");
        // Readings older than the window are forgotten (two always stay).
        rates.record(later, &[TopicInfo::new(topic.clone(), 110)]);
        let much_later = t0 + Duration::from_secs(200);
        rates.record(much_later, &[TopicInfo::new(topic, 110)]);
        let now = much_later + Duration::from_secs(10);
        assert!((rates.rate("a.b", now, 310) - 200.0 / 200.0).abs() < 1e-9);
    }
}
