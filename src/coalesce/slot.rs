//! [`Slot`]: one shared call in flight, its waiters and its answer, in one
//! allocation next to the boxed call.
//!
//! The call is kept as a `Pin<Box<Fut>>` under the slot's lock while no one
//! polls it. A waiter that polls takes the box out, polls it with the lock
//! released and puts it back (or stores the answer): no lock is held while
//! the inner future runs, and a second poller finds the call taken and
//! waits instead. While one waiter is alone it polls the call with its own
//! waker (nothing registered, nothing allocated); as soon as a second
//! waiter joins, the call is polled with a [`Notify`] waker that wakes every
//! waiter, so that any of them can drive the call on (the waker of the one
//! that polled alone is moved into it). See the [module docs](super) for
//! why this is not `futures::future::Shared`.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use parking_lot::Mutex;

/// One shared call and the requests waiting for it.
pub(crate) struct Slot<K, Fut: Future> {
    state: Mutex<State<K, Fut>>,
}

struct State<K, Fut: Future> {
    /// The key the call is in the map under, taken by whoever ends the
    /// call to remove it (kept under the lock: a key need not be `Sync`).
    key: Option<K>,
    phase: Phase<Fut>,
    /// Waiters that have neither taken the answer nor left.
    waiters: usize,
    /// Places handed out: each waiter's index in the wakers.
    joined: usize,
    /// The waker of the waiter that last polled the call while alone, and
    /// its place: moved into `notify` when another waiter comes.
    lone: Option<(usize, Waker)>,
    /// Every waiter's waker, once more than one waiter polled.
    notify: Option<Arc<Notify>>,
}

enum Phase<Fut: Future> {
    /// Not being polled.
    Idle(Pin<Box<Fut>>),
    /// A waiter has the call out and is polling it.
    Polling,
    /// The answer, cloned to each waiter; the last one takes it.
    Done(Option<Fut::Output>),
    /// Every waiter left before the answer: the call was dropped.
    Abandoned,
    /// Polling the call panicked: the call is gone.
    Panicked,
}

/// The wakers of a slot's waiters, woken all at once by the waker the
/// shared call is polled with.
struct Notify {
    wakers: Mutex<Vec<Option<Waker>>>,
}

impl Notify {
    /// Wakes every registered waiter (each registers again when it polls).
    /// The wakers are woken outside the lock, so that a waker that polls
    /// its task at once does not find the lock taken.
    fn wake_all(&self) {
        let mut wakers = std::mem::take(&mut *self.wakers.lock());
        for waker in wakers.iter_mut() {
            if let Some(waker) = waker.take() {
                waker.wake();
            }
        }
        // Give the list back (empty, its capacity kept) unless someone
        // registered meanwhile.
        let mut current = self.wakers.lock();
        if current.is_empty() {
            *current = wakers;
        }
    }

    fn register(&self, place: usize, waker: &Waker) {
        let mut wakers = self.wakers.lock();
        if wakers.len() <= place {
            wakers.resize(place + 1, None);
        }
        match &mut wakers[place] {
            Some(registered) if registered.will_wake(waker) => {}
            entry => *entry = Some(waker.clone()),
        }
    }

    fn forget(&self, place: usize) -> Option<Waker> {
        self.wakers.lock().get_mut(place).and_then(Option::take)
    }
}

impl Wake for Notify {
    fn wake(self: Arc<Self>) {
        self.wake_all();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_all();
    }
}

/// What a waiter got from polling its slot.
pub(crate) enum Polled<T> {
    /// The shared call's answer.
    Answer(T),
    /// The call is gone without an answer (it panicked).
    Lost,
}

/// What happened to a slot when a waiter finished with it.
pub(crate) enum Ended<K> {
    /// The call answered (or panicked), with this many waiters (the poller
    /// included); its key, to remove from the map.
    Finished { key: Option<K>, waiters: usize },
    /// The last waiter left before the answer: the call was dropped.
    Abandoned { key: Option<K> },
    /// The waiter left; the call goes on for the others, or had ended.
    Left,
}

/// The error the other waiters get when polling the shared call panicked.
#[derive(Debug)]
pub(crate) struct SharedCallPanicked;

impl fmt::Display for SharedCallPanicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the shared call panicked while another waiter polled it")
    }
}

impl Error for SharedCallPanicked {}

impl<K, Fut: Future> Slot<K, Fut> {
    /// A slot whose first waiter (place 0) is the request that starts it.
    pub(crate) fn new(key: K, call: Fut) -> Self {
        Self {
            state: Mutex::new(State {
                key: Some(key),
                phase: Phase::Idle(Box::pin(call)),
                waiters: 1,
                joined: 1,
                lone: None,
                notify: None,
            }),
        }
    }

    /// Adds a waiter to a call still in flight: its place and the waiters
    /// now, or `None` when the call has ended (answered, abandoned or
    /// panicked) and the request must start a new one.
    pub(crate) fn try_join(&self) -> Option<(usize, usize)> {
        let mut state = self.state.lock();
        match state.phase {
            Phase::Idle(_) | Phase::Polling => {
                state.waiters += 1;
                let place = state.joined;
                state.joined += 1;
                Some((place, state.waiters))
            }
            Phase::Done(_) | Phase::Abandoned | Phase::Panicked => None,
        }
    }
}

impl<K, Fut> Slot<K, Fut>
where
    Fut: Future,
    Fut::Output: Clone,
{
    /// Polls for the answer as the waiter at `place`: takes a clone of it,
    /// or drives the call if no one else is polling it, or registers the
    /// waker. `on_end` runs (with no lock held) when this poll ends the
    /// call, before the answer is returned.
    pub(crate) fn poll(
        &self,
        place: usize,
        cx: &mut Context<'_>,
        on_end: impl FnOnce(Ended<K>),
    ) -> Poll<Polled<Fut::Output>> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let shared_waker = match state.phase {
            Phase::Idle(_) if state.waiters == 1 && state.notify.is_none() => None,
            Phase::Idle(_) => Some(Waker::from(state.register(place, cx.waker()))),
            Phase::Polling => {
                state.register(place, cx.waker());
                return Poll::Pending;
            }
            Phase::Done(ref mut answer) => {
                let answer = if state.waiters == 1 {
                    answer.take()
                } else {
                    answer.clone()
                };
                state.waiters -= 1;
                drop(guard);
                return Poll::Ready(answer.map_or(Polled::Lost, Polled::Answer));
            }
            Phase::Abandoned | Phase::Panicked => {
                state.waiters -= 1;
                return Poll::Ready(Polled::Lost);
            }
        };
        let Phase::Idle(mut call) = std::mem::replace(&mut state.phase, Phase::Polling) else {
            unreachable!("the call is idle: matched above");
        };
        drop(guard);

        let mut unwinding = PollGuard {
            slot: self,
            on_end: Some(on_end),
        };
        let polled = match &shared_waker {
            None => call.as_mut().poll(cx),
            Some(waker) => call.as_mut().poll(&mut Context::from_waker(waker)),
        };
        let on_end = unwinding.on_end.take();

        let mut guard = self.state.lock();
        let state = &mut *guard;
        match polled {
            Poll::Ready(answer) => {
                let waiters = state.waiters;
                state.waiters -= 1;
                state.phase = Phase::Done((waiters > 1).then(|| answer.clone()));
                let key = state.key.take();
                let notify = state.notify.clone();
                drop(guard);
                if let Some(notify) = notify {
                    notify.wake_all();
                }
                // The finished call is dropped outside the lock.
                drop(call);
                if let Some(on_end) = on_end {
                    on_end(Ended::Finished { key, waiters });
                }
                Poll::Ready(Polled::Answer(answer))
            }
            Poll::Pending => {
                state.phase = Phase::Idle(call);
                if shared_waker.is_none() {
                    if state.waiters > 1 || state.notify.is_some() {
                        // Others came while the call was polled with this
                        // waiter's waker alone: wake them all (this one
                        // included) to poll it again with the shared waker.
                        let notify = state.register(place, cx.waker());
                        drop(guard);
                        notify.wake_all();
                    } else {
                        match &state.lone {
                            Some((lone, waker))
                                if *lone == place && waker.will_wake(cx.waker()) => {}
                            _ => state.lone = Some((place, cx.waker().clone())),
                        }
                    }
                }
                Poll::Pending
            }
        }
    }

    /// The waiter at `place` leaves without the answer: the last one to
    /// leave an unfinished call drops it (outside the lock); one leaving a
    /// call the others wait for wakes them, so that one of them polls it on.
    pub(crate) fn leave(&self, place: usize) -> Ended<K> {
        let mut state = self.state.lock();
        state.waiters -= 1;
        if matches!(&state.lone, Some((lone, _)) if *lone == place) {
            state.lone = None;
        }
        let notify = state.notify.clone();
        let forgotten = notify.as_ref().and_then(|notify| notify.forget(place));
        if state.waiters > 0 {
            let idle = matches!(state.phase, Phase::Idle(_));
            drop(state);
            drop(forgotten);
            if idle {
                if let Some(notify) = notify {
                    notify.wake_all();
                }
            }
            return Ended::Left;
        }
        match std::mem::replace(&mut state.phase, Phase::Abandoned) {
            Phase::Idle(call) => {
                let key = state.key.take();
                drop(state);
                drop(forgotten);
                drop(call);
                Ended::Abandoned { key }
            }
            ended @ (Phase::Done(_) | Phase::Panicked) => {
                // Keep what ended it; drop an answer no one took.
                let answer = match ended {
                    Phase::Done(answer) => {
                        state.phase = Phase::Done(None);
                        answer
                    }
                    other => {
                        state.phase = other;
                        None
                    }
                };
                drop(state);
                drop(answer);
                Ended::Left
            }
            Phase::Polling | Phase::Abandoned => Ended::Left,
        }
    }
}

impl<K, Fut: Future> State<K, Fut> {
    /// Registers the waker of the waiter at `place` with the shared waker,
    /// creating it (with the waker of the one that polled alone) if needed.
    fn register(&mut self, place: usize, waker: &Waker) -> Arc<Notify> {
        let lone = self.lone.take();
        let notify = self.notify.get_or_insert_with(|| {
            Arc::new(Notify {
                wakers: Mutex::new(Vec::new()),
            })
        });
        if let Some((lone, lone_waker)) = lone {
            notify.register(lone, &lone_waker);
        }
        notify.register(place, waker);
        Arc::clone(notify)
    }
}

/// Marks the slot `Panicked`, wakes its waiters and reports the end of the
/// call if polling it unwinds (disarmed by taking `on_end` when the poll
/// returns).
struct PollGuard<'a, K, Fut: Future, F: FnOnce(Ended<K>)> {
    slot: &'a Slot<K, Fut>,
    on_end: Option<F>,
}

impl<K, Fut: Future, F: FnOnce(Ended<K>)> Drop for PollGuard<'_, K, Fut, F> {
    fn drop(&mut self) {
        let Some(on_end) = self.on_end.take() else {
            return;
        };
        let mut state = self.slot.state.lock();
        state.phase = Phase::Panicked;
        let waiters = state.waiters;
        let key = state.key.take();
        let notify = state.notify.clone();
        drop(state);
        if let Some(notify) = notify {
            notify.wake_all();
        }
        on_end(Ended::Finished { key, waiters });
    }
}

impl<K, Fut: Future> fmt::Debug for Slot<K, Fut> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}
