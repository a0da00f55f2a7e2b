//! The pipeline's tracing span: one per call, carrying the stage outcomes.
//!
//! In a file of its own: tracing caches whether a callsite is enabled, and a
//! test running beside it without a subscriber could make that cache say no.

use std::time::Duration;

use palisade::backoff::Backoff;
use palisade::bulkhead::{Bulkhead, BulkheadConfig};
use palisade::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, SlidingWindow};
use palisade::pipeline::Pipeline;
use palisade::retry::{Retry, RetryConfig};
use tower::{Layer, Service, ServiceExt};

mod span {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::Context;
    use tracing_subscriber::registry::LookupSpan;

    /// One span's fields, as (name, value) in the order recorded.
    pub type Fields = Vec<(String, String)>;

    /// The fields recorded on every `pipeline` span.
    #[derive(Clone, Default)]
    pub struct Spans(pub Arc<Mutex<Vec<Fields>>>);

    struct Recorder<'a>(&'a mut Fields);
    impl Visit for Recorder<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.push((field.name().to_owned(), format!("{value:?}")));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.push((field.name().to_owned(), value.to_owned()));
        }
    }

    struct Index(usize);

    impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
            if attrs.metadata().name() != "pipeline" {
                return;
            }
            let mut spans = self.0.lock().unwrap();
            let mut fields = Vec::new();
            attrs.record(&mut Recorder(&mut fields));
            spans.push(fields);
            ctx.span(id)
                .unwrap()
                .extensions_mut()
                .insert(Index(spans.len() - 1));
        }

        fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
            let span = ctx.span(id).unwrap();
            let extensions = span.extensions();
            if let Some(Index(i)) = extensions.get::<Index>() {
                values.record(&mut Recorder(&mut self.0.lock().unwrap()[*i]));
            }
        }
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn one_span_per_call_carries_the_stage_outcomes() {
    use tracing_subscriber::layer::SubscriberExt;

    let spans = span::Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let breaker = CircuitBreaker::new(
        "orders",
        CircuitBreakerConfig::builder()
            .sliding_window(SlidingWindow::count(100))
            .minimum_number_of_calls(100)
            .build()
            .unwrap(),
    );
    let bulkhead = Bulkhead::new("orders", BulkheadConfig::default());
    let retry = Retry::new(
        "orders",
        RetryConfig::builder()
            .max_attempts(3)
            .backoff(
                Backoff::constant(Duration::from_millis(10))
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap(),
    );
    // Fails its first call, then echoes.
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let flaky = tower::service_fn(move |request: u32| {
        let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            if n == 0 {
                Err("flaky failure")
            } else {
                Ok(request)
            }
        }
    });
    let mut service = Pipeline::builder("orders")
        .retry(retry)
        .circuit_breaker(breaker.clone())
        .bulkhead(bulkhead)
        .build()
        .unwrap()
        .layer(flaky);
    assert_eq!(service.ready().await.unwrap().call(1).await.unwrap(), 1);
    breaker.transition_to_forced_open();
    service.ready().await.unwrap().call(2).await.unwrap_err();

    let spans = spans.0.lock().unwrap().clone();
    assert_eq!(spans.len(), 2, "one span per call: {spans:?}");
    let field = |span: &Vec<(String, String)>, name: &str| {
        span.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no field {name} in {span:?}"))
    };
    assert_eq!(field(&spans[0], "name"), "orders");
    assert_eq!(field(&spans[0], "attempts"), "2");
    assert_eq!(field(&spans[0], "outcome"), "ok");
    assert_eq!(field(&spans[0], "stage"), "service");
    assert_eq!(field(&spans[1], "attempts"), "1");
    assert_eq!(field(&spans[1], "outcome"), "rejected");
    assert_eq!(field(&spans[1], "stage"), "circuit_breaker");
}
