//! A snapshot stream over a `tokio::sync::watch` channel.

use std::pin::Pin;
use std::sync::Arc;

use futures_core::Stream;
use tokio::sync::watch;

use crate::discovery::error::DiscoveryError;

/// The current snapshot first, then each new one; ends when the sender is
/// dropped. `select` turns a snapshot into an item (e.g. one service's
/// instances), outside the channel's lock.
pub(crate) fn snapshot_stream<T, U, F>(
    receiver: watch::Receiver<T>,
    select: F,
) -> Pin<Box<dyn Stream<Item = Result<U, DiscoveryError>> + Send>>
where
    T: Clone + Send + Sync + 'static,
    U: Send + 'static,
    F: Fn(T) -> U + Send + Sync + 'static,
{
    let select = Arc::new(select);
    Box::pin(futures_util::stream::unfold(
        (receiver, true),
        move |(mut receiver, first)| {
            let select = Arc::clone(&select);
            async move {
                if !first && receiver.changed().await.is_err() {
                    return None;
                }
                // Cloning under the channel's read lock: O(1) for the
                // `Arc`s and persistent sets sent here.
                let snapshot = receiver.borrow_and_update().clone();
                Some((Ok(select(snapshot)), (receiver, false)))
            }
        },
    ))
}
