//! JSON over HTTP/1 between the services: a small client on hyper, a
//! per-instance `tower::Service` for the balancer, and the JSON error body
//! every service answers with.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use palisade::BoxError;
use palisade::discovery::Instance;
use serde_json::{Value, json};

/// A JSON request to one service, by path (the balancer picks the instance).
#[derive(Debug, Clone)]
pub struct ApiCall {
    /// `GET` or `POST`.
    pub method: http::Method,
    /// Path and query, from `/`.
    pub path: String,
    /// The body, for `POST`.
    pub body: Option<Value>,
    /// Extra headers (`authorization` from the scenario to the gateway).
    pub headers: Vec<(http::HeaderName, String)>,
    /// Attempts (shared by the copies a retry makes) that were sent and
    /// got no answer saying whether they were applied: timed out, cut
    /// off, or a 5xx other than 503. Zero after a failure means that no
    /// attempt had an effect.
    pub in_doubt: Arc<AtomicU32>,
}

impl ApiCall {
    /// `GET path`.
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            method: http::Method::GET,
            path: path.into(),
            body: None,
            headers: Vec::new(),
            in_doubt: Arc::default(),
        }
    }

    /// `POST path` with a JSON body.
    pub fn post(path: impl Into<String>, body: Value) -> Self {
        Self {
            method: http::Method::POST,
            path: path.into(),
            body: Some(body),
            headers: Vec::new(),
            in_doubt: Arc::default(),
        }
    }

    /// Whether an attempt of this call may have been applied.
    pub fn may_have_been_applied(&self) -> bool {
        self.in_doubt.load(Ordering::SeqCst) > 0
    }

    /// Sends `traceparent` (a W3C trace context) with the call, when there
    /// is one, instead of the trace of the request being served.
    pub fn traced(mut self, traceparent: Option<String>) -> Self {
        if let Some(traceparent) = traceparent {
            self.headers.push((
                http::HeaderName::from_static(super::edge::TRACEPARENT),
                traceparent,
            ));
        }
        self
    }

    /// Adds `authorization: Bearer <token>`.
    pub fn bearer(mut self, token: &str) -> Self {
        self.headers
            .push((http::header::AUTHORIZATION, format!("Bearer {token}")));
        self
    }
}

/// A service's answer: its status and JSON body (`null` when empty).
#[derive(Debug, Clone)]
pub struct JsonReply {
    /// The HTTP status.
    pub status: StatusCode,
    /// The parsed body.
    pub body: Value,
}

/// A reply with a 5xx status, as an error: the balancer, breakers and
/// retries count it as a failure. 4xx replies are answers, not failures.
#[derive(Debug, thiserror::Error)]
#[error("{service} answered {status}: {body}")]
pub struct UpstreamError {
    /// The service called.
    pub service: String,
    /// Its 5xx status.
    pub status: StatusCode,
    /// Its body.
    pub body: Value,
}

/// An HTTP/1 client with a per-request timeout.
#[derive(Clone)]
pub struct JsonClient {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl JsonClient {
    /// A client whose requests give up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }

    /// Sends `call` to `http://<authority>`.
    pub async fn send(&self, authority: &str, call: ApiCall) -> Result<JsonReply, BoxError> {
        let mut request = http::Request::builder()
            .method(call.method)
            .uri(format!("http://{authority}{}", call.path));
        // The trace of the request being served goes on (W3C traceparent),
        // unless the call names one.
        if !call
            .headers
            .iter()
            .any(|(name, _)| name == super::edge::TRACEPARENT)
        {
            if let Some(traceparent) = super::edge::outgoing() {
                request = request.header(super::edge::TRACEPARENT, traceparent);
            }
        }
        for (name, value) in call.headers {
            request = request.header(name, value);
        }
        let body = match call.body {
            Some(body) => {
                request = request.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(&body)?)
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(body))?;
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
            };
            Ok::<_, BoxError>(JsonReply { status, body })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(reply) => reply,
            Err(_) => Err(format!("no reply from {authority} within {:?}", self.timeout).into()),
        }
    }
}

/// The client of one instance, made by the balancer for each instance
/// discovery reports; 5xx replies become [`UpstreamError`]s.
#[derive(Clone)]
pub struct InstanceClient {
    service: String,
    authority: String,
    client: JsonClient,
}

impl InstanceClient {
    /// The client of `instance`.
    pub fn new(client: JsonClient, instance: &Instance) -> Self {
        Self {
            service: instance.service().as_str().to_owned(),
            authority: instance.address().to_string(),
            client,
        }
    }
}

impl tower::Service<ApiCall> for InstanceClient {
    type Response = JsonReply;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<JsonReply, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: ApiCall) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            // In doubt until an answer says what happened (a timeout drops
            // this future and leaves it so).
            let in_doubt = Arc::clone(&call.in_doubt);
            in_doubt.fetch_add(1, Ordering::SeqCst);
            let reply = this.client.send(&this.authority, call).await?;
            let answered = !reply.status.is_server_error()
                || reply.status == http::StatusCode::SERVICE_UNAVAILABLE;
            if answered {
                in_doubt.fetch_sub(1, Ordering::SeqCst);
            }
            if reply.status.is_server_error() {
                return Err(UpstreamError {
                    service: this.service,
                    status: reply.status,
                    body: reply.body,
                }
                .into());
            }
            Ok(reply)
        })
    }
}

/// The error every service answers with: `{"error": "...", "code": N}`
/// (N the HTTP status).
#[derive(Debug)]
pub struct ApiError {
    /// The status to answer.
    pub status: StatusCode,
    /// What went wrong, for people.
    pub message: String,
}

impl ApiError {
    /// An error with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// 503.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 500, for a service's own failures (its database).
    pub fn internal(error: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(error: rusqlite::Error) -> Self {
        Self::internal(format!("database: {error}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.message, "code": self.status.as_u16() });
        (self.status, Json(body)).into_response()
    }
}

/// The 5xx reply behind a pipeline's failure, if that is what it was.
pub fn upstream_error(error: &palisade::pipeline::PipelineError) -> Option<&UpstreamError> {
    let palisade::pipeline::PipelineError::Service(error) = error else {
        return None;
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(error) = cause {
        if let Some(upstream) = error.downcast_ref::<UpstreamError>() {
            return Some(upstream);
        }
        cause = error.source();
    }
    None
}
