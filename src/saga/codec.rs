//! How saga inputs and step outputs are turned into bytes for the log.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::BoxError;

/// Encodes saga inputs and step outputs for the log, and decodes them for
/// later steps and for recovery.
///
/// [`JsonCodec`] is the default. A codec must decode what it encoded in an
/// earlier process: changing it invalidates the logs of unfinished sagas.
pub trait Codec: fmt::Debug + Send + Sync + 'static {
    /// Encodes `value`.
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>, CodecError>;

    /// Decodes a `T` from `bytes`.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError>;
}

/// JSON with serde_json: readable in the log, the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(value).map_err(|e| CodecError::new(format!("cannot encode: {e}"), e))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        serde_json::from_slice(bytes).map_err(|e| CodecError::new(format!("cannot decode: {e}"), e))
    }
}

/// A value could not be encoded or decoded, or a step output was asked for
/// that does not exist.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CodecError {
    message: String,
    #[source]
    source: Option<BoxError>,
}

impl CodecError {
    /// An error with a message and its cause.
    pub fn new(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// An error with a message only.
    pub fn msg(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }
}
