//! Names of sagas and of the executors that own them.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::ConfigError;

/// The identity of one saga instance: 128 random bits, written as 32
/// lowercase hex digits.
///
/// ```
/// use palisade::saga::SagaId;
///
/// let id = SagaId::from_u128(0xfeed);
/// assert_eq!(id.to_string(), "0000000000000000000000000000feed");
/// assert_eq!("0000000000000000000000000000feed".parse::<SagaId>().unwrap(), id);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SagaId(u128);

impl SagaId {
    /// A new random id.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The id with these bits.
    pub const fn from_u128(bits: u128) -> Self {
        Self(bits)
    }

    /// The id's bits.
    pub const fn as_u128(self) -> u128 {
        self.0
    }
}

impl fmt::Display for SagaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for SagaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SagaId({self})")
    }
}

/// The text was not 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a saga id is 32 hex digits, got {0:?}")]
pub struct InvalidSagaId(String);

impl FromStr for SagaId {
    type Err = InvalidSagaId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InvalidSagaId(s.to_owned()));
        }
        u128::from_str_radix(s, 16)
            .map(Self)
            .map_err(|_| InvalidSagaId(s.to_owned()))
    }
}

/// The name of a saga executor as a lease owner (for example a host name
/// and process number).
///
/// An executor restarted under the same owner id takes back the sagas it
/// owned at once, without waiting for their leases to expire; give every
/// concurrently running executor a different one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerId(Arc<str>);

impl OwnerId {
    /// The longest owner id accepted, in bytes.
    pub const MAX_LEN: usize = 256;

    /// An owner id: 1 to [`MAX_LEN`](Self::MAX_LEN) bytes, no whitespace or
    /// control characters.
    pub fn new(id: impl AsRef<str>) -> Result<Self, ConfigError> {
        let id = id.as_ref();
        if id.is_empty() || id.len() > Self::MAX_LEN {
            return Err(ConfigError::new(
                "saga executor",
                "owner",
                format!("must be 1 to {} bytes, got {}", Self::MAX_LEN, id.len()),
            ));
        }
        if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError::new(
                "saga executor",
                "owner",
                format!("must not contain whitespace or control characters, got {id:?}"),
            ));
        }
        Ok(Self(Arc::from(id)))
    }

    /// The owner id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnerId({:?})", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saga_ids_round_trip_through_text() {
        let id = SagaId::random();
        assert_eq!(id.to_string().parse::<SagaId>(), Ok(id));
        assert!("xyz".parse::<SagaId>().is_err());
        assert!(
            "+0000000000000000000000000000fee"
                .parse::<SagaId>()
                .is_err()
        );
    }

    #[test]
    fn owner_ids_are_validated() {
        assert_eq!(OwnerId::new("host-1:42").unwrap().as_str(), "host-1:42");
        assert_eq!(OwnerId::new("").unwrap_err().field(), "owner");
        assert_eq!(OwnerId::new("a b").unwrap_err().field(), "owner");
        assert!(OwnerId::new("x".repeat(257)).is_err());
    }
}
