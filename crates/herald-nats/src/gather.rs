//! Batches of what arrives while earlier batches are on their way.
//!
//! Owns [`Gather`]: the receiving end of a channel that hands out batches,
//! each taken once one of a fixed number of places for batches on their way
//! is free, so work that arrives while those are busy goes together in the
//! next (a group reader's acks). It knows
//! nothing of what the items are or where they go.

use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Hands out what its channel brings in batches of at most `max`, at most
/// `in_flight` of them out at once.
pub(crate) struct Gather<T> {
    items: mpsc::UnboundedReceiver<T>,
    places: Arc<Semaphore>,
    max: usize,
}

impl<T> Gather<T> {
    /// A sender, and a gatherer of what it sends.
    pub(crate) fn channel(in_flight: usize, max: usize) -> (mpsc::UnboundedSender<T>, Gather<T>) {
        let (tx, items) = mpsc::unbounded_channel();
        let gather = Gather {
            items,
            places: Arc::new(Semaphore::new(in_flight.max(1))),
            max: max.max(1),
        };
        (tx, gather)
    }

    /// The next batch and its place (free it when the batch is done): wait
    /// for an item, then for a place, then take what else has arrived;
    /// `None` once every sender is gone and nothing is left.
    pub(crate) async fn next(&mut self) -> Option<(OwnedSemaphorePermit, Vec<T>)> {
        let first = self.items.recv().await?;
        // Waiting for a place lets the batch fill.
        let place = self.places.clone().acquire_owned().await.ok()?;
        let mut batch = vec![first];
        while batch.len() < self.max {
            match self.items.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        Some((place, batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What arrives while every place is taken goes in one batch, no
    /// larger than `max`.
    #[tokio::test]
    async fn items_sent_while_the_places_are_taken_go_together() {
        let (tx, mut gather) = Gather::channel(1, 3);
        tx.send(1).unwrap();
        let (place, first) = gather.next().await.unwrap();
        assert_eq!(first, vec![1]);
        for n in 2..=6 {
            tx.send(n).unwrap();
        }
        drop(place);
        let (_place, second) = gather.next().await.unwrap();
        assert_eq!(second, vec![2, 3, 4]);
        drop(_place);
        drop(tx);
        let (_place, third) = gather.next().await.unwrap();
        assert_eq!(third, vec![5, 6]);
        drop(_place);
        assert!(gather.next().await.is_none());
    }
}
