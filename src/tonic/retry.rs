//! [`GrpcRetryPolicy`]: which gRPC calls are retried, and how, as gRFC A6
//! says.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use http::{Request, Response};

use crate::classify::{GrpcCode, GrpcStatusClassifier};
use crate::error::ConfigError;
use crate::retry::{Retry, RetryBody, RetryLayer, RetryPolicy, ServerDelay, grpc_pushback};

const COMPONENT: &str = "gRPC retry policy";

/// Retries gRPC calls as the gRPC retry design (gRFC A6) does.
///
/// * **Retryable status codes** (A6's `retryableStatusCodes`): default
///   `UNAVAILABLE` alone. A call is retried only when its status, read from
///   the response *headers*, is one of them: A6 commits a call once the
///   server has sent its headers, so only a "trailers-only" response (an
///   error before any message, e.g. from a proxy or a server that refuses
///   the call at once) or a transport error is retried; a status sent in
///   trailers after a response started is returned (a circuit breaker
///   still records it, see [`crate::circuit_breaker::RecordAtEnd`]). The
///   codes live in the retry stage's classifier: use
///   [`layer`](Self::layer), which gives the retry a
///   [`GrpcStatusClassifier`] with these codes.
/// * **Methods**: by default every method may be retried; with
///   [`methods`](GrpcRetryPolicyBuilder::methods) or
///   [`services`](GrpcRetryPolicyBuilder::services) only the listed ones
///   (A6's per-method `name` list), matched on the request path
///   `/package.Service/Method`. A method not listed is sent once.
/// * **No method guard**: gRPC calls are all `POST`s, so the HTTP
///   idempotency guard of [`HttpRetryPolicy`](crate::retry::HttpRetryPolicy)
///   does not apply; listing a method says it is safe to retry.
/// * **Bodies**: requests are copied when their body is held in memory (a
///   [`RetryBody`] buffered by a
///   [`BufferBodyLayer`](crate::retry::BufferBodyLayer);
///   [`channel`](super::channel) puts one in front): a body larger than the
///   buffer is sent once. Method, URI, version, headers and extensions are
///   copied.
/// * **Pushback**: `grpc-retry-pushback-ms` in the response headers is
///   honoured as A6 says ([`ServerDelay::Pushback`]): a count of
///   milliseconds is the wait before the next attempt, after which the
///   backoff starts again from its first delay; a negative or unreadable
///   value means "do not retry" ([`ServerDelay::DoNotRetry`]).
///
/// ```
/// use palisade::classify::GrpcCode;
/// use palisade::retry::{Retry, RetryConfig};
/// use palisade::tonic::GrpcRetryPolicy;
///
/// let policy = GrpcRetryPolicy::builder()
///     .retryable_codes([GrpcCode::Unavailable, GrpcCode::ResourceExhausted])
///     .methods(["/grpc.health.v1.Health/Check"])
///     .build()?;
/// let retry = policy.layer(Retry::new("health", RetryConfig::default()));
/// # drop(retry);
/// # Ok::<(), palisade::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct GrpcRetryPolicy {
    retryable: Arc<[GrpcCode]>,
    methods: Option<Arc<HashSet<Box<str>>>>,
    services: Option<Arc<HashSet<Box<str>>>>,
}

impl Default for GrpcRetryPolicy {
    /// `UNAVAILABLE` is retryable, on every method.
    fn default() -> Self {
        Self {
            retryable: Arc::new([GrpcCode::Unavailable]),
            methods: None,
            services: None,
        }
    }
}

impl GrpcRetryPolicy {
    /// `UNAVAILABLE` is retryable, on every method.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts from the defaults: `UNAVAILABLE`, every method.
    pub fn builder() -> GrpcRetryPolicyBuilder {
        GrpcRetryPolicyBuilder {
            retryable: vec![GrpcCode::Unavailable],
            methods: Vec::new(),
            services: Vec::new(),
        }
    }

    /// The retryable status codes.
    pub fn retryable_codes(&self) -> &[GrpcCode] {
        &self.retryable
    }

    /// The classifier a retry stage needs with this policy: gRPC status
    /// codes, the policy's codes retryable.
    pub fn classifier(&self) -> GrpcStatusClassifier {
        GrpcStatusClassifier::new().retryable_codes(self.retryable.iter().copied())
    }

    /// `retry` as a layer that classifies with [`classifier`](Self::classifier)
    /// and copies requests with this policy: what a
    /// [`Pipeline`](crate::pipeline::Pipeline)'s
    /// [`retry`](crate::pipeline::PipelineBuilder::retry) stage takes.
    pub fn layer(&self, retry: Retry) -> RetryLayer<GrpcStatusClassifier, GrpcRetryPolicy> {
        RetryLayer::new(retry)
            .with_classifier(self.classifier())
            .with_policy(self.clone())
    }

    /// Whether calls to `path` (`/package.Service/Method`) may be retried.
    pub fn allows(&self, path: &str) -> bool {
        if self.methods.is_none() && self.services.is_none() {
            return true;
        }
        let listed_method = self.methods.as_ref().is_some_and(|m| m.contains(path));
        let listed_service = self.services.as_ref().is_some_and(|services| {
            split_path(path).is_some_and(|(service, _)| services.contains(service))
        });
        listed_method || listed_service
    }
}

/// `/package.Service/Method` as (`package.Service`, `Method`).
fn split_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

impl fmt::Debug for GrpcRetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcRetryPolicy")
            .field("retryable", &self.retryable)
            .field("methods", &self.methods)
            .field("services", &self.services)
            .finish()
    }
}

/// Builds a [`GrpcRetryPolicy`]; [`build`](Self::build) checks every field.
#[derive(Debug, Clone)]
#[must_use = "call .build() to get a policy"]
pub struct GrpcRetryPolicyBuilder {
    retryable: Vec<GrpcCode>,
    methods: Vec<String>,
    services: Vec<String>,
}

impl GrpcRetryPolicyBuilder {
    /// The status codes that are retried (replacing the default,
    /// `UNAVAILABLE`); must not be empty nor contain `OK`.
    pub fn retryable_codes(mut self, codes: impl IntoIterator<Item = GrpcCode>) -> Self {
        self.retryable = codes.into_iter().collect();
        self
    }

    /// Only these methods are retried (with those of
    /// [`services`](Self::services)), each a path
    /// `/package.Service/Method`. Default: every method.
    pub fn methods<I>(mut self, paths: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.methods.extend(paths.into_iter().map(Into::into));
        self
    }

    /// Every method of these services is retried (with the
    /// [`methods`](Self::methods) listed), each a full service name
    /// `package.Service`. Default: every method.
    pub fn services<I>(mut self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.services.extend(names.into_iter().map(Into::into));
        self
    }

    /// Checks the fields and returns the policy.
    ///
    /// ```
    /// use palisade::tonic::GrpcRetryPolicy;
    ///
    /// let err = GrpcRetryPolicy::builder().methods(["Check"]).build().unwrap_err();
    /// assert_eq!(err.field(), "methods");
    /// let err = GrpcRetryPolicy::builder().retryable_codes([]).build().unwrap_err();
    /// assert_eq!(err.field(), "retryable_codes");
    /// ```
    pub fn build(self) -> Result<GrpcRetryPolicy, ConfigError> {
        if self.retryable.is_empty() {
            return Err(ConfigError::new(
                COMPONENT,
                "retryable_codes",
                "must name at least one code (leave the retry stage out to retry nothing)",
            ));
        }
        if self.retryable.contains(&GrpcCode::Ok) {
            return Err(ConfigError::new(
                COMPONENT,
                "retryable_codes",
                "must not contain OK",
            ));
        }
        if let Some(bad) = self.methods.iter().find(|m| split_path(m).is_none()) {
            return Err(ConfigError::new(
                COMPONENT,
                "methods",
                format!("each must be a path /package.Service/Method, got {bad:?}"),
            ));
        }
        if let Some(bad) = self
            .services
            .iter()
            .find(|s| s.is_empty() || s.contains('/'))
        {
            return Err(ConfigError::new(
                COMPONENT,
                "services",
                format!("each must be a service name package.Service, got {bad:?}"),
            ));
        }
        let set = |names: Vec<String>| {
            (!names.is_empty()).then(|| Arc::new(names.into_iter().map(Into::into).collect()))
        };
        Ok(GrpcRetryPolicy {
            retryable: self.retryable.into(),
            methods: set(self.methods),
            services: set(self.services),
        })
    }
}

impl<B, RB, Err> RetryPolicy<Request<RetryBody<B>>, Response<RB>, Err> for GrpcRetryPolicy {
    fn clone_request(&self, request: &Request<RetryBody<B>>) -> Option<Request<RetryBody<B>>> {
        let mut copy = Request::new(request.body().try_clone()?);
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        Some(copy)
    }

    fn may_retry(&self, request: &Request<RetryBody<B>>) -> bool {
        self.allows(request.uri().path())
    }

    fn server_delay(&self, result: Result<&Response<RB>, &Err>) -> ServerDelay {
        match result {
            Ok(response) => response
                .headers()
                .get("grpc-retry-pushback-ms")
                .map_or(ServerDelay::None, |value| grpc_pushback(value.as_bytes())),
            Err(_) => ServerDelay::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    fn request(path: &str) -> Request<RetryBody<http_body_util::Empty<Bytes>>> {
        Request::post(path)
            .body(RetryBody::buffered(Bytes::from_static(b"\0\0\0\0\0")))
            .expect("valid request")
    }

    fn may_retry(policy: &GrpcRetryPolicy, path: &str) -> bool {
        RetryPolicy::<_, Response<()>, ()>::may_retry(policy, &request(path))
    }

    #[test]
    fn every_method_may_be_retried_by_default_even_a_post() {
        assert!(may_retry(&GrpcRetryPolicy::new(), "/pkg.Orders/Create"));
    }

    #[test]
    fn only_listed_methods_and_services_are_retried() {
        let policy = GrpcRetryPolicy::builder()
            .methods(["/pkg.Orders/Get"])
            .services(["grpc.health.v1.Health"])
            .build()
            .expect("valid");
        assert!(may_retry(&policy, "/pkg.Orders/Get"));
        assert!(!may_retry(&policy, "/pkg.Orders/Create"));
        assert!(may_retry(&policy, "/grpc.health.v1.Health/Check"));
        assert!(!may_retry(&policy, "/grpc.health.v1.Healthy/Check"));
    }

    #[test]
    fn requests_are_copied_with_headers_and_extensions() {
        #[derive(Clone, Debug, PartialEq)]
        struct Marker(u8);
        let mut original = request("/pkg.Orders/Get");
        original
            .headers_mut()
            .insert("te", "trailers".parse().expect("valid"));
        original.extensions_mut().insert(Marker(7));
        let copy =
            RetryPolicy::<_, Response<()>, ()>::clone_request(&GrpcRetryPolicy::new(), &original)
                .expect("a buffered body is copied");
        assert_eq!(copy.uri(), original.uri());
        assert_eq!(copy.method(), http::Method::POST);
        assert_eq!(copy.headers()["te"], "trailers");
        assert_eq!(copy.extensions().get::<Marker>(), Some(&Marker(7)));
    }

    #[test]
    fn pushback_is_read_strictly() {
        let delay = |value: &'static str| {
            let response = Response::builder()
                .header("grpc-retry-pushback-ms", value)
                .body(())
                .expect("valid");
            RetryPolicy::<Request<RetryBody<()>>, _, ()>::server_delay(
                &GrpcRetryPolicy::new(),
                Ok(&response),
            )
        };
        assert_eq!(
            delay("20"),
            ServerDelay::Pushback(Duration::from_millis(20))
        );
        assert_eq!(delay("-1"), ServerDelay::DoNotRetry);
        assert_eq!(delay("soon"), ServerDelay::DoNotRetry);
    }

    #[test]
    fn invalid_fields_are_named() {
        let field = |builder: GrpcRetryPolicyBuilder| builder.build().unwrap_err().field();
        assert_eq!(
            field(GrpcRetryPolicy::builder().retryable_codes([GrpcCode::Ok])),
            "retryable_codes"
        );
        assert_eq!(
            field(GrpcRetryPolicy::builder().methods(["/pkg.Orders"])),
            "methods"
        );
        assert_eq!(
            field(GrpcRetryPolicy::builder().services(["pkg.Orders/Get"])),
            "services"
        );
    }
}
