//! No password of a PostgreSQL connection string shows in the saga log's
//! `Debug` output, errors or traces.
//!
//! Run with `cargo test --features postgres --test saga_postgres_secrets`
//! (no server needed; `scripts/integration-postgres.sh` runs it too). In a
//! file of its own: tracing caches whether a callsite is enabled, and a test
//! running beside it without a subscriber could make that cache say no.
#![cfg(feature = "postgres")]

use std::sync::Arc;
use std::time::Duration;

use palisade::saga::log::{PostgresConnectError, PostgresLog, PostgresLogConfig};

#[derive(Clone, Default)]
struct CapturedLogs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

#[tokio::test]
async fn no_password_appears_in_debug_output_errors_or_traces() {
    const SECRET: &str = "s3cret-Pa55";
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let mut shown = Vec::new();

    for url in [
        format!("postgres://u:{SECRET}@127.0.0.1:1/db?sslmode=require"),
        format!("postgres://u@127.0.0.1:1/db?password={SECRET}"),
        format!("host=127.0.0.1 port=1 user=u password='{SECRET}' dbname=db"),
    ] {
        let builder = PostgresLogConfig::builder(url).connect_timeout(Duration::from_secs(5));
        shown.push(format!("{builder:?}"));
        let config = builder.build().unwrap();
        shown.push(format!("{config:?}"));
        let error = PostgresLog::connect(config).await.unwrap_err();
        shown.push(format!("{error} {error:?}"));
        if let PostgresConnectError::Unavailable(error) = error {
            shown.push(format!("{error} {error:?}"));
        }
    }
    // Rejected settings, with the password in the string.
    for url in [
        format!("postgres://u:{SECRET}@127.0.0.1/db?sslmode=strict"),
        format!("postgres://u:{SECRET}@127.0.0.1:port/db"),
        format!("host=127.0.0.1 password='{SECRET}"),
        format!("host=127.0.0.1 password={SECRET} sslmode=verify-full"),
    ] {
        let builder = PostgresLogConfig::builder(url);
        shown.push(format!("{builder:?}"));
        let error = builder.build().unwrap_err();
        shown.push(format!("{error} {error:?}"));
    }
    let traces = logs.text();
    assert!(
        traces.contains("postgres saga log connect failed"),
        "the failed connects are traced: {traces}"
    );
    shown.push(traces);
    for text in shown {
        assert!(!text.contains(SECRET), "{text}");
    }
}
