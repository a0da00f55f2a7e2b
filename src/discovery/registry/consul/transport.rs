//! Talking to the agent: one HTTP request at a time, and the agent
//! endpoints a [`ConsulRegistry`](super::ConsulRegistry) uses.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};

use crate::discovery::error::DiscoveryError;
use crate::discovery::health::HealthCheck;
use crate::discovery::instance::Instance;

use super::wire::{go_duration, parse_health, registration_body};
use super::{BACKEND, ConsulEvent, Inner, LocalRegistration};
use crate::discovery::registry::Registration;

/// The most body bytes read from one Consul answer.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// The header carrying the ACL token.
const TOKEN_HEADER: &str = "x-consul-token";

/// The header carrying a blocking query's index.
const INDEX_HEADER: &str = "x-consul-index";

/// Consul answered with an unexpected HTTP status; the source of a
/// [`DiscoveryError::Unavailable`] from a [`ConsulRegistry`](super::ConsulRegistry).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("consul answered {method} {path} with {status}: {body}")]
pub struct ConsulStatusError {
    method: Method,
    path: String,
    status: StatusCode,
    body: String,
}

impl ConsulStatusError {
    /// The HTTP status Consul answered with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The (start of the) body of Consul's answer: its error message.
    pub fn body(&self) -> &str {
        &self.body
    }
}

/// A successful answer: status 2xx, its headers and body.
struct Answer {
    headers: http::HeaderMap,
    body: Bytes,
}

impl Inner {
    /// Sends one request; a non-2xx status is an `Err` carrying it.
    async fn send(
        &self,
        method: Method,
        path: String,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Answer, RequestError> {
        let uri: Uri = format!("{}{}", self.base, path)
            .parse()
            .map_err(|e| RequestError::Transport(DiscoveryError::unavailable(BACKEND, e)))?;
        let mut request = http::Request::builder().method(method.clone()).uri(uri);
        if let Some(token) = &self.token {
            request = request.header(TOKEN_HEADER, token.clone());
        }
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| RequestError::Transport(DiscoveryError::unavailable(BACKEND, e)))?;
        let exchange = async {
            let response =
                self.client.request(request).await.map_err(|e| {
                    RequestError::Transport(DiscoveryError::unavailable(BACKEND, e))
                })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| RequestError::Transport(DiscoveryError::unavailable(BACKEND, e)))?
                .to_bytes();
            if parts.status.is_success() {
                Ok(Answer {
                    headers: parts.headers,
                    body,
                })
            } else {
                let text = String::from_utf8_lossy(&body[..body.len().min(1024)])
                    .trim()
                    .to_owned();
                Err(RequestError::Status(ConsulStatusError {
                    method: method.clone(),
                    path: path.split('?').next().unwrap_or_default().to_owned(),
                    status: parts.status,
                    body: text,
                }))
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(RequestError::Transport(DiscoveryError::unavailable(
                BACKEND,
                format!("request timed out after {timeout:?}"),
            ))),
        }
    }

    /// Registers and returns the registration's generation.
    pub(super) async fn register(&self, registration: Registration) -> Result<u64, DiscoveryError> {
        let body = registration_body(&registration);
        let body = serde_json::to_vec(&body).map_err(|e| DiscoveryError::InvalidData {
            backend: BACKEND,
            detail: e.to_string(),
        })?;
        self.send(
            Method::PUT,
            "/v1/agent/service/register?replace-existing-checks=true".to_owned(),
            Some(body),
            self.request_timeout,
        )
        .await
        .map_err(RequestError::into_discovery)?;
        let instance = &registration.instance;
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        self.local.lock().insert(
            instance.id().to_string(),
            LocalRegistration {
                generation,
                ttl: matches!(registration.check, HealthCheck::Ttl { .. }),
            },
        );
        self.counters.registrations.fetch_add(1, Ordering::Relaxed);
        crate::discovery::registry::metrics::registered(BACKEND, instance.service().as_str());
        tracing::info!(
            backend = BACKEND,
            service = %instance.service(),
            id = %instance.id(),
            address = %instance.address(),
            "instance registered with consul"
        );
        self.events.publish_with(|| ConsulEvent::Registered {
            service: instance.service().to_string(),
            id: instance.id().to_string(),
        });
        Ok(generation)
    }

    pub(super) async fn deregister(&self, service: &str, id: &str) -> Result<(), DiscoveryError> {
        let path = format!("/v1/agent/service/deregister/{}", encode(id));
        match self
            .send(Method::PUT, path, None, self.request_timeout)
            .await
        {
            Ok(_) => {
                self.counters
                    .deregistrations
                    .fetch_add(1, Ordering::Relaxed);
                crate::discovery::registry::metrics::deregistered(BACKEND, service);
                tracing::info!(
                    backend = BACKEND,
                    service,
                    id,
                    "instance deregistered from consul"
                );
                self.events.publish_with(|| ConsulEvent::Deregistered {
                    service: service.to_owned(),
                    id: id.to_owned(),
                });
                Ok(())
            }
            // Consul answers 404 "Unknown service ID" (older versions: 500).
            Err(RequestError::Status(e))
                if e.status == StatusCode::NOT_FOUND || e.body.contains("Unknown service") =>
            {
                self.local.lock().remove(id);
                Err(DiscoveryError::not_registered(service, id))
            }
            Err(e) => Err(e.into_discovery()),
        }
    }

    pub(super) async fn pass_ttl(&self, service: &str, id: &str) -> Result<(), DiscoveryError> {
        if self.local.lock().get(id).is_some_and(|r| !r.ttl) {
            return Err(DiscoveryError::Unsupported {
                backend: BACKEND,
                operation: "pass_ttl for an instance without a TTL check",
            });
        }
        let path = format!("/v1/agent/check/pass/service:{}", encode(id));
        match self
            .send(Method::PUT, path, None, self.request_timeout)
            .await
        {
            Ok(_) => {
                self.counters.ttl_passes.fetch_add(1, Ordering::Relaxed);
                crate::discovery::registry::metrics::ttl_passed(BACKEND, service);
                tracing::trace!(backend = BACKEND, service, id, "TTL check passed");
                Ok(())
            }
            // Consul: `CheckID "service:<id>" does not have associated TTL`
            // for an unknown check (500; 404 in newer versions).
            Err(RequestError::Status(e))
                if e.status == StatusCode::NOT_FOUND
                    || e.body.contains("does not have associated TTL") =>
            {
                Err(DiscoveryError::not_registered(service, id))
            }
            Err(e) => Err(e.into_discovery()),
        }
    }

    /// One health query; `block` is the index and wait of a blocking one.
    /// Returns the healthy instances in id order and `X-Consul-Index`.
    pub(super) async fn query(
        &self,
        service: &str,
        block: Option<u64>,
    ) -> Result<(Vec<Instance>, Option<u64>), DiscoveryError> {
        let mut path = format!("/v1/health/service/{}?passing=true", encode(service));
        if let Some(dc) = &self.datacenter {
            path.push_str("&dc=");
            path.push_str(&encode(dc));
        }
        let mut timeout = self.request_timeout;
        if let Some(index) = block {
            path.push_str(&format!("&index={index}&wait={}", go_duration(self.wait)));
            // Consul adds up to wait/16 of jitter to the wait.
            timeout += self.wait + self.wait / 16;
        }
        self.counters.queries.fetch_add(1, Ordering::Relaxed);
        crate::discovery::registry::metrics::queried(BACKEND, service);
        let result = async {
            let answer = self
                .send(Method::GET, path, None, timeout)
                .await
                .map_err(RequestError::into_discovery)?;
            let index = match answer.headers.get(INDEX_HEADER) {
                None => None,
                Some(value) => Some(
                    value
                        .to_str()
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .ok_or_else(|| DiscoveryError::InvalidData {
                            backend: BACKEND,
                            detail: format!("X-Consul-Index is not an integer: {value:?}"),
                        })?,
                ),
            };
            let instances = parse_health(service, &answer.body)?;
            Ok((instances, index))
        }
        .await;
        if result.is_err() {
            self.counters.query_errors.fetch_add(1, Ordering::Relaxed);
            crate::discovery::registry::metrics::failed(BACKEND, service, "query");
        }
        result
    }
}

/// Why a request failed: no usable answer, or an answer with a bad status
/// (which some callers map to `NotRegistered`).
enum RequestError {
    Transport(DiscoveryError),
    Status(ConsulStatusError),
}

impl RequestError {
    fn into_discovery(self) -> DiscoveryError {
        match self {
            RequestError::Transport(e) => e,
            RequestError::Status(e) => DiscoveryError::unavailable(BACKEND, e),
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for a
/// path segment or a query value.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_escapes_reserved_characters() {
        assert_eq!(encode("api-1.v2_x~"), "api-1.v2_x~");
        assert_eq!(encode("a?b#c%d:e"), "a%3Fb%23c%25d%3Ae");
    }
}
