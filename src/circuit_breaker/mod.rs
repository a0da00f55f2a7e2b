//! A circuit breaker layer with resilience4j's semantics.
//!
//! A circuit breaker watches the outcomes of calls to a dependency. While
//! the dependency is healthy the breaker is CLOSED and calls pass. When too
//! many recent calls fail (or are slow), it trips to OPEN and rejects calls
//! at once with [`BreakerOpen`], giving the dependency time to recover and
//! sparing callers a wait for a timeout. After a while it lets a few trial
//! calls through (HALF_OPEN); their outcome decides whether it closes again
//! or opens for another wait.
//!
//! ```text
//!            failure or slow-call rate >= threshold
//!   CLOSED ─────────────────────────────────────────▶ OPEN
//!     ▲                                                │  wait_duration_in_open_state
//!     │ trial calls under thresholds                   ▼
//!     └──────────────────────────────────────────── HALF_OPEN ──▶ OPEN (trial calls failed,
//!                                                                   or max wait in HALF_OPEN)
//! ```
//!
//! An operator can also move a breaker to DISABLED (everything passes,
//! nothing is recorded), FORCED_OPEN (everything is rejected) or
//! METRICS_ONLY (everything passes and is recorded, the breaker never
//! trips), and back with [`CircuitBreaker::reset`] or a
//! `transition_to_*` method.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use palisade::circuit_breaker::{BreakerOpen, CircuitBreaker, CircuitBreakerConfig, SlidingWindow};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), palisade::BoxError> {
//! let config = CircuitBreakerConfig::builder()
//!     .sliding_window(SlidingWindow::count(10))
//!     .minimum_number_of_calls(5)
//!     .failure_rate_threshold(50.0)
//!     .wait_duration_in_open_state(Duration::from_secs(30))
//!     .build()?;
//! let breaker = CircuitBreaker::new("inventory", config);
//! let mut service = ServiceBuilder::new()
//!     .layer(breaker.layer())
//!     .service_fn(|fail: bool| async move {
//!         if fail { Err("inventory is down") } else { Ok("reserved") }
//!     });
//!
//! for _ in 0..5 {
//!     let _ = service.ready().await?.call(true).await;
//! }
//! let err = service.ready().await?.call(false).await.unwrap_err();
//! let open = err.downcast_ref::<BreakerOpen>().expect("rejected by the breaker");
//! assert_eq!(open.breaker(), "inventory");
//! # Ok(())
//! # }
//! ```
//!
//! # Options
//!
//! Set with [`CircuitBreakerConfig::builder`]; `build()` rejects an invalid
//! value with a [`ConfigError`](crate::ConfigError) naming the field.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `sliding_window` | `Count { size: 100 }` | What CLOSED judges by: the last N calls ([`SlidingWindow::Count`]), the last N seconds in one bucket per second ([`SlidingWindow::Time`]), or N failures in a row ([`SlidingWindow::ConsecutiveFailures`]). |
//! | `failure_rate_threshold` | `50.0` | Percent of failed calls at or above which the breaker trips (and at which a HALF_OPEN trial fails). |
//! | `slow_call_duration_threshold` | none | A call strictly longer than this is slow. Unset: slow calls are not detected and no clock is read per call. |
//! | `slow_call_rate_threshold` | `100.0` | Percent of slow calls at or above which the breaker trips. Needs `slow_call_duration_threshold`. |
//! | `minimum_number_of_calls` | `100` | Rates are evaluated only once this many calls are in the window; a count window uses `min(this, size)`. |
//! | `wait_duration_in_open_state` | 60 s | How long OPEN rejects calls before letting trial calls through. |
//! | `break_duration` | [`BreakDuration::Fixed`] | How the wait grows on repeated trips without a successful close: [`BreakDuration::exponential`] with a cap, or [`BreakDuration::custom`]. |
//! | `automatic_transition_from_open_to_half_open` | `false` | `true`: a tokio timer moves OPEN to HALF_OPEN when the wait ends. `false`: the first call after the wait does. |
//! | `permitted_number_of_calls_in_half_open_state` | `10` | Trial calls let through in HALF_OPEN; other callers are rejected. Once all of them are recorded, their own failure and slow-call rates decide CLOSED or OPEN. |
//! | `max_wait_duration_in_half_open_state` | none | Longest stay in HALF_OPEN if the trial calls have not decided. |
//! | `transition_to_state_after_wait_duration` | [`CircuitState::Open`] | Where HALF_OPEN goes when that max wait passes: OPEN or CLOSED. |
//! | `initial_state` | [`CircuitState::Closed`] | The state a new breaker starts in (any of the six; OPEN starts its wait at creation). |
//! | `call_clock` | [`CallClock::Tokio`](crate::clock::CallClock) | Clock that times calls (slow calls, time window). |
//! | `event_capacity` | `256` | Events buffered per subscriber, in a channel of its own made by [`subscribe`](CircuitBreaker::subscribe), so an unobserved breaker holds none; a subscriber whose buffer is full misses the newest events and is told how many ([`events`](crate::events#a-subscriber-that-falls-behind)). |
//!
//! # Semantics
//!
//! * What a failure is, is decided by a [`Classify`](crate::classify::Classify)
//!   implementation: by default an `Err` is a failure and an `Ok` a success.
//!   [`Outcome::Ignored`](crate::classify::Outcome::Ignored) calls are not
//!   recorded (in HALF_OPEN their trial slot is given back).
//! * A call's outcome counts for the state it was admitted in. If the breaker
//!   changed state while the call ran, the outcome is reported as an event
//!   but not recorded: a slow call admitted while CLOSED cannot decide a
//!   HALF_OPEN trial it took no slot in.
//! * A response future dropped before completion records nothing and gives
//!   back its HALF_OPEN trial slot.
//! * Rejections never reach the inner service.
//! * A classifier built with
//!   [`transition_to_open_on_result`](crate::classify::ClassifyExt::transition_to_open_on_result)
//!   moves a CLOSED breaker to OPEN on the results its predicate matches;
//!   [`classify::by_error`](crate::classify::by_error) classifies errors by
//!   type as resilience4j's record and ignore lists do.
//! * Operators move the breaker with `transition_to_*`,
//!   [`transition_to_open_for`](CircuitBreaker::transition_to_open_for) and
//!   [`transition_to_open_until`](CircuitBreaker::transition_to_open_until);
//!   the moves resilience4j refuses (CLOSED to HALF_OPEN, METRICS_ONLY to
//!   OPEN or HALF_OPEN) fail with [`IllegalStateTransition`].
//! * Calls timed outside the breaker report their duration with
//!   [`CallPermit::on_result`]; [`CallPermit::release`] gives a permission
//!   back without a result.
//!
//! # Coming from resilience4j
//!
//! The options, states, transitions and events carry resilience4j's names,
//! and every open/close decision is resilience4j's. Where palisade
//! deliberately differs:
//!
//! | | resilience4j | palisade | why |
//! |---|---|---|---|
//! | a result that arrives after the breaker left the state the call was admitted in | recorded in the new state's metrics | reported as an event, not recorded | a slow call admitted in CLOSED cannot decide a HALF_OPEN trial it took no slot in |
//! | the end of the OPEN wait | a call strictly after the deadline is let through | a call at the deadline (`now >= until`) is let through | with paused time, `advance(wait)` lets the next call through |
//! | per-call events | published to every consumer registered for them | [`subscribe`](CircuitBreaker::subscribe) leaves out `Success`, `Failure` and `Ignored`; [`subscribe_all`](CircuitBreaker::subscribe_all) delivers them | a subscriber that watches transitions costs the CLOSED hot path nothing; a `subscribe_all` subscriber that is not draining (its buffer full) costs a counter per call |
//! | slow-call detection | on: 60 s threshold, 100 % rate | off until `slow_call_duration_threshold` is set | a call is not timed (no clock read) unless asked for |
//! | figures in OPEN | the previous state's metrics, still recording late results (and a time window keeps ageing) | the previous state's figures, frozen when it left | late results are not recorded (first row) |
//! | total and average call duration | of the calls in the sliding window | of the timed calls recorded in the current state (as `not_permitted_calls`) | one striped add per timed call, no per-slot durations |
//! | classifying errors | `recordExceptions` / `ignoreExceptions` / predicates | a [`Classify`](crate::classify::Classify), e.g. [`by_error`](crate::classify::by_error) | one classifier serves the breaker, retry and outlier detection |
//! | a manual move to the state the breaker is in | a new state (e.g. a fresh trial) | no-op, except `transition_to_open_for`/`until` (a new wait) and `reset` | |
//! | the wait of a trip | `waitIntervalFunctionInOpenState` | [`BreakDuration`] (fixed, exponential, custom) | |
//! | sliding windows | `COUNT_BASED`, `TIME_BASED` | those two and [`SlidingWindow::ConsecutiveFailures`] | |
//!
//! # Cost
//!
//! The CLOSED hot path takes no lock and allocates nothing
//! (`tests/circuit_breaker_alloc.rs` counts allocations to prove it).
//! Admission is one atomic load of the state word. Recording a success
//! into a count window that holds only successes (the steady state of a
//! healthy dependency) is one load, with no write; other outcomes cost a
//! `fetch_add` and a swap. A time window adds one to a striped counter.
//! The consecutive-failures window reads one counter.
//!
//! What remains is the reference count that keeps the breaker alive for
//! every response future in flight: an increment and a decrement per call.
//! They are not made on one count shared by every call: a breaker made
//! with [`CircuitBreaker::new`] has eight reference-counted stripes, each
//! on a cache line of its own, every handle (so every service clone) holds
//! one of them, given round-robin, and its calls count there. Service
//! clones used by different threads or tasks therefore do not write a
//! common cache line per call. A breaker made with
//! [`CircuitBreaker::new_static`] lives as long as the process, and its
//! calls skip the reference count altogether.
//!
//! A rejection in OPEN reads no precise clock while the wait surely runs:
//! when a breaker opens inside a tokio runtime, a timer set just before
//! the deadline and the coarse clock (one atomic load) together vouch for
//! it, and only calls near the deadline, or after the timer fired (with
//! paused time, `advance` fires it), read tokio's clock. A breaker opened
//! outside any runtime reads tokio's clock on every rejection. The
//! rejection's [`BreakerOpen`] holds the breaker's shared name and the
//! deadline; its message and `retry_in` are computed when asked. Its one
//! allocation is the box of tower's `BoxError`.
//!
//! Timing calls (slow-call detection, time windows) reads the call clock
//! once when the call starts (slow calls only) and once when it ends; see
//! [`crate::clock`] for the exact tokio clock and the cheaper coarse one.
//!
//! Measured figures, next to the peer crates in the same runs, are in
//! `BENCHMARKS.md` at the root of the repository.
//!
//! # Observability
//!
//! Transitions are logged at `warn` (to OPEN/FORCED_OPEN) or `info`,
//! rejections at `debug`, with the breaker's name as a field.
//! [`CircuitBreaker::subscribe`] delivers [`CircuitBreakerEvent`]s for
//! transitions, resets, exceeded thresholds and rejections;
//! [`CircuitBreaker::subscribe_all`] adds the outcome of every permitted
//! call (resilience4j's per-call events), at the price of one channel
//! send per call while such a subscriber has room in its buffer (and of
//! counting the missed event while its buffer is full).
//! [`CircuitBreaker::metrics`] returns a [`CircuitBreakerMetrics`] snapshot;
//! [`CircuitBreakerRegistry`] holds named breakers and lists their metrics;
//! [`KeyedCircuitBreakerLayer`] gives each request key (a host, say) its own
//! breaker from a registry, keeping at most [`DEFAULT_MAX_KEYS`] (or its
//! own cap) by evicting idle ones.

mod admission;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod body;
mod config;
mod error;
mod event;
mod future;
mod keyed;
mod layer;
mod metrics;
mod registry;
mod service;
mod state;
mod transition;
mod window;

pub use self::admission::CallPermit;
#[cfg(feature = "discovery")]
pub(crate) use self::admission::Reservation;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use self::body::{ClassifyEnd, HeldUntilEnd, RecordAtEnd};
pub(crate) use self::config::check_name;
pub use self::config::{
    BreakDuration, CircuitBreakerConfig, CircuitBreakerConfigBuilder, MAX_COUNT_WINDOW,
    MAX_EVENT_CAPACITY, MAX_NAME_LEN, MAX_TIME_WINDOW_SECONDS, SlidingWindow,
};
pub use self::error::{BreakerOpen, IllegalStateTransition};
pub use self::event::{CircuitBreakerEvent, CircuitBreakerEventKind, TransitionReason};
pub use self::future::ResponseFuture;
pub use self::keyed::{DEFAULT_MAX_KEYS, KeyedCircuitBreakerLayer, KeyedCircuitBreakerService};
pub use self::layer::CircuitBreakerLayer;
pub use self::metrics::CircuitBreakerMetrics;
pub use self::registry::CircuitBreakerRegistry;
pub use self::service::CircuitBreakerService;
pub use self::state::{CallError, CircuitBreaker, CircuitState};
pub use self::window::TripReason;
