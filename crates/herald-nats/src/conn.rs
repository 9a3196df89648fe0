//! The connection and the state every part of the store shares: the bottom
//! of the crate.
//!
//! Owns [`Inner`] — the NATS client and its JetStream context, the
//! configuration and names, whether the store is closed (and the `shutdown`
//! its readers watch), the queues it closes with itself, its dead-letter
//! writes under way — and connecting ([`Inner::connect`]), the stream
//! settings every herald stream shares and marking the store closed.
//! State a module above keeps per store sits in a [`Slot`] whose type this
//! module does not name (the groups this process leads are `group`'s).
//! It imports nothing of the crate but the leaves `config`, `names` and
//! `errors`: appending and reading topic streams are `log`'s, dead letters
//! `dead_letters`'s, the public handle and its close `store`'s.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use async_nats::jetstream::{self, stream};
use herald::backend::dead_lettering::{DeadLetterWrites, Discards, DEAD_LETTER_WRITE_WAIT};
use herald::backend::open_queues::OpenQueues;
use herald::backend::queue::Queue;
use herald::{ErrorCode, Result, Topic};
use tokio::sync::watch;

use crate::config::{NatsConfig, Storage};
use crate::errors;
use crate::names::Names;

/// What a store's clones share: the connection and the state of every
/// part.
pub(crate) struct Inner {
    /// The store itself, for tasks it spawns.
    pub(crate) this: Weak<Inner>,
    pub(crate) config: NatsConfig,
    pub(crate) names: Names,
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    /// Topics whose stream this process made sure of (`log`).
    pub(crate) streams: Mutex<HashMap<Topic, u32>>,
    closed: AtomicBool,
    /// Names this store among a group's members and leaders.
    pub(crate) member_id: String,
    /// What `group` keeps of the groups this process leads.
    pub(crate) groups: Slot,
    /// Whether the large-payload stream was made sure of.
    pub(crate) payloads_ready: AtomicBool,
    /// Dead letters being written by this store's queues and leaders;
    /// readers of dead letters wait for them.
    pub(crate) dead_letter_writes: DeadLetterWrites,
    /// Kept or discarded (`HERALD_DEAD_LETTERS=off`), each dead letter.
    pub(crate) discards: Discards,
    /// The schema registry as last read (`contracts`), with its stream's
    /// last sequence then: read again only when the stream grew.
    pub(crate) schemas: Mutex<Option<(u64, Vec<herald::backend::schemas::Subject>)>>,
    /// Open subscriptions' queues, closed with the store.
    queues: OpenQueues,
    /// Command exports of this process on their way out, by topic: each
    /// turns `true` once the server has stopped routing calls to it
    /// (`commands`).
    pub(crate) withdrawing: Mutex<HashMap<Topic, watch::Receiver<bool>>>,
    /// Flips to `true` on close; readers stop.
    pub(crate) shutdown: watch::Sender<bool>,
}

impl Inner {
    /// Connect to NATS with `config` (validated already). `UNAVAILABLE`
    /// when the server cannot be reached.
    pub(crate) async fn connect(config: NatsConfig) -> Result<Arc<Inner>> {
        // Several servers are comma-separated; async-nats parses a string
        // as one server, so each goes in a list of its own.
        let servers: Vec<&str> = config.url().split(',').map(str::trim).collect();
        let client = async_nats::ConnectOptions::new()
            .name("herald")
            .connection_timeout(config.timeout())
            .connect(servers)
            .await
            .map_err(|e| {
                errors::nats(
                    ErrorCode::Unavailable,
                    &format!("connect to {}", herald::config::redact(config.url())),
                    e,
                )
            })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.timeout())
            .build(client.clone());
        let names = Names::new(config.subject_prefix()).dead_letters(config.dead_letters().name());
        let discards = Discards::new(config.dead_letters());
        Ok(Arc::new_cyclic(|this| Inner {
            this: this.clone(),
            names,
            client,
            js,
            streams: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            queues: OpenQueues::default(),
            withdrawing: Mutex::new(HashMap::new()),
            member_id: format!("{}-{:016x}", std::process::id(), fastrand::u64(..)),
            groups: Slot::default(),
            dead_letter_writes: DeadLetterWrites::default(),
            discards,
            schemas: Mutex::new(None),
            payloads_ready: AtomicBool::new(false),
            shutdown: watch::channel(false).0,
            config,
        }))
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(errors::closed());
        }
        Ok(())
    }

    /// Mark the store closed: later calls fail, readers stop, and every
    /// registered queue closes. `false` when it was closed already.
    pub(crate) fn shut(&self) -> bool {
        if self.closed.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.shutdown.send_replace(true);
        self.queues.close();
        true
    }

    /// Stream settings every herald stream shares.
    pub(crate) fn stream_defaults(&self) -> stream::Config {
        stream::Config {
            storage: match self.config.storage_kind() {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            num_replicas: self.config.replica_count(),
            duplicate_window: self.config.duplicate_window(),
            max_bytes: self
                .config
                .byte_limit()
                .map_or(-1, |b| b.min(i64::MAX as u64) as i64),
            allow_direct: true,
            ..Default::default()
        }
    }

    /// Close `queue` with the store; a store closed already closes it now
    /// and refuses it (`UNAVAILABLE`).
    pub(crate) fn register(&self, queue: &Arc<Queue>) -> Result<()> {
        if self.queues.register(queue) {
            Ok(())
        } else {
            Err(errors::closed())
        }
    }

    /// Wait (up to `DEAD_LETTER_WRITE_WAIT`) for the dead letters being
    /// written.
    pub(crate) async fn dead_letters_written(&self) {
        self.dead_letter_writes
            .settled(DEAD_LETTER_WRITE_WAIT)
            .await;
    }
}

/// State a module above `conn` keeps per store, made on first use: `conn`
/// holds it without naming its type, the module that owns it reads it as
/// its own (one type per slot).
#[derive(Default)]
pub(crate) struct Slot(OnceLock<Box<dyn Any + Send + Sync>>);

impl Slot {
    /// The state, made with `T::default()` on first use.
    pub(crate) fn get<T: Any + Send + Sync + Default>(&self) -> &T {
        self.0
            .get_or_init(|| Box::new(T::default()))
            .downcast_ref()
            .expect("a slot holds one type")
    }
}
