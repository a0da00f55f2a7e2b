//! The watch driver shared by the backends that ask a server for each new
//! snapshot (Consul's blocking queries, DNS re-resolution, etcd's list and
//! watch): the retry, de-duplication and reporting around their fetch.
//!
//! A backend implements [`SnapshotSource`]: how to get the next snapshot
//! (waiting inside it as its server asks: a blocking query, a rate limit,
//! an event stream) and how to report a change or a failure (its traces,
//! events and counters). [`polling_watch`] turns it into a [`WatchStream`]
//! that
//!
//! * yields a snapshot only when it differs from the last one yielded (the
//!   first is always yielded);
//! * yields each failure as an `Err` item and fetches again after the next
//!   delay of a [`BackoffSchedule`], which every successful fetch resets;
//! * waits before the next fetch as long as the source asks
//!   ([`Fetched::refresh_after`]), e.g. a DNS record's TTL;
//! * ends after an error the source calls final
//!   ([`SnapshotSource::is_final`]).
//!
//! The whole watch runs inside the stream: dropping it cancels the fetch
//! in progress.

// Used by the backends behind features; always compiled so its tests run.
#![cfg_attr(
    not(any(feature = "consul", feature = "dns", feature = "etcd")),
    allow(dead_code)
)]

use std::future::Future;
use std::time::Duration;

use crate::backoff::{Backoff, BackoffSchedule};
use crate::discovery::error::DiscoveryError;
use crate::discovery::instance::Instance;

use super::WatchStream;

/// One successful fetch: the healthy instances in id order, and how long
/// to wait before fetching again.
pub(crate) struct Fetched {
    /// The healthy instances, in id order.
    pub(crate) instances: Vec<Instance>,
    /// Wait this long before the next fetch; `None` fetches again at once
    /// (a source that waits inside its fetch).
    pub(crate) refresh_after: Option<Duration>,
}

impl Fetched {
    /// A snapshot to follow at once by the next fetch.
    #[cfg_attr(not(any(feature = "consul", feature = "etcd")), allow(dead_code))]
    pub(crate) fn now(instances: Vec<Instance>) -> Self {
        Self {
            instances,
            refresh_after: None,
        }
    }
}

/// A backend's step of a polling watch; see the [module docs](self).
pub(crate) trait SnapshotSource: Send + 'static {
    /// Gets the next snapshot of the watched service.
    fn fetch(&mut self) -> impl Future<Output = Result<Fetched, DiscoveryError>> + Send + '_;

    /// Reports a snapshot that differs from the last one yielded (`first`:
    /// there was none), just before it is yielded.
    fn changed(&mut self, instances: &[Instance], first: bool);

    /// Reports a failed fetch, retried after `retry_in` (unless final).
    fn failed(&mut self, error: &DiscoveryError, retry_in: Duration);

    /// Whether `error` ends the watch (no retry can fix it). Default: no.
    fn is_final(&self, _error: &DiscoveryError) -> bool {
        false
    }
}

/// The state a polling watch carries between the items it yields.
struct PollingWatch<S> {
    source: S,
    schedule: BackoffSchedule,
    /// The last snapshot yielded.
    last: Option<Vec<Instance>>,
    /// How long to wait before the next fetch.
    wait: Option<Duration>,
    finished: bool,
}

/// A watch stream over `source`, retrying with `backoff`.
pub(crate) fn polling_watch<S: SnapshotSource>(source: S, backoff: &Backoff) -> WatchStream {
    let watch = PollingWatch {
        source,
        schedule: backoff.schedule(),
        last: None,
        wait: None,
        finished: false,
    };
    Box::pin(futures_util::stream::unfold(watch, PollingWatch::next))
}

impl<S: SnapshotSource> PollingWatch<S> {
    async fn next(mut self) -> Option<(Result<Vec<Instance>, DiscoveryError>, Self)> {
        if self.finished {
            return None;
        }
        loop {
            if let Some(wait) = self.wait.take() {
                tokio::time::sleep(wait).await;
            }
            match self.source.fetch().await {
                Ok(Fetched {
                    instances,
                    refresh_after,
                }) => {
                    self.schedule.reset();
                    self.wait = refresh_after;
                    if self.last.as_ref() != Some(&instances) {
                        self.source.changed(&instances, self.last.is_none());
                        self.last = Some(instances.clone());
                        return Some((Ok(instances), self));
                    }
                }
                Err(error) if self.source.is_final(&error) => {
                    self.finished = true;
                    return Some((Err(error), self));
                }
                Err(error) => {
                    let delay = self.schedule.next_delay();
                    self.wait = Some(delay);
                    self.source.failed(&error, delay);
                    return Some((Err(error), self));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use futures_util::StreamExt;
    use parking_lot::Mutex;

    use super::*;

    /// A source that answers from a script and records what it was told.
    struct Scripted {
        answers: VecDeque<Result<Fetched, DiscoveryError>>,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl SnapshotSource for Scripted {
        async fn fetch(&mut self) -> Result<Fetched, DiscoveryError> {
            self.log
                .lock()
                .push(format!("fetch at {:?}", tokio::time::Instant::now()));
            match self.answers.pop_front() {
                Some(answer) => answer,
                None => std::future::pending().await,
            }
        }

        fn changed(&mut self, instances: &[Instance], first: bool) {
            self.log
                .lock()
                .push(format!("changed {} first={first}", instances.len()));
        }

        fn failed(&mut self, _error: &DiscoveryError, retry_in: Duration) {
            self.log
                .lock()
                .push(format!("failed retry_in={retry_in:?}"));
        }

        fn is_final(&self, error: &DiscoveryError) -> bool {
            matches!(error, DiscoveryError::Unsupported { .. })
        }
    }

    fn instances(n: usize) -> Vec<Instance> {
        (0..n)
            .map(|i| {
                Instance::builder("api", format!("api-{i}"), format!("10.0.0.{}:80", i + 1))
                    .build()
                    .expect("valid instance")
            })
            .collect()
    }

    fn down() -> DiscoveryError {
        DiscoveryError::unavailable("test", "down")
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn backoff() -> Backoff {
        Backoff::exponential(ms(100), 2.0)
            .max_interval(ms(1_000))
            .build()
            .expect("valid backoff")
    }

    fn watch(
        answers: Vec<Result<Fetched, DiscoveryError>>,
    ) -> (WatchStream, Arc<Mutex<Vec<String>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let source = Scripted {
            answers: answers.into(),
            log: Arc::clone(&log),
        };
        (polling_watch(source, &backoff()), log)
    }

    #[tokio::test(start_paused = true)]
    async fn identical_snapshots_are_yielded_once() {
        let (mut stream, log) = watch(vec![
            Ok(Fetched::now(instances(1))),
            Ok(Fetched::now(instances(1))),
            Ok(Fetched::now(instances(2))),
        ]);
        assert_eq!(stream.next().await.expect("item").expect("ok").len(), 1);
        assert_eq!(stream.next().await.expect("item").expect("ok").len(), 2);
        let log = log.lock();
        let changes: Vec<_> = log.iter().filter(|l| l.starts_with("changed")).collect();
        assert_eq!(changes, ["changed 1 first=true", "changed 2 first=false"]);
        assert_eq!(log.iter().filter(|l| l.starts_with("fetch")).count(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_and_a_success_resets_the_schedule() {
        let start = tokio::time::Instant::now();
        let (mut stream, log) = watch(vec![
            Err(down()),
            Err(down()),
            Ok(Fetched::now(instances(1))),
            Err(down()),
        ]);
        assert!(stream.next().await.expect("item").is_err());
        assert!(stream.next().await.expect("item").is_err());
        assert!(stream.next().await.expect("item").is_ok());
        assert!(stream.next().await.expect("item").is_err());
        let log = log.lock();
        let failures: Vec<_> = log.iter().filter(|l| l.starts_with("failed")).collect();
        assert_eq!(
            failures,
            [
                "failed retry_in=100ms",
                "failed retry_in=200ms",
                "failed retry_in=100ms"
            ],
            "the success in between reset the schedule"
        );
        assert_eq!(tokio::time::Instant::now() - start, ms(300));
    }

    #[tokio::test(start_paused = true)]
    async fn the_source_decides_how_long_to_wait_between_fetches() {
        let start = tokio::time::Instant::now();
        let (mut stream, _log) = watch(vec![
            Ok(Fetched {
                instances: instances(1),
                refresh_after: Some(ms(700)),
            }),
            Ok(Fetched::now(instances(2))),
        ]);
        stream.next().await.expect("item").expect("ok");
        assert_eq!(tokio::time::Instant::now(), start);
        stream.next().await.expect("item").expect("ok");
        assert_eq!(tokio::time::Instant::now() - start, ms(700));
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_error_ends_the_watch() {
        let (mut stream, log) = watch(vec![Err(DiscoveryError::Unsupported {
            backend: "test",
            operation: "watching this",
        })]);
        assert!(stream.next().await.expect("item").is_err());
        assert!(stream.next().await.is_none());
        assert!(!log.lock().iter().any(|l| l.starts_with("failed")));
    }
}
