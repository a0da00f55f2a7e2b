//! What a retry layer needs to know about requests and responses beyond
//! their [`Outcome`](crate::classify::Outcome): how to copy a request for
//! another attempt, whether it may be sent twice, and whether the server
//! asked for a delay.

use std::time::Duration;

/// How requests are re-sent, and which responses carry a delay from the
/// server. Implement it to plug in your own decisions; [`CloneRequests`] and
/// (with the `http` feature) [`HttpRetryPolicy`] cover the common cases.
pub trait RetryPolicy<Req, Res, Err> {
    /// A copy of `request` for another attempt, or `None` when it cannot be
    /// copied: the request is then sent once and its outcome returned.
    fn clone_request(&self, request: &Req) -> Option<Req>;

    /// Whether `request` may be sent more than once (an idempotency guard).
    /// Default: every request may.
    fn may_retry(&self, request: &Req) -> bool {
        let _ = request;
        true
    }

    /// The delay the server asked for before another attempt (HTTP
    /// `Retry-After`, gRPC `grpc-retry-pushback-ms`), if any. Default: none.
    fn server_delay(&self, result: Result<&Res, &Err>) -> Option<Duration> {
        let _ = result;
        None
    }
}

/// Re-sends requests by cloning them; every request may be retried and no
/// response carries a delay. The default policy.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneRequests;

impl<Req: Clone, Res, Err> RetryPolicy<Req, Res, Err> for CloneRequests {
    #[inline]
    fn clone_request(&self, request: &Req) -> Option<Req> {
        Some(request.clone())
    }
}

#[cfg(feature = "http")]
pub use self::http_policy::{HttpRetryPolicy, Idempotent, parse_retry_after};

#[cfg(feature = "http")]
mod http_policy {
    use std::time::{Duration, SystemTime};

    use http::{HeaderMap, Method, Request, Response};

    use super::RetryPolicy;
    use crate::retry::RetryBody;

    /// A request extension that marks a request as safe to retry whatever
    /// its method (for a `POST` whose handler de-duplicates, say).
    ///
    /// ```
    /// let mut request = http::Request::post("http://orders/").body(()).unwrap();
    /// request.extensions_mut().insert(palisade::retry::Idempotent);
    /// ```
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Idempotent;

    /// Retries `http::Request`s whose body is `Clone` (a buffered body),
    /// guarding non-idempotent methods, and honours `Retry-After` and
    /// `grpc-retry-pushback-ms`.
    ///
    /// * Copies: method, URI, version, headers, body, and the [`Idempotent`]
    ///   extension (other extensions are not `Clone` in general and are not
    ///   copied).
    /// * May retry: `GET`, `HEAD`, `PUT`, `DELETE`, `OPTIONS` and `TRACE`;
    ///   any method when the request carries the [`Idempotent`] extension or
    ///   an `Idempotency-Key` header. Everything else is sent once.
    /// * Server delay: `Retry-After` in seconds or as an HTTP date, and gRPC
    ///   `grpc-retry-pushback-ms`, read from a response's headers.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct HttpRetryPolicy;

    /// A copy of `request`'s method, URI, version, headers and [`Idempotent`]
    /// marker, with `body`.
    fn copy_request<B, B2>(request: &Request<B>, body: B2) -> Request<B2> {
        let mut copy = Request::new(body);
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        if request.extensions().get::<Idempotent>().is_some() {
            copy.extensions_mut().insert(Idempotent);
        }
        copy
    }

    fn is_idempotent<B>(request: &Request<B>) -> bool {
        matches!(
            *request.method(),
            Method::GET
                | Method::HEAD
                | Method::PUT
                | Method::DELETE
                | Method::OPTIONS
                | Method::TRACE
        ) || request.extensions().get::<Idempotent>().is_some()
            || request.headers().contains_key("idempotency-key")
    }

    fn server_delay<RB>(response: &Response<RB>) -> Option<Duration> {
        let headers = response.headers();
        grpc_pushback(headers).or_else(|| {
            let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
            parse_retry_after(value, SystemTime::now())
        })
    }

    impl<B: Clone, RB, Err> RetryPolicy<Request<B>, Response<RB>, Err> for HttpRetryPolicy {
        fn clone_request(&self, request: &Request<B>) -> Option<Request<B>> {
            Some(copy_request(request, request.body().clone()))
        }

        fn may_retry(&self, request: &Request<B>) -> bool {
            is_idempotent(request)
        }

        fn server_delay(&self, result: Result<&Response<RB>, &Err>) -> Option<Duration> {
            server_delay(result.ok()?)
        }
    }

    /// Bodies buffered by [`BufferBodyLayer`](crate::retry::BufferBodyLayer):
    /// copied when held in memory; a streaming one is sent once.
    impl<B, RB, Err> RetryPolicy<Request<RetryBody<B>>, Response<RB>, Err> for HttpRetryPolicy {
        fn clone_request(&self, request: &Request<RetryBody<B>>) -> Option<Request<RetryBody<B>>> {
            Some(copy_request(request, request.body().try_clone()?))
        }

        fn may_retry(&self, request: &Request<RetryBody<B>>) -> bool {
            is_idempotent(request)
        }

        fn server_delay(&self, result: Result<&Response<RB>, &Err>) -> Option<Duration> {
            server_delay(result.ok()?)
        }
    }

    fn grpc_pushback(headers: &HeaderMap) -> Option<Duration> {
        let millis: u64 = headers
            .get("grpc-retry-pushback-ms")?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(Duration::from_millis(millis))
    }

    /// Parses a `Retry-After` value: delay-seconds or an HTTP date (a date
    /// in the past means "now"). `None` if it is neither.
    ///
    /// delay-seconds is digits only (RFC 9110, section 10.2.3): a sign makes
    /// the value invalid (`+5` is ignored like `-5`). A valid delay too large
    /// to count in seconds saturates at `u64::MAX` seconds rather than being
    /// ignored, so the retry waits its longest (the backoff's
    /// `max_interval`) instead of falling back to a shorter backoff delay.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use palisade::retry::parse_retry_after;
    ///
    /// assert_eq!(parse_retry_after("120", SystemTime::now()), Some(Duration::from_secs(120)));
    /// let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
    /// assert_eq!(
    ///     parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
    ///     Some(Duration::from_secs(30))
    /// );
    /// assert_eq!(parse_retry_after("soon", now), None);
    /// assert_eq!(parse_retry_after("+5", now), None);
    /// assert_eq!(
    ///     parse_retry_after("99999999999999999999999", now),
    ///     Some(Duration::from_secs(u64::MAX))
    /// );
    /// ```
    pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
        let value = value.trim();
        if !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit()) {
            // Digits only, so parsing fails on overflow alone.
            let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
            return Some(Duration::from_secs(seconds));
        }
        let date = httpdate::parse_http_date(value).ok()?;
        Some(date.duration_since(now).unwrap_or(Duration::ZERO))
    }
}
