//! The order events through RabbitMQ (`--broker amqp://...`), the
//! chapter's choreography on a real broker: the orders service's outbox
//! relay publishes each event with a publisher confirm and marks it
//! delivered only once the broker has confirmed it; the notifications
//! service consumes with manual acks and acknowledges an event only after
//! its email is recorded. Both ends are at least once: an event is
//! published again when its confirm is lost, and delivered again when its
//! ack is; notifications records each event id once.

use std::sync::Arc;

use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use palisade::BoxError;
use serde_json::Value;
use tracing::Instrument;

use super::edge::{TRACEPARENT, TraceParent, Traces};
use super::notifications::{Notifications, OrderEvent};

/// Where the order events go: the broker's URL and the queue (one per
/// started system, so that systems started in parallel do not share
/// events).
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `amqp://host:port[/vhost]`.
    pub url: String,
    /// The queue of this system's order events.
    pub queue: String,
}

impl BrokerConfig {
    /// The broker at `url`, with a queue of its own for this system.
    pub fn new(url: &str) -> Self {
        let suffix: u64 = rand::random();
        Self {
            url: url.to_owned(),
            queue: format!("palisade-shop.order-events.{suffix:016x}"),
        }
    }
}

async fn connect(url: &str) -> Result<Connection, BoxError> {
    let properties = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio::current());
    Ok(Connection::connect(url, properties).await?)
}

/// Declares the queue: durable, and deleted by the broker after a minute
/// without consumers (a crashed test leaves nothing behind for long).
/// Both ends declare it, with the same arguments, so neither waits for the
/// other.
async fn declare(channel: &Channel, queue: &str) -> Result<(), BoxError> {
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), AMQPValue::LongInt(60_000));
    channel
        .queue_declare(
            queue,
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await?;
    Ok(())
}

/// The orders service's end: publishes with confirms.
pub struct Publisher {
    channel: Channel,
    queue: String,
    _connection: Connection,
}

impl Publisher {
    /// Connects, declares the queue and turns publisher confirms on.
    pub async fn open(config: &BrokerConfig) -> Result<Self, BoxError> {
        let connection = connect(&config.url).await?;
        let channel = connection.create_channel().await?;
        declare(&channel, &config.queue).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            queue: config.queue.clone(),
            _connection: connection,
        })
    }

    /// Publishes `event` (persistent, its event id as the message id, its
    /// order's W3C trace context in a `traceparent` header) and waits for
    /// the broker's confirm; an error when the broker refused it or could
    /// not route it (`mandatory`), or the connection failed.
    pub async fn publish(
        &self,
        event_id: &str,
        event: &Value,
        traceparent: Option<&str>,
    ) -> Result<(), BoxError> {
        let payload = serde_json::to_vec(event)?;
        let mut headers = FieldTable::default();
        if let Some(traceparent) = traceparent {
            headers.insert(
                TRACEPARENT.into(),
                AMQPValue::LongString(traceparent.into()),
            );
        }
        let confirm = self
            .channel
            .basic_publish(
                "",
                &self.queue,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &payload,
                BasicProperties::default()
                    .with_message_id(event_id.into())
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2)
                    .with_headers(headers),
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err("the broker could not route the event".into()),
            Confirmation::Nack(_) => Err("the broker refused the event".into()),
            Confirmation::NotRequested => Err("publisher confirms are off".into()),
        }
    }
}

/// The trace context a delivery carries in its `traceparent` header.
fn traceparent(delivery: &lapin::message::Delivery) -> Option<TraceParent> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(TRACEPARENT)? {
        AMQPValue::LongString(value) => TraceParent::parse(&value.to_string()),
        _ => None,
    }
}

/// The notifications service's end: consumes the queue with manual acks
/// (ten unacknowledged deliveries at most) until the task is aborted. Each
/// delivery is handled in a `delivery` span of `instance` with the trace
/// id of its `traceparent` header (a new trace without one), recorded in
/// `traces` as a served request is.
pub async fn consume(
    config: BrokerConfig,
    notifications: Arc<Notifications>,
    instance: &str,
    traces: Traces,
) -> Result<tokio::task::JoinHandle<()>, BoxError> {
    use futures::StreamExt;

    let connection = connect(&config.url).await?;
    let channel = connection.create_channel().await?;
    declare(&channel, &config.queue).await?;
    channel.basic_qos(10, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            &config.queue,
            "notifications-1",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let instance = instance.to_owned();
    Ok(tokio::spawn(async move {
        let _connection = connection;
        while let Some(delivery) = consumer.next().await {
            let delivery = match delivery {
                Ok(delivery) => delivery,
                Err(error) => {
                    tracing::warn!(%error, "the order-event consumer stopped");
                    return;
                }
            };
            let trace = traceparent(&delivery)
                .unwrap_or_else(TraceParent::new_root)
                .child();
            traces.record(&instance, trace.trace_id());
            let span = tracing::info_span!(
                "delivery",
                service = %instance,
                trace_id = %trace.trace_id(),
                queue = %config.queue,
            );
            let handle = async {
                let outcome = match serde_json::from_slice::<OrderEvent>(&delivery.data) {
                    Ok(event) => notifications.record(&event, "amqp"),
                    Err(error) => {
                        tracing::warn!(%error, "not an order event; dropped");
                        let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
                        return;
                    }
                };
                let acked = match outcome {
                    // Recorded: acknowledged, the broker forgets it.
                    Ok(true) => delivery.ack(BasicAckOptions::default()).await,
                    // Recorded, but the ack is "lost" (the fault switch), or
                    // not recorded: back to the queue, delivered again.
                    Ok(false) | Err(_) => {
                        delivery
                            .nack(BasicNackOptions {
                                requeue: true,
                                ..BasicNackOptions::default()
                            })
                            .await
                    }
                };
                if let Err(error) = acked {
                    tracing::warn!(%error, "ack not sent; the broker delivers the event again");
                }
            };
            handle.instrument(span).await;
        }
    }))
}
