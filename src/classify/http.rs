//! Classifiers for `http::Response` built on tower-http's `classify` module.

use ::http::{HeaderMap, Response, StatusCode};
use tower_http::classify::{
    ClassifiedResponse, ClassifyEos, ClassifyResponse, GrpcErrorsAsFailures, GrpcFailureClass,
};

use crate::circuit_breaker::{CallPermit, ClassifyEnd, HeldUntilEnd};

pub use tower_http::classify::GrpcCode;

use super::{Classify, Outcome};

/// Classifies HTTP responses by status code.
///
/// Server errors (5xx) are failures, as tower-http's
/// [`ServerErrorsAsFailures`](tower_http::classify::ServerErrorsAsFailures)
/// decides; `429 Too Many Requests` is a failure
/// too unless [`count_too_many_requests`](Self::count_too_many_requests) is
/// turned off. Every other status, including 4xx, is a success: a client
/// error says nothing about the health of the server. Transport errors (the
/// service's `Err`) are retryable failures.
///
/// A failure is retryable when its status is 429, 502, 503 or 504: the
/// statuses that say "try again later" rather than "this request is broken".
///
/// ```
/// use palisade::classify::{Classify, HttpStatusClassifier, Outcome};
///
/// let classifier = HttpStatusClassifier::new();
/// let response = |status: u16| http::Response::builder().status(status).body(()).unwrap();
/// let classify = |status| classifier.classify(Ok::<_, &std::io::Error>(&response(status)));
///
/// assert_eq!(classify(200), Outcome::Success);
/// assert_eq!(classify(404), Outcome::Success);
/// assert_eq!(classify(500), Outcome::Failure { retryable: false });
/// assert_eq!(classify(503), Outcome::Failure { retryable: true });
/// assert_eq!(classify(429), Outcome::Failure { retryable: true });
/// ```
#[derive(Debug, Clone, Copy)]
pub struct HttpStatusClassifier {
    too_many_requests_is_failure: bool,
}

impl Default for HttpStatusClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpStatusClassifier {
    /// 5xx and 429 are failures; see the type's documentation.
    pub fn new() -> Self {
        Self {
            too_many_requests_is_failure: true,
        }
    }

    /// Whether `429 Too Many Requests` counts as a (retryable) failure.
    /// Default: `true`. When `false`, 429 is a success.
    pub fn count_too_many_requests(mut self, is_failure: bool) -> Self {
        self.too_many_requests_is_failure = is_failure;
        self
    }
}

fn status_is_retryable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT
    )
}

impl HttpStatusClassifier {
    /// The decision for a response with `status`, shared with the classifier
    /// of `reqwest::Response`s: 5xx (tower-http's `ServerErrorsAsFailures`
    /// rule) and 429 are failures, retryable when [`status_is_retryable`].
    pub(crate) fn classify_status(&self, status: StatusCode) -> Outcome {
        if status.is_server_error()
            || (self.too_many_requests_is_failure && status == StatusCode::TOO_MANY_REQUESTS)
        {
            Outcome::Failure {
                retryable: status_is_retryable(status),
            }
        } else {
            Outcome::Success
        }
    }
}

impl<B, E> Classify<Response<B>, E> for HttpStatusClassifier {
    fn classify(&self, result: Result<&Response<B>, &E>) -> Outcome {
        match result {
            Ok(response) => self.classify_status(response.status()),
            Err(_) => Outcome::Failure { retryable: true },
        }
    }
}

/// Classifies gRPC responses (`http::Response`s of a gRPC channel) by their
/// `grpc-status`.
///
/// Built on tower-http's [`GrpcErrorsAsFailures`]. By default the codes that
/// blame the caller rather than the server count as success, so that bad
/// requests cannot open a breaker: `OK`, `INVALID_ARGUMENT`, `NOT_FOUND`,
/// `ALREADY_EXISTS`, `PERMISSION_DENIED`, `FAILED_PRECONDITION`,
/// `OUT_OF_RANGE` and `UNAUTHENTICATED`. Use [`strict`](Self::strict) to
/// count every code but `OK` as a failure, and
/// [`with_success`](Self::with_success) to add codes.
///
/// `UNAVAILABLE` and `RESOURCE_EXHAUSTED` failures are retryable by
/// default; other failing codes are not. Choose the retryable codes with
/// [`retryable_codes`](Self::retryable_codes) (gRFC A6's
/// `retryableStatusCodes`; `GrpcRetryPolicy` of the `tonic` feature sets
/// them from its own list).
///
/// A response without `grpc-status` in its headers carries the status in
/// its trailers, at the end of its body: how most servers send errors
/// that happen after the call started. [`classify`](Classify::classify)
/// cannot see it and classifies such a response by its HTTP status (5xx
/// is a failure, and 502/503/504 are retryable, as the gRPC spec maps
/// them to `UNAVAILABLE`), otherwise as a success. A circuit breaker sees
/// it all the same when the response's body is wrapped in a
/// [`RecordAtEnd`](crate::circuit_breaker::RecordAtEnd) (the `tonic`
/// feature's channel does it): the classifier then
/// [holds the breaker's permit](Classify::hold_until_end) until the body
/// ends and records what its trailers say ([`ClassifyEnd`]). Errors that
/// happen before any message ("trailers-only" responses, such as
/// `UNAVAILABLE` from a proxy) come in the headers and are seen at once.
///
/// ```
/// use palisade::classify::{Classify, GrpcCode, GrpcStatusClassifier, Outcome};
///
/// let classifier = GrpcStatusClassifier::new();
/// let response = |code: &str| {
///     http::Response::builder().header("grpc-status", code).body(()).unwrap()
/// };
/// let classify = |c: &GrpcStatusClassifier, code| c.classify(Ok::<_, &std::io::Error>(&response(code)));
///
/// assert_eq!(classify(&classifier, "0"), Outcome::Success); // OK
/// assert_eq!(classify(&classifier, "5"), Outcome::Success); // NOT_FOUND
/// assert_eq!(classify(&classifier, "14"), Outcome::Failure { retryable: true }); // UNAVAILABLE
/// assert_eq!(classify(&classifier, "13"), Outcome::Failure { retryable: false }); // INTERNAL
///
/// let only_unavailable = GrpcStatusClassifier::new().retryable_codes([GrpcCode::Unavailable]);
/// assert_eq!(classify(&only_unavailable, "8"), Outcome::Failure { retryable: false });
/// ```
///
/// [`ClassifyEnd`]: crate::circuit_breaker::ClassifyEnd
#[derive(Debug, Clone)]
pub struct GrpcStatusClassifier {
    inner: GrpcErrorsAsFailures,
    retryable: GrpcCodes,
}

/// A set of gRPC status codes, one bit per code (0 to 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct GrpcCodes(u32);

impl GrpcCodes {
    pub(crate) fn of(codes: impl IntoIterator<Item = GrpcCode>) -> Self {
        codes.into_iter().fold(Self(0), |set, code| {
            Self(set.0 | grpc_code_number(code).map_or(0, |number| 1 << number))
        })
    }

    pub(crate) fn contains_number(self, code: i32) -> bool {
        (0..32).contains(&code) && self.0 & (1 << code) != 0
    }

    pub(crate) fn contains(self, code: GrpcCode) -> bool {
        grpc_code_number(code).is_some_and(|number| self.contains_number(number))
    }
}

/// The number gRPC gives `code` (`GrpcCode` is `non_exhaustive`, so it
/// cannot be cast; a code added later is `None`).
pub(crate) fn grpc_code_number(code: GrpcCode) -> Option<i32> {
    Some(match code {
        GrpcCode::Ok => 0,
        GrpcCode::Cancelled => 1,
        GrpcCode::Unknown => 2,
        GrpcCode::InvalidArgument => 3,
        GrpcCode::DeadlineExceeded => 4,
        GrpcCode::NotFound => 5,
        GrpcCode::AlreadyExists => 6,
        GrpcCode::PermissionDenied => 7,
        GrpcCode::ResourceExhausted => 8,
        GrpcCode::FailedPrecondition => 9,
        GrpcCode::Aborted => 10,
        GrpcCode::OutOfRange => 11,
        GrpcCode::Unimplemented => 12,
        GrpcCode::Internal => 13,
        GrpcCode::Unavailable => 14,
        GrpcCode::DataLoss => 15,
        GrpcCode::Unauthenticated => 16,
        _ => return None,
    })
}

impl Default for GrpcStatusClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl GrpcStatusClassifier {
    /// Caller-fault codes count as success; see the type's documentation.
    pub fn new() -> Self {
        Self::strict()
            .with_success(GrpcCode::InvalidArgument)
            .with_success(GrpcCode::NotFound)
            .with_success(GrpcCode::AlreadyExists)
            .with_success(GrpcCode::PermissionDenied)
            .with_success(GrpcCode::FailedPrecondition)
            .with_success(GrpcCode::OutOfRange)
            .with_success(GrpcCode::Unauthenticated)
    }

    /// Only `OK` is a success.
    pub fn strict() -> Self {
        Self {
            inner: GrpcErrorsAsFailures::new(),
            retryable: GrpcCodes::of([GrpcCode::Unavailable, GrpcCode::ResourceExhausted]),
        }
    }

    /// Also counts `code` as a success.
    pub fn with_success(self, code: GrpcCode) -> Self {
        Self {
            inner: self.inner.with_success(code),
            retryable: self.retryable,
        }
    }

    /// The failing codes that are retryable, replacing the default
    /// (`UNAVAILABLE` and `RESOURCE_EXHAUSTED`). A code counted as a
    /// success stays a success.
    pub fn retryable_codes(mut self, codes: impl IntoIterator<Item = GrpcCode>) -> Self {
        self.retryable = GrpcCodes::of(codes);
        self
    }

    /// Whether a failing `code` is retryable.
    pub fn is_retryable(&self, code: GrpcCode) -> bool {
        self.retryable.contains(code)
    }

    fn failure(&self, failure: GrpcFailureClass) -> Outcome {
        match failure {
            GrpcFailureClass::Status(status) => Outcome::Failure {
                retryable: status.code().is_some_and(|code| self.is_retryable(code)),
            },
            _ => Outcome::Failure { retryable: true },
        }
    }

    fn classify_response<B>(&self, response: &Response<B>) -> Outcome {
        match self.inner.clone().classify_response(response) {
            ClassifiedResponse::Ready(Ok(())) => Outcome::Success,
            ClassifiedResponse::Ready(Err(failure)) => self.failure(failure),
            ClassifiedResponse::RequiresEos(_) if response.status().is_server_error() => {
                Outcome::Failure {
                    retryable: status_is_retryable(response.status()),
                }
            }
            ClassifiedResponse::RequiresEos(_) => Outcome::Success,
        }
    }

    /// Whether the outcome of `response` is told by its trailers: a
    /// successful HTTP status without `grpc-status` in the headers.
    fn status_in_trailers<B>(&self, response: &Response<B>) -> bool {
        response.status().is_success() && !response.headers().contains_key("grpc-status")
    }
}

impl<B, E> Classify<Response<B>, E> for GrpcStatusClassifier {
    fn classify(&self, result: Result<&Response<B>, &E>) -> Outcome {
        match result {
            Ok(response) => self.classify_response(response),
            Err(_) => Outcome::Failure { retryable: true },
        }
    }

    fn hold_until_end(&self, response: &Response<B>, permit: CallPermit) -> Option<CallPermit> {
        if !self.status_in_trailers(response) {
            return Some(permit);
        }
        match response.extensions().get::<HeldUntilEnd>() {
            Some(held) => {
                held.hold(permit, self.clone());
                None
            }
            None => Some(permit),
        }
    }
}

impl ClassifyEnd for GrpcStatusClassifier {
    /// The status in the trailers; a body that ends without `grpc-status`
    /// (or with an unreadable one) is a success, as tower-http decides.
    fn classify_end(&self, trailers: Option<&HeaderMap>) -> Outcome {
        let ClassifiedResponse::RequiresEos(end) =
            self.inner.clone().classify_response(&Response::new(()))
        else {
            return Outcome::Success;
        };
        match end.classify_eos(trailers) {
            Ok(()) => Outcome::Success,
            Err(failure) => self.failure(failure),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc(code: Option<&str>, status: u16) -> Response<()> {
        let mut builder = Response::builder().status(status);
        if let Some(code) = code {
            builder = builder.header("grpc-status", code);
        }
        builder.body(()).expect("valid response")
    }

    #[test]
    fn grpc_status_in_trailers_falls_back_to_http_status() {
        let c = GrpcStatusClassifier::new();
        let classify = |r: &Response<()>| c.classify(Ok::<_, &()>(r));
        assert_eq!(classify(&grpc(None, 200)), Outcome::Success);
        assert_eq!(
            classify(&grpc(None, 503)),
            Outcome::Failure { retryable: true }
        );
        assert_eq!(
            classify(&grpc(None, 500)),
            Outcome::Failure { retryable: false }
        );
    }

    #[test]
    fn strict_grpc_counts_caller_faults_as_failures() {
        let c = GrpcStatusClassifier::strict();
        assert_eq!(
            c.classify(Ok::<_, &()>(&grpc(Some("3"), 200))),
            Outcome::Failure { retryable: false }
        );
        assert_eq!(
            c.classify(Ok::<_, &()>(&grpc(Some("8"), 200))),
            Outcome::Failure { retryable: true }
        );
    }

    #[test]
    fn retryable_codes_replace_the_default_set() {
        let c = GrpcStatusClassifier::new().retryable_codes([GrpcCode::Aborted]);
        let classify = |code| c.classify(Ok::<_, &()>(&grpc(Some(code), 200)));
        assert_eq!(classify("10"), Outcome::Failure { retryable: true });
        assert_eq!(classify("14"), Outcome::Failure { retryable: false });
        assert_eq!(classify("3"), Outcome::Success, "a success code stays one");
    }

    #[test]
    fn trailers_are_classified_like_headers() {
        let c = GrpcStatusClassifier::new();
        let trailers = |code: &'static str| {
            let mut map = HeaderMap::new();
            map.insert("grpc-status", ::http::HeaderValue::from_static(code));
            map
        };
        assert_eq!(c.classify_end(Some(&trailers("0"))), Outcome::Success);
        assert_eq!(c.classify_end(Some(&trailers("5"))), Outcome::Success);
        assert_eq!(
            c.classify_end(Some(&trailers("14"))),
            Outcome::Failure { retryable: true }
        );
        assert_eq!(
            c.classify_end(Some(&trailers("13"))),
            Outcome::Failure { retryable: false }
        );
        assert_eq!(c.classify_end(None), Outcome::Success);
    }

    #[test]
    fn http_429_can_be_counted_as_success() {
        let c = HttpStatusClassifier::new().count_too_many_requests(false);
        let r = Response::builder().status(429).body(()).expect("valid");
        assert_eq!(c.classify(Ok::<_, &()>(&r)), Outcome::Success);
    }
}
