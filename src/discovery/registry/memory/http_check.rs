//! Running one HTTP health check: `GET http://<address><path>`, 2xx passes.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::discovery::health::HttpCheck;
use crate::discovery::instance::InstanceAddress;

/// The most body bytes a check reads before it stops (and passes or fails
/// on the status alone).
const MAX_BODY: usize = 64 * 1024;

/// A hyper client for health checks. Like Consul's agent it opens a new
/// connection for every check (no keep-alive), so a check measures whether
/// the instance accepts connections now.
#[derive(Clone, Debug)]
pub(crate) struct HttpChecker {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl HttpChecker {
    pub(crate) fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Self { client }
    }

    /// Runs one check; `Err` says why it is critical.
    pub(crate) async fn check(
        &self,
        address: &InstanceAddress,
        check: &HttpCheck,
    ) -> Result<(), String> {
        let uri: http::Uri = format!("http://{address}{}", check.path())
            .parse()
            .map_err(|e| format!("invalid check URI: {e}"))?;
        let request = http::Request::get(uri)
            .header(http::header::USER_AGENT, "palisade-health-check")
            .header(http::header::CONNECTION, "close")
            .body(Empty::new())
            .map_err(|e| format!("invalid check request: {e}"))?;
        let attempt = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("request failed: {}", error_chain(&e)))?;
            let status = response.status();
            // Read (a bounded part of) the body so the server sees a
            // complete exchange; its content does not matter.
            let _ = Limited::new(response.into_body(), MAX_BODY).collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        };
        match tokio::time::timeout(check.timeout(), attempt).await {
            Ok(result) => result,
            Err(_) => Err(format!("timed out after {:?}", round(check.timeout()))),
        }
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().try_into().unwrap_or(u64::MAX))
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
