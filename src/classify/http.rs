//! Classifiers for `http::Response` built on tower-http's `classify` module.

use ::http::{Response, StatusCode};
use tower_http::classify::{
    ClassifiedResponse, ClassifyResponse, GrpcErrorsAsFailures, GrpcFailureClass,
};

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
/// `UNAVAILABLE` and `RESOURCE_EXHAUSTED` failures are retryable; other
/// failing codes are not. A response without `grpc-status` in its headers
/// carries the status in its trailers, which a layer cannot see before the
/// body is read: it is classified by its HTTP status (5xx is a failure, and
/// 502/503/504 are retryable, as the gRPC spec maps them to `UNAVAILABLE`),
/// otherwise as a success. Servers send errors that happen before any
/// message ("trailers-only" responses, such as `UNAVAILABLE` from a proxy)
/// in the headers, so those are seen.
///
/// ```
/// use palisade::classify::{Classify, GrpcStatusClassifier, Outcome};
///
/// let classifier = GrpcStatusClassifier::new();
/// let response = |code: &str| {
///     http::Response::builder().header("grpc-status", code).body(()).unwrap()
/// };
/// let classify = |code| classifier.classify(Ok::<_, &std::io::Error>(&response(code)));
///
/// assert_eq!(classify("0"), Outcome::Success); // OK
/// assert_eq!(classify("5"), Outcome::Success); // NOT_FOUND
/// assert_eq!(classify("14"), Outcome::Failure { retryable: true }); // UNAVAILABLE
/// assert_eq!(classify("13"), Outcome::Failure { retryable: false }); // INTERNAL
/// ```
#[derive(Debug, Clone)]
pub struct GrpcStatusClassifier {
    inner: GrpcErrorsAsFailures,
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
        }
    }

    /// Also counts `code` as a success.
    pub fn with_success(self, code: GrpcCode) -> Self {
        Self {
            inner: self.inner.with_success(code),
        }
    }

    fn classify_response<B>(&self, response: &Response<B>) -> Outcome {
        match self.inner.clone().classify_response(response) {
            ClassifiedResponse::Ready(Ok(())) => Outcome::Success,
            ClassifiedResponse::Ready(Err(GrpcFailureClass::Status(status))) => Outcome::Failure {
                retryable: matches!(
                    status.code(),
                    Some(GrpcCode::Unavailable | GrpcCode::ResourceExhausted)
                ),
            },
            ClassifiedResponse::Ready(Err(_)) => Outcome::Failure { retryable: true },
            ClassifiedResponse::RequiresEos(_) if response.status().is_server_error() => {
                Outcome::Failure {
                    retryable: status_is_retryable(response.status()),
                }
            }
            ClassifiedResponse::RequiresEos(_) => Outcome::Success,
        }
    }
}

impl<B, E> Classify<Response<B>, E> for GrpcStatusClassifier {
    fn classify(&self, result: Result<&Response<B>, &E>) -> Outcome {
        match result {
            Ok(response) => self.classify_response(response),
            Err(_) => Outcome::Failure { retryable: true },
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
    fn http_429_can_be_counted_as_success() {
        let c = HttpStatusClassifier::new().count_too_many_requests(false);
        let r = Response::builder().status(429).body(()).expect("valid");
        assert_eq!(c.classify(Ok::<_, &()>(&r)), Outcome::Success);
    }
}
