//! What an instance of a service is: its name, id, address, tags, metadata
//! and weight.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use crate::error::ConfigError;

const COMPONENT: &str = "discovery instance";

/// The longest service name or instance id, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// The largest instance weight.
pub const MAX_WEIGHT: u32 = 10_000;

/// The metadata key an instance's weight is read from, when not set with
/// [`InstanceBuilder::weight`].
pub const WEIGHT_METADATA_KEY: &str = "weight";

fn check_name(field: &'static str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::new(COMPONENT, field, "must not be empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(ConfigError::new(
            COMPONENT,
            field,
            format!("must be at most {MAX_NAME_LEN} bytes, got {}", value.len()),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || *c == '/')
    {
        return Err(ConfigError::new(
            COMPONENT,
            field,
            format!(
                "must not contain whitespace, control characters or '/', got {c:?} in {value:?}"
            ),
        ));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Checks `value`: 1 to [`MAX_NAME_LEN`] bytes, no whitespace,
            /// control characters or `/` (backends use it in URLs and keys).
            pub fn new(value: impl AsRef<str>) -> Result<Self, ConfigError> {
                let value = value.as_ref();
                check_name($field, value)?;
                Ok(Self(Arc::from(value)))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = ConfigError;

            fn from_str(s: &str) -> Result<Self, ConfigError> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = ConfigError;

            fn try_from(s: &str) -> Result<Self, ConfigError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = ConfigError;

            fn try_from(s: String) -> Result<Self, ConfigError> {
                Self::new(s)
            }
        }
    };
}

name_type!(
    /// The name of a service, such as `"payments"`: 1 to [`MAX_NAME_LEN`]
    /// bytes without whitespace, control characters or `/`. Cheap to clone.
    ///
    /// ```
    /// use palisade::discovery::ServiceName;
    ///
    /// assert_eq!(ServiceName::new("payments")?.as_str(), "payments");
    /// assert_eq!(ServiceName::new("").unwrap_err().field(), "service");
    /// # Ok::<(), palisade::ConfigError>(())
    /// ```
    ServiceName,
    "service"
);

name_type!(
    /// The id of one instance of a service, unique within the service, such
    /// as `"payments-1"` or `"10.0.0.7:8080"`: 1 to [`MAX_NAME_LEN`] bytes
    /// without whitespace, control characters or `/`. Cheap to clone.
    InstanceId,
    "id"
);

/// Where an instance listens: a host (an IP address or a DNS name) and a
/// port.
///
/// Registries report what their servers hold: Consul and etcd often hold
/// IP addresses, DNS SRV records and Kubernetes hold host names. An address
/// whose host is an IP literal converts to a [`SocketAddr`] with
/// [`socket_addr`](Self::socket_addr); a host name is resolved by whoever
/// connects (a tonic `Channel`, a hyper connector).
///
/// It displays as `host:port`, with brackets around IPv6 hosts, so
/// `format!("http://{}", address)` is a valid base URL.
///
/// ```
/// use palisade::discovery::InstanceAddress;
///
/// let v4: InstanceAddress = "10.0.0.7:8080".parse()?;
/// assert_eq!(v4.port(), 8080);
/// assert!(v4.socket_addr().is_some());
///
/// let v6: InstanceAddress = "[::1]:80".parse()?;
/// assert_eq!(v6.host(), "::1");
/// assert_eq!(v6.to_string(), "[::1]:80");
///
/// let named = InstanceAddress::new("payments-0.payments.svc", 443)?;
/// assert_eq!(named.socket_addr(), None);
/// # Ok::<(), palisade::ConfigError>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceAddress {
    host: Arc<str>,
    port: u16,
}

impl InstanceAddress {
    /// An address from a host (IP literal, without brackets, or DNS name)
    /// and a port. The host must be non-empty, at most 253 bytes, without
    /// whitespace, control characters, `/` or brackets.
    pub fn new(host: impl AsRef<str>, port: u16) -> Result<Self, ConfigError> {
        let host = host.as_ref();
        if host.is_empty() {
            return Err(ConfigError::new(
                COMPONENT,
                "address",
                "host must not be empty",
            ));
        }
        if host.len() > 253 {
            return Err(ConfigError::new(
                COMPONENT,
                "address",
                format!("host must be at most 253 bytes, got {}", host.len()),
            ));
        }
        if let Some(c) = host
            .chars()
            .find(|c| c.is_control() || c.is_whitespace() || matches!(c, '/' | '[' | ']'))
        {
            return Err(ConfigError::new(
                COMPONENT,
                "address",
                format!(
                    "host must not contain whitespace, control characters, '/' or brackets, got {c:?} in {host:?}"
                ),
            ));
        }
        Ok(Self {
            host: Arc::from(host),
            port,
        })
    }

    /// The host: an IP literal (IPv6 without brackets) or a DNS name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The socket address, when the host is an IP literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl From<SocketAddr> for InstanceAddress {
    fn from(addr: SocketAddr) -> Self {
        Self {
            host: Arc::from(addr.ip().to_string()),
            port: addr.port(),
        }
    }
}

impl FromStr for InstanceAddress {
    type Err = ConfigError;

    /// Parses `host:port`, `ipv4:port` or `[ipv6]:port`.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(addr.into());
        }
        let bad = || {
            ConfigError::new(
                COMPONENT,
                "address",
                format!("must be host:port, ipv4:port or [ipv6]:port, got {s:?}"),
            )
        };
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.contains(':') {
            return Err(bad());
        }
        Self::new(host, port)
    }
}

impl fmt::Display for InstanceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for InstanceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One instance of a service, as a registry reports it.
///
/// Built with [`Instance::builder`], which validates every field. Two
/// instances are equal when every field is equal; a registry that reports an
/// instance with the same id but another address, tags, metadata or weight
/// reports a changed instance (see [`InstanceChange::Updated`](super::InstanceChange::Updated)).
///
/// ```
/// use palisade::discovery::Instance;
///
/// let instance = Instance::builder("payments", "payments-1", "10.0.0.7:8080")
///     .tag("v2")
///     .metadata("zone", "eu-west-1a")
///     .metadata("weight", "3")
///     .build()?;
/// assert_eq!(instance.weight(), 3);
/// assert_eq!(instance.address().port(), 8080);
/// assert!(instance.has_tag("v2"));
///
/// let err = Instance::builder("payments", "p", "10.0.0.7:8080")
///     .metadata("weight", "heavy")
///     .build()
///     .unwrap_err();
/// assert_eq!(err.field(), "weight");
/// # Ok::<(), palisade::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    service: ServiceName,
    id: InstanceId,
    address: InstanceAddress,
    tags: Vec<String>,
    metadata: BTreeMap<String, String>,
    weight: u32,
}

impl Instance {
    /// Starts building an instance of `service` with `id` listening on
    /// `address` (anything [`InstanceAddress`] parses, or a [`SocketAddr`]).
    /// Every argument is checked in [`InstanceBuilder::build`].
    pub fn builder(
        service: impl AsRef<str>,
        id: impl AsRef<str>,
        address: impl IntoAddress,
    ) -> InstanceBuilder {
        InstanceBuilder {
            service: service.as_ref().to_owned(),
            id: id.as_ref().to_owned(),
            address: address.into_address(),
            tags: Vec::new(),
            metadata: BTreeMap::new(),
            weight: None,
        }
    }

    /// The service this is an instance of.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// The instance's id, unique within its service.
    pub fn id(&self) -> &InstanceId {
        &self.id
    }

    /// Where the instance listens.
    pub fn address(&self) -> &InstanceAddress {
        &self.address
    }

    /// The instance's tags, in registration order.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// Whether the instance carries `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// The instance's metadata.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The instance's weight for weighted balancing, 1 to [`MAX_WEIGHT`];
    /// 1 unless set or given as metadata `"weight"`.
    pub fn weight(&self) -> u32 {
        self.weight
    }
}

/// Anything that names an instance's address: a `&str` or `String` such as
/// `"10.0.0.7:8080"`, a [`SocketAddr`] or an [`InstanceAddress`]. Parsing
/// errors surface from [`InstanceBuilder::build`].
pub trait IntoAddress {
    /// Converts to an address, or the reason it is not one.
    fn into_address(self) -> Result<InstanceAddress, ConfigError>;
}

impl IntoAddress for InstanceAddress {
    fn into_address(self) -> Result<InstanceAddress, ConfigError> {
        Ok(self)
    }
}

impl IntoAddress for SocketAddr {
    fn into_address(self) -> Result<InstanceAddress, ConfigError> {
        Ok(self.into())
    }
}

impl IntoAddress for &str {
    fn into_address(self) -> Result<InstanceAddress, ConfigError> {
        self.parse()
    }
}

impl IntoAddress for String {
    fn into_address(self) -> Result<InstanceAddress, ConfigError> {
        self.parse()
    }
}

impl IntoAddress for &String {
    fn into_address(self) -> Result<InstanceAddress, ConfigError> {
        self.parse()
    }
}

/// Builds an [`Instance`]; every field is checked in [`build`](Self::build).
#[derive(Debug, Clone)]
#[must_use = "call .build() to get an instance"]
pub struct InstanceBuilder {
    service: String,
    id: String,
    address: Result<InstanceAddress, ConfigError>,
    tags: Vec<String>,
    metadata: BTreeMap<String, String>,
    weight: Option<u32>,
}

impl InstanceBuilder {
    /// Adds a tag (Consul's tags; free text, at most 256 bytes).
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Adds tags.
    pub fn tags<T: Into<String>>(mut self, tags: impl IntoIterator<Item = T>) -> Self {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// Sets a metadata entry. The key [`WEIGHT_METADATA_KEY`] (`"weight"`)
    /// sets the weight unless [`weight`](Self::weight) is called.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the weight, 1 to [`MAX_WEIGHT`]. Default: metadata `"weight"`
    /// if present, else 1.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = Some(weight);
        self
    }

    /// Checks every field and returns the instance, or the first field that
    /// breaks its rule.
    pub fn build(self) -> Result<Instance, ConfigError> {
        let service = ServiceName::new(&self.service)?;
        let id = InstanceId::new(&self.id)?;
        let address = self.address?;
        if let Some(tag) = self
            .tags
            .iter()
            .find(|t| t.is_empty() || t.len() > MAX_NAME_LEN)
        {
            return Err(ConfigError::new(
                COMPONENT,
                "tags",
                format!(
                    "each tag must be 1 to {MAX_NAME_LEN} bytes, got {} bytes",
                    tag.len()
                ),
            ));
        }
        if self.metadata.keys().any(|k| k.is_empty()) {
            return Err(ConfigError::new(
                COMPONENT,
                "metadata",
                "keys must not be empty",
            ));
        }
        let weight = match self.weight {
            Some(weight) => weight,
            None => match self.metadata.get(WEIGHT_METADATA_KEY) {
                Some(text) => text.trim().parse::<u32>().map_err(|_| {
                    ConfigError::new(
                        COMPONENT,
                        "weight",
                        format!(
                            "metadata \"weight\" must be an integer 1 to {MAX_WEIGHT}, got {text:?}"
                        ),
                    )
                })?,
                None => 1,
            },
        };
        if !(1..=MAX_WEIGHT).contains(&weight) {
            return Err(ConfigError::new(
                COMPONENT,
                "weight",
                format!("must be 1 to {MAX_WEIGHT}, got {weight}"),
            ));
        }
        Ok(Instance {
            service,
            id,
            address,
            tags: self.tags,
            metadata: self.metadata,
            weight,
        })
    }
}
