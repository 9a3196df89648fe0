//! The delivery queues a store has open, so that closing the store closes
//! them (their subscriptions end) and a queue opened as it closes is
//! refused rather than left open.
//!
//! Owns the list (weak: a queue dropped by its subscriber is pruned, so a
//! long-lived store does not keep one entry per subscription it ever had)
//! and the closed flag they are checked under. Does not own the queues
//! (`queue`) or the store's own closed state, which each store keeps.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::backend::queue::Queue;

/// A store's open queues.
#[derive(Default)]
pub struct OpenQueues {
    queues: Mutex<Vec<Weak<Queue>>>,
    closed: AtomicBool,
}

impl OpenQueues {
    /// Track `queue` until the store closes; `false` (and `queue` closed)
    /// when it has closed already.
    pub fn register(&self, queue: &Arc<Queue>) -> bool {
        let open = self
            .while_open(|queues| {
                queues.retain(|q| q.strong_count() > 0);
                queues.push(Arc::downgrade(queue));
            })
            .is_some();
        if !open {
            queue.close();
        }
        open
    }

    /// Run `f` if the store is open, under the lock [`close`](Self::close)
    /// takes: what `f` starts is either refused or seen by `close`.
    pub fn while_open<T>(&self, f: impl FnOnce(&mut Vec<Weak<Queue>>) -> T) -> Option<T> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        Some(f(&mut queues))
    }

    /// Close every open queue, and every one registered from now on.
    /// Idempotent.
    pub fn close(&self) {
        let queues = {
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            self.closed.store(true, Ordering::Release);
            std::mem::take(&mut *queues)
        };
        for queue in queues.iter().filter_map(Weak::upgrade) {
            queue.close();
        }
    }

    /// Queues tracked now (open or not yet pruned).
    pub fn len(&self) -> usize {
        self.queues.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::queue::tests::Host;
    use crate::backend::queue::QueueHost;
    use crate::backend::subscription::SubscribeSpec;
    use crate::model::topic::Pattern;

    fn queue() -> Arc<Queue> {
        let host: Weak<dyn QueueHost> = Weak::<Host>::new();
        Queue::new(SubscribeSpec::new(vec![Pattern::new("a.b").unwrap()]), host)
    }

    #[test]
    fn dropped_queues_are_pruned_and_close_reaches_the_open_ones() {
        let open = OpenQueues::default();
        for _ in 0..100 {
            assert!(open.register(&queue()));
        }
        let kept = queue();
        assert!(open.register(&kept));
        assert_eq!(open.len(), 1, "the 100 dropped queues are pruned");
        open.close();
        assert!(kept.is_closed());
        let late = queue();
        assert!(!open.register(&late), "refused after close");
        assert!(late.is_closed());
        assert!(open.is_empty());
    }
}
