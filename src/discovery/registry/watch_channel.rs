//! A [`WatchStream`] over a `tokio::sync::watch` channel of snapshots.

use std::sync::Arc;

use tokio::sync::watch;

use super::WatchStream;
use crate::discovery::instance::Instance;

/// The current snapshot first, then each new one; ends when the sender is
/// dropped. `select` filters a snapshot (e.g. to one service).
pub(crate) fn snapshot_stream<T, F>(receiver: watch::Receiver<T>, select: F) -> WatchStream
where
    T: Send + Sync + 'static,
    F: Fn(&T) -> Vec<Instance> + Send + Sync + 'static,
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
                let snapshot = select(&receiver.borrow_and_update());
                Some((Ok(snapshot), (receiver, false)))
            }
        },
    ))
}
