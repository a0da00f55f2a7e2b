//! What a retry layer needs to know about requests and responses beyond
//! their [`Outcome`](crate::classify::Outcome): how to copy a request for
//! another attempt, whether it may be sent twice, and whether the server
//! asked for a delay (or asked not to be retried at all).

use std::time::Duration;

/// What a response says about the next attempt, from
/// [`RetryPolicy::server_delay`].
///
/// A server's word only matters when the classifier calls the outcome
/// retryable and the retry's own limits (`max_attempts`, the budget,
/// `max_elapsed`) allow another attempt; with `honor_server_delay(false)`
/// it is ignored altogether.
///
/// | variant | wait before the next attempt | the backoff afterwards |
/// |---|---|---|
/// | `None` | the backoff's delay | continues its sequence |
/// | `After(d)` (HTTP `Retry-After`) | `d`, at most the backoff's `max_interval` | continues its sequence |
/// | `Pushback(d)` (gRPC `grpc-retry-pushback-ms`) | `d`, at most the backoff's `max_interval` | restarts from its first delay (gRFC A6) |
/// | `DoNotRetry` | no next attempt: the call ends with this response ([`GiveUpReason::ServerDeclinedRetry`](super::GiveUpReason::ServerDeclinedRetry)) | — |
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ServerDelay {
    /// The server said nothing: the backoff decides.
    #[default]
    None,
    /// Retry after this long; later waits continue the backoff's sequence
    /// as if this wait had been one of its own (HTTP `Retry-After`).
    After(Duration),
    /// Retry after this long; the wait after the next failure is the
    /// backoff's first delay again (gRPC pushback, gRFC A6).
    Pushback(Duration),
    /// Do not retry: return this response (gRPC: a negative or unreadable
    /// `grpc-retry-pushback-ms`).
    DoNotRetry,
}

impl ServerDelay {
    /// The wait the server asked for, if it asked for one.
    pub fn delay(self) -> Option<Duration> {
        match self {
            ServerDelay::After(delay) | ServerDelay::Pushback(delay) => Some(delay),
            ServerDelay::None | ServerDelay::DoNotRetry => None,
        }
    }
}

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

    /// What the server asked of another attempt: a delay (HTTP
    /// `Retry-After`, gRPC `grpc-retry-pushback-ms`), not to retry at all,
    /// or nothing. See [`ServerDelay`]. Default: [`ServerDelay::None`].
    fn server_delay(&self, result: Result<&Res, &Err>) -> ServerDelay {
        let _ = result;
        ServerDelay::None
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

#[cfg(feature = "tonic")]
pub(crate) use self::http_policy::grpc_pushback;
#[cfg(feature = "http")]
pub use self::http_policy::{HttpRetryPolicy, Idempotent, parse_retry_after};
#[cfg(feature = "reqwest")]
pub(crate) use self::http_policy::{header_server_delay, may_resend};

#[cfg(feature = "http")]
mod http_policy {
    use std::time::{Duration, SystemTime};

    use http::{HeaderMap, Method, Request, Response};

    use super::{RetryPolicy, ServerDelay};
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
    /// * Server delay, read from a response's headers: gRPC
    ///   `grpc-retry-pushback-ms` when present, as gRFC A6 reads it (digits
    ///   only: [`ServerDelay::Pushback`], saturating when too large to
    ///   count; anything else, a sign included, is [`ServerDelay::DoNotRetry`]);
    ///   otherwise `Retry-After` in seconds or as an HTTP date
    ///   ([`ServerDelay::After`], see [`parse_retry_after`]; an invalid one
    ///   is ignored).
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
        may_resend(request.method(), request.headers())
            || request.extensions().get::<Idempotent>().is_some()
    }

    /// The idempotency guard without extensions (shared with
    /// `palisade::reqwest`): an idempotent method or an `Idempotency-Key`.
    pub(crate) fn may_resend(method: &Method, headers: &HeaderMap) -> bool {
        matches!(
            *method,
            Method::GET
                | Method::HEAD
                | Method::PUT
                | Method::DELETE
                | Method::OPTIONS
                | Method::TRACE
        ) || headers.contains_key("idempotency-key")
    }

    fn server_delay<RB, Err>(result: Result<&Response<RB>, &Err>) -> ServerDelay {
        match result {
            Ok(response) => header_server_delay(response.headers()),
            Err(_) => ServerDelay::None,
        }
    }

    /// What a response's headers ask of a retry (shared with
    /// `palisade::reqwest`); see [`HttpRetryPolicy`].
    pub(crate) fn header_server_delay(headers: &HeaderMap) -> ServerDelay {
        if let Some(pushback) = headers.get("grpc-retry-pushback-ms") {
            return grpc_pushback(pushback.as_bytes());
        }
        headers
            .get(http::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, SystemTime::now()))
            .map_or(ServerDelay::None, ServerDelay::After)
    }

    impl<B: Clone, RB, Err> RetryPolicy<Request<B>, Response<RB>, Err> for HttpRetryPolicy {
        fn clone_request(&self, request: &Request<B>) -> Option<Request<B>> {
            Some(copy_request(request, request.body().clone()))
        }

        fn may_retry(&self, request: &Request<B>) -> bool {
            is_idempotent(request)
        }

        fn server_delay(&self, result: Result<&Response<RB>, &Err>) -> ServerDelay {
            server_delay(result)
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

        fn server_delay(&self, result: Result<&Response<RB>, &Err>) -> ServerDelay {
            server_delay(result)
        }
    }

    /// Reads a `grpc-retry-pushback-ms` value as gRFC A6 does: a
    /// non-negative count of milliseconds is a delay, and a negative or
    /// unreadable value asks not to retry. Digits only (surrounding
    /// whitespace aside): a sign, even `+`, makes the value unreadable. A
    /// count too large for `u64` saturates, so the retry waits its longest
    /// (the backoff's `max_interval`).
    pub(crate) fn grpc_pushback(value: &[u8]) -> ServerDelay {
        let value = value.trim_ascii();
        if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
            return ServerDelay::DoNotRetry;
        }
        let millis = value.iter().fold(0u64, |millis, digit| {
            millis
                .saturating_mul(10)
                .saturating_add(u64::from(digit - b'0'))
        });
        ServerDelay::Pushback(Duration::from_millis(millis))
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

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn grpc_pushback_is_a_delay_only_when_it_is_all_digits() {
            assert_eq!(
                grpc_pushback(b"250"),
                ServerDelay::Pushback(Duration::from_millis(250))
            );
            assert_eq!(grpc_pushback(b"0"), ServerDelay::Pushback(Duration::ZERO));
            assert_eq!(
                grpc_pushback(b" 7 "),
                ServerDelay::Pushback(Duration::from_millis(7))
            );
            for unreadable in [&b"-5"[..], b"+5", b"abc", b"", b" ", b"5ms", b"5.0", b"0x5"] {
                assert_eq!(
                    grpc_pushback(unreadable),
                    ServerDelay::DoNotRetry,
                    "{:?}",
                    String::from_utf8_lossy(unreadable)
                );
            }
        }

        #[test]
        fn grpc_pushback_too_large_to_count_saturates() {
            assert_eq!(
                grpc_pushback(b"18446744073709551616"),
                ServerDelay::Pushback(Duration::from_millis(u64::MAX))
            );
        }
    }
}
