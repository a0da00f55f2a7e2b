//! Wrapping a [`reqwest::Client`]: its classifier, its retry policy, and a
//! pipeline around it in one line.
//!
//! A `reqwest::Client` is already a `tower::Service<reqwest::Request>`, so
//! any palisade layer can wrap it; what it lacks is the knowledge of HTTP
//! that the layers need. This module supplies it:
//!
//! * [`ReqwestClassifier`] decides what a response or an error means:
//!   connect errors and timeouts are retryable failures, 5xx responses
//!   failures (retryable for 502, 503, 504), 429 a retryable failure, any
//!   other status a success: the decisions of
//!   [`HttpStatusClassifier`], whose code it shares.
//! * [`ReqwestRetryPolicy`] copies a request for another attempt with
//!   [`Request::try_clone`](::reqwest::Request::try_clone) (a streaming body
//!   cannot be copied: such a request is sent once), retries only idempotent
//!   requests (see [below](#marking-a-request-idempotent)) and waits as
//!   long as a `Retry-After` header asks, in seconds or as an HTTP date.
//! * [`client`] puts a [`Pipeline`] around a `reqwest::Client` with both.
//!
//! ```
//! use std::time::Duration;
//! use palisade::circuit_breaker::CircuitBreaker;
//! use palisade::pipeline::Pipeline;
//! use palisade::retry::{Retry, RetryConfig};
//! use tower::{Service, ServiceExt};
//!
//! # async fn fetch_orders() -> Result<(), palisade::BoxError> {
//! let pipeline = Pipeline::builder("orders")
//!     .retry(Retry::new("orders", RetryConfig::default()))
//!     .circuit_breaker(CircuitBreaker::with_defaults("orders"))
//!     .timeout(Duration::from_secs(2))
//!     .build()?;
//! let mut orders = palisade::reqwest::client(reqwest::Client::new(), pipeline);
//!
//! let request = reqwest::Request::new(reqwest::Method::GET, "http://orders.local/".parse()?);
//! let response = orders.ready().await?.call(request).await?;
//! # drop(response);
//! # Ok(())
//! # }
//! ```
//!
//! The same stack without [`client`], for a pipeline with classifiers or
//! a retry policy of your own (here, a breaker that does not count 429):
//!
//! ```
//! use palisade::circuit_breaker::CircuitBreaker;
//! use palisade::pipeline::Pipeline;
//! use palisade::reqwest::{ReqwestClassifier, ReqwestRetryPolicy};
//! use palisade::retry::{Retry, RetryConfig};
//! use tower::ServiceBuilder;
//!
//! let retry = Retry::new("orders", RetryConfig::default())
//!     .layer()
//!     .with_classifier(ReqwestClassifier::new())
//!     .with_policy(ReqwestRetryPolicy);
//! let breaker = CircuitBreaker::with_defaults("orders")
//!     .layer()
//!     .with_classifier(ReqwestClassifier::new().count_too_many_requests(false));
//! let pipeline = Pipeline::builder("orders").retry(retry).circuit_breaker(breaker).build()?;
//! let orders = ServiceBuilder::new().layer(pipeline).service(reqwest::Client::new());
//! # let _: &palisade::pipeline::PipelineService<_> = &orders;
//! # Ok::<(), palisade::ConfigError>(())
//! ```
//!
//! # Marking a request idempotent
//!
//! Sending a request twice is only safe when the second copy cannot do the
//! work again, so [`ReqwestRetryPolicy`] retries `GET`, `HEAD`, `PUT`,
//! `DELETE`, `OPTIONS` and `TRACE`, and any other method (a `POST`) only
//! when the request carries an `Idempotency-Key` header: the same guard as
//! [`HttpRetryPolicy`](crate::retry::HttpRetryPolicy). A request the guard
//! refuses is sent once, and its outcome returned.
//!
//! `HttpRetryPolicy` also accepts a marker in the request's extensions, but
//! a `reqwest::Request` has no public extensions: the mark has to travel
//! in the request itself, and the header is the one mark a server
//! understands. The IETF's `Idempotency-Key` header asks the server to
//! carry out a request with a given key at most once, so a retried `POST`
//! does not charge twice, which is precisely what makes retrying it safe;
//! every attempt carries the same key, since the policy copies the
//! headers. [`mark_idempotent`] adds a fresh random key (if the request
//! has none); set the header yourself to use a key of your own (an order
//! number, say).
//!
//! ```
//! let url = "http://orders.local/orders".parse()?;
//! let mut order = reqwest::Request::new(reqwest::Method::POST, url);
//! palisade::reqwest::mark_idempotent(&mut order);
//! assert!(order.headers().contains_key("idempotency-key"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! No feature of `reqwest` is turned on by palisade (`default-features =
//! false`): your own `reqwest` dependency chooses TLS, HTTP/2 and the rest.

use ::reqwest::header::{HeaderName, HeaderValue};
use ::reqwest::{Request, Response};

use crate::classify::{Classify, DefaultClassifier, HttpStatusClassifier, Outcome};
use crate::error::{BoxError, find_cause};
use crate::pipeline::{BreakerStage, NoRetry, Pipeline, RetryStage};
use crate::retry::{CloneRequests, RetryPolicy, ServerDelay};
use tower_layer::{Identity, Layer};

/// The header that marks a request idempotent (not among `http`'s
/// constants).
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// A `reqwest::Client` behind a [`Pipeline`], classified by
/// [`ReqwestClassifier`] and retried with [`ReqwestRetryPolicy`]; built by
/// [`client`]. A `tower::Service<reqwest::Request>` whose errors are
/// [`PipelineError`](crate::pipeline::PipelineError)s.
///
/// Its parameters are the core stages of the pipeline given to [`client`],
/// as in [`Pipeline`]'s type (tower's `Identity` for a stage left out):
/// `PipelineClient<RetryStage>` is the client of a pipeline with a retry
/// stage only.
pub type PipelineClient<Re = Identity, Br = Identity, Rl = Identity, To = Identity, Bu = Identity> =
    <ReqwestPipeline<Re, Br, Rl, To, Bu> as Layer<::reqwest::Client>>::Service;

/// The pipeline [`client`] makes of a `Pipeline<Re, Br, Rl, To, Bu>`.
type ReqwestPipeline<Re, Br, Rl, To, Bu> =
    Pipeline<<Re as DefaultStage>::Reqwest, <Br as DefaultStage>::Reqwest, Rl, To, Bu>;

/// Puts `pipeline` around `client`: the one-line assembly.
///
/// The pipeline's retry and circuit breaker classify outcomes with
/// [`ReqwestClassifier`] (so a 503 is a failure), and the retry copies
/// requests with [`ReqwestRetryPolicy`] (so a `POST` without an
/// `Idempotency-Key` is sent once, and `Retry-After` is honoured). The
/// pipeline must use the builder's default classifiers and policy, which
/// this replaces; for your own, wrap the client with a `ServiceBuilder` as
/// the [module docs](self) show.
///
/// See the [module docs](self) for an example.
pub fn client<Re, Br, Rl, To, Bu>(
    client: ::reqwest::Client,
    pipeline: Pipeline<Re, Br, Rl, To, Bu>,
) -> PipelineClient<Re, Br, Rl, To, Bu>
where
    Re: DefaultStage,
    Br: DefaultStage,
    ReqwestPipeline<Re, Br, Rl, To, Bu>: Layer<::reqwest::Client>,
{
    let pipeline = pipeline.map_classified(DefaultStage::reqwest, DefaultStage::reqwest);
    pipeline.layer(client)
}

/// The retry policies of a pipeline that [`client`] accepts and replaces
/// with [`ReqwestRetryPolicy`]: the builder's defaults, [`NoRetry`] (no
/// retry stage) and [`CloneRequests`] (a [`Retry`](crate::retry::Retry)
/// given as it is). Sealed: a pipeline with a policy of its own keeps it,
/// wrapped with a `ServiceBuilder`.
pub trait DefaultRetryPolicy: sealed::Sealed {}

impl DefaultRetryPolicy for NoRetry {}
impl DefaultRetryPolicy for CloneRequests {}

/// A retry or circuit breaker slot of a pipeline that [`client`] accepts:
/// the stage left out (tower's `Identity`), or the stage with the builder's
/// default classifier (and, for the retry, a [`DefaultRetryPolicy`]).
/// [`client`] replaces them with [`ReqwestClassifier`] and
/// [`ReqwestRetryPolicy`]. Sealed.
pub trait DefaultStage: sealed::Sealed {
    /// The slot as [`client`] fits it to `reqwest`.
    type Reqwest;

    /// Fits the slot to `reqwest`.
    fn reqwest(self) -> Self::Reqwest;
}

impl DefaultStage for Identity {
    type Reqwest = Identity;

    fn reqwest(self) -> Identity {
        self
    }
}

impl<RP: DefaultRetryPolicy> DefaultStage for RetryStage<DefaultClassifier, RP> {
    type Reqwest = RetryStage<ReqwestClassifier, ReqwestRetryPolicy>;

    fn reqwest(self) -> Self::Reqwest {
        self.with_classifier_and_policy(ReqwestClassifier::new(), ReqwestRetryPolicy)
    }
}

impl DefaultStage for BreakerStage<DefaultClassifier> {
    type Reqwest = BreakerStage<ReqwestClassifier>;

    fn reqwest(self) -> Self::Reqwest {
        self.with_classifier(ReqwestClassifier::new())
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::pipeline::NoRetry {}
    impl Sealed for crate::retry::CloneRequests {}
    impl Sealed for tower_layer::Identity {}
    impl<RP> Sealed for crate::pipeline::RetryStage<crate::classify::DefaultClassifier, RP> {}
    impl Sealed for crate::pipeline::BreakerStage<crate::classify::DefaultClassifier> {}
}

/// Classifies the outcome of a `reqwest::Client` call.
///
/// | outcome | meaning |
/// |---|---|
/// | response 5xx | failure, retryable for 502, 503 and 504 |
/// | response 429 | retryable failure (unless [`count_too_many_requests(false)`](Self::count_too_many_requests)) |
/// | any other response | success (a 4xx blames the request, not the server) |
/// | error building the request (`is_builder`, a bad URL) | ignored: nothing was sent |
/// | redirect error (a loop, the policy's limit) | failure, not retryable |
/// | any other error (connect, timeout, connection reset) | retryable failure |
///
/// A response is classified by [`HttpStatusClassifier`]'s own rules.
/// Implemented both for the client's own error, `reqwest::Error`, and for
/// [`BoxError`], the error a [`Pipeline`]'s stages see: a `reqwest::Error`
/// anywhere in its source chain is classified as above, and any other
/// error (the pipeline's timeout, say) is a retryable failure.
///
/// ```
/// use palisade::classify::{Classify, HttpStatusClassifier, Outcome};
/// use palisade::reqwest::ReqwestClassifier;
///
/// let response = |status: u16| -> reqwest::Response {
///     http::Response::builder().status(status).body("").unwrap().into()
/// };
/// let classifier = ReqwestClassifier::new();
/// let classify = |status| classifier.classify(Ok::<_, &reqwest::Error>(&response(status)));
/// assert_eq!(classify(200), Outcome::Success);
/// assert_eq!(classify(404), Outcome::Success);
/// assert_eq!(classify(500), Outcome::Failure { retryable: false });
/// assert_eq!(classify(503), Outcome::Failure { retryable: true });
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ReqwestClassifier {
    status: HttpStatusClassifier,
}

impl ReqwestClassifier {
    /// 5xx and 429 are failures, connect errors and timeouts retryable
    /// failures; see the type's documentation.
    pub fn new() -> Self {
        Self {
            status: HttpStatusClassifier::new(),
        }
    }

    /// Whether `429 Too Many Requests` counts as a (retryable) failure.
    /// Default: `true`. When `false`, 429 is a success.
    pub fn count_too_many_requests(self, is_failure: bool) -> Self {
        Self {
            status: self.status.count_too_many_requests(is_failure),
        }
    }

    fn classify_error(error: &::reqwest::Error) -> Outcome {
        if error.is_builder() {
            Outcome::Ignored
        } else if error.is_redirect() {
            Outcome::Failure { retryable: false }
        } else {
            Outcome::Failure { retryable: true }
        }
    }
}

impl From<HttpStatusClassifier> for ReqwestClassifier {
    fn from(status: HttpStatusClassifier) -> Self {
        Self { status }
    }
}

impl Classify<Response, ::reqwest::Error> for ReqwestClassifier {
    fn classify(&self, result: Result<&Response, &::reqwest::Error>) -> Outcome {
        match result {
            Ok(response) => self.status.classify_status(response.status()),
            Err(error) => Self::classify_error(error),
        }
    }
}

impl Classify<Response, BoxError> for ReqwestClassifier {
    fn classify(&self, result: Result<&Response, &BoxError>) -> Outcome {
        match result {
            Ok(response) => self.status.classify_status(response.status()),
            Err(error) => match find_cause::<::reqwest::Error>(&**error) {
                Some(error) => Self::classify_error(error),
                None => Outcome::Failure { retryable: true },
            },
        }
    }
}

/// Retries `reqwest::Request`s: copies them with
/// [`try_clone`](::reqwest::Request::try_clone), guards non-idempotent
/// methods and honours `Retry-After`.
///
/// * Copies: the whole request, when its body is held in memory (or it has
///   none). A streaming body ([`reqwest::Body::wrap_stream`](::reqwest::Body)
///   and the like) cannot be copied: the request is sent once.
/// * May retry: `GET`, `HEAD`, `PUT`, `DELETE`, `OPTIONS` and `TRACE`; any
///   method when the request carries an `Idempotency-Key` header (see
///   [`mark_idempotent`] and the [module docs](self#marking-a-request-idempotent)).
///   Everything else is sent once.
/// * Server delay: read from the response's headers by the code of
///   [`HttpRetryPolicy`](crate::retry::HttpRetryPolicy):
///   `Retry-After` in seconds or as an HTTP date
///   ([`ServerDelay::After`], see [`parse_retry_after`](crate::retry::parse_retry_after)).
#[derive(Debug, Clone, Copy, Default)]
pub struct ReqwestRetryPolicy;

impl<Err> RetryPolicy<Request, Response, Err> for ReqwestRetryPolicy {
    fn clone_request(&self, request: &Request) -> Option<Request> {
        request.try_clone()
    }

    fn may_retry(&self, request: &Request) -> bool {
        crate::retry::may_resend(request.method(), request.headers())
    }

    fn server_delay(&self, result: Result<&Response, &Err>) -> ServerDelay {
        match result {
            Ok(response) => crate::retry::header_server_delay(response.headers()),
            Err(_) => ServerDelay::None,
        }
    }
}

/// Marks `request` safe to retry whatever its method, by giving it an
/// `Idempotency-Key` header with a fresh random key (128 random bits in
/// hex) unless it already has one. Every attempt sends the same key, so a
/// server that honours the header carries the request out at most once.
/// See the [module docs](self#marking-a-request-idempotent) for why a
/// header.
pub fn mark_idempotent(request: &mut Request) {
    if !request.headers().contains_key(IDEMPOTENCY_KEY) {
        let key = format!("{:032x}", rand::random::<u128>());
        // Hex digits are always a valid header value.
        if let Ok(value) = HeaderValue::from_str(&key) {
            request.headers_mut().insert(IDEMPOTENCY_KEY, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn post() -> Request {
        let url = "http://127.0.0.1/orders".parse().expect("valid url");
        Request::new(::reqwest::Method::POST, url)
    }

    fn delay_of(retry_after: &str) -> ServerDelay {
        let response: Response = ::http::Response::builder()
            .status(503)
            .header("retry-after", retry_after)
            .body("")
            .expect("valid response")
            .into();
        RetryPolicy::<Request, _, BoxError>::server_delay(&ReqwestRetryPolicy, Ok(&response))
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_as_an_http_date() {
        assert_eq!(delay_of("7"), ServerDelay::After(Duration::from_secs(7)));
        let in_two_minutes = SystemTime::now() + Duration::from_secs(120);
        let delay = delay_of(&httpdate::fmt_http_date(in_two_minutes))
            .delay()
            .expect("a delay");
        // The date has whole seconds, and a little time passes.
        assert!(
            (Duration::from_secs(115)..=Duration::from_secs(120)).contains(&delay),
            "{delay:?}"
        );
        assert_eq!(delay_of("soon"), ServerDelay::None);
    }

    #[test]
    fn mark_idempotent_keeps_an_existing_key() {
        let mut request = post();
        request
            .headers_mut()
            .insert(IDEMPOTENCY_KEY, HeaderValue::from_static("order-17"));
        mark_idempotent(&mut request);
        assert_eq!(request.headers()[IDEMPOTENCY_KEY], "order-17");
    }

    #[test]
    fn marked_post_may_be_retried_and_unmarked_may_not() {
        let policy = ReqwestRetryPolicy;
        let may_retry = |r: &Request| RetryPolicy::<_, Response, BoxError>::may_retry(&policy, r);
        let mut request = post();
        assert!(!may_retry(&request));
        mark_idempotent(&mut request);
        assert!(may_retry(&request));
        let key = request.headers()[IDEMPOTENCY_KEY].clone();
        assert_eq!(key.len(), 32);
        let copy = RetryPolicy::<_, Response, BoxError>::clone_request(&policy, &request)
            .expect("no body: copyable");
        assert_eq!(copy.headers()[IDEMPOTENCY_KEY], key);
    }
}
