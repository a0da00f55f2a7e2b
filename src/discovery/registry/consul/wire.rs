//! Consul's JSON: the registration body sent to the agent and the health
//! entries it answers with.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::discovery::error::DiscoveryError;
use crate::discovery::health::HealthCheck;
use crate::discovery::instance::{Instance, InstanceAddress, MAX_WEIGHT};
use crate::discovery::registry::Registration;
use crate::error::ConfigError;

use super::BACKEND;

/// The shortest `DeregisterCriticalServiceAfter` Consul honours (its reaper
/// runs every 30 s and ignores shorter values).
const MIN_DEREGISTER_AFTER: Duration = Duration::from_secs(60);

/// The JSON body of `/v1/agent/service/register`.
pub(super) fn registration_body(registration: &Registration) -> serde_json::Value {
    let instance = &registration.instance;
    let address = instance.address();
    let mut body = json!({
        "ID": instance.id().as_str(),
        "Name": instance.service().as_str(),
        "Tags": instance.tags(),
        "Address": address.host(),
        "Port": address.port(),
        "Meta": instance.metadata(),
        "Weights": { "Passing": instance.weight(), "Warning": 1 },
    });
    let check_id = format!("service:{}", instance.id());
    let check = match &registration.check {
        HealthCheck::None => None,
        HealthCheck::Ttl { ttl } => Some(json!({
            "CheckID": check_id,
            "Name": format!("TTL check of {}", instance.id()),
            "TTL": go_duration(*ttl),
            "Status": "passing",
            "DeregisterCriticalServiceAfter": go_duration((*ttl).max(MIN_DEREGISTER_AFTER)),
        })),
        HealthCheck::Http(http) => {
            let mut check = json!({
                "CheckID": check_id,
                "Name": format!("HTTP check of {}", instance.id()),
                "HTTP": format!("http://{address}{}", http.path()),
                "Method": "GET",
                "Interval": go_duration(http.interval()),
                "Timeout": go_duration(http.timeout()),
            });
            if let Some(after) = http.deregister_critical_after() {
                check["DeregisterCriticalServiceAfter"] = go_duration(after).into();
            }
            Some(check)
        }
        #[cfg(feature = "tonic")]
        HealthCheck::Grpc(grpc) => {
            // Consul's agent speaks grpc.health.v1 itself: `GRPC` is
            // `<address>` or `<address>/<service>`.
            let target = match grpc.service() {
                "" => address.to_string(),
                service => format!("{address}/{service}"),
            };
            let mut check = json!({
                "CheckID": check_id,
                "Name": format!("gRPC check of {}", instance.id()),
                "GRPC": target,
                "GRPCUseTLS": false,
                "Interval": go_duration(grpc.interval()),
                "Timeout": go_duration(grpc.timeout()),
            });
            if let Some(after) = grpc.deregister_critical_after() {
                check["DeregisterCriticalServiceAfter"] = go_duration(after).into();
            }
            Some(check)
        }
    };
    if let Some(check) = check {
        body["Check"] = check;
    }
    body
}

/// One entry of `/v1/health/service/<name>`.
#[derive(Deserialize)]
struct HealthEntry {
    #[serde(rename = "Node", default)]
    node: Option<NodeEntry>,
    #[serde(rename = "Service")]
    service: ServiceEntry,
}

#[derive(Deserialize)]
struct NodeEntry {
    #[serde(rename = "Address", default)]
    address: String,
}

#[derive(Deserialize)]
struct ServiceEntry {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Service", default)]
    service: String,
    #[serde(rename = "Tags", default)]
    tags: Option<Vec<String>>,
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Port", default)]
    port: u16,
    #[serde(rename = "Meta", default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(rename = "Weights", default)]
    weights: Option<Weights>,
}

#[derive(Deserialize)]
struct Weights {
    #[serde(rename = "Passing", default)]
    passing: Option<i64>,
}

/// Parses a health answer into instances, in id order. Entries that are
/// not valid instances are skipped with a warning; the first of two
/// entries with one id wins.
pub(super) fn parse_health(service: &str, body: &[u8]) -> Result<Vec<Instance>, DiscoveryError> {
    let entries: Vec<HealthEntry> =
        serde_json::from_slice(body).map_err(|e| DiscoveryError::InvalidData {
            backend: BACKEND,
            detail: format!("health of service '{service}' is not the documented JSON: {e}"),
        })?;
    let mut instances: BTreeMap<String, Instance> = BTreeMap::new();
    for entry in entries {
        let ServiceEntry {
            id,
            service: name,
            tags,
            address,
            port,
            meta,
            weights,
        } = entry.service;
        // Consul: an empty service address means the node's address.
        let host = if address.is_empty() {
            entry.node.map(|n| n.address).unwrap_or_default()
        } else {
            address
        };
        let name = if name.is_empty() {
            service.to_owned()
        } else {
            name
        };
        let built = InstanceAddress::new(&host, port).and_then(|address| {
            let mut builder = Instance::builder(&name, &id, address).tags(tags.unwrap_or_default());
            for (key, value) in meta.unwrap_or_default() {
                builder = builder.metadata(key, value);
            }
            if let Some(weight) = weights.and_then(|w| w.passing) {
                let weight = u32::try_from(weight)
                    .ok()
                    .filter(|w| (1..=MAX_WEIGHT).contains(w))
                    .ok_or_else(|| {
                        ConfigError::new(
                            "consul registry",
                            "weight",
                            format!("Weights.Passing must be 1 to {MAX_WEIGHT}, got {weight}"),
                        )
                    })?;
                builder = builder.weight(weight);
            }
            builder.build()
        });
        match built {
            Ok(instance) => match instances.entry(id) {
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(instance);
                }
                std::collections::btree_map::Entry::Occupied(slot) => {
                    tracing::warn!(
                        backend = BACKEND,
                        service,
                        id = slot.key(),
                        "two healthy entries share one service id; keeping the first"
                    );
                }
            },
            Err(error) => {
                tracing::warn!(backend = BACKEND, service, id, %error, "skipping an invalid instance from consul");
            }
        }
    }
    Ok(instances.into_values().collect())
}

/// A duration in Go's `time.ParseDuration` syntax, as Consul reads them.
pub(super) fn go_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos() % 1_000_000 == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}ns", d.as_nanos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_checks_of_ipv6_instances_bracket_the_address() {
        let instance = Instance::builder("api", "api-6", "[::1]:8080")
            .build()
            .expect("valid");
        let body = registration_body(&Registration::new(instance, HealthCheck::http()));
        assert_eq!(body["Address"], "::1");
        assert_eq!(body["Check"]["HTTP"], "http://[::1]:8080/health");
        assert_eq!(body["Check"]["Interval"], "10s");
        assert!(
            body["Check"]
                .get("DeregisterCriticalServiceAfter")
                .is_none()
        );
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn grpc_checks_name_the_address_and_the_service() {
        let instance = Instance::builder("orders", "orders-1", "10.0.0.7:50051")
            .build()
            .expect("valid");
        let check = crate::discovery::GrpcCheck::builder()
            .service("orders.v1.Orders")
            .build()
            .expect("valid");
        let body = registration_body(&Registration::new(instance, HealthCheck::Grpc(check)));
        assert_eq!(body["Check"]["GRPC"], "10.0.0.7:50051/orders.v1.Orders");
        assert_eq!(body["Check"]["GRPCUseTLS"], false);
        assert_eq!(body["Check"]["Timeout"], "5s");
        assert!(body["Check"].get("HTTP").is_none());
    }

    #[test]
    fn durations_use_go_syntax() {
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(go_duration(Duration::from_micros(1500)), "1500000ns");
    }

    #[test]
    fn health_entries_use_the_node_address_when_the_service_has_none() {
        let body = br#"[
            {"Node": {"Node": "n1", "Address": "10.0.0.1"},
             "Service": {"ID": "b", "Service": "api", "Tags": null, "Address": "", "Port": 80,
                         "Meta": null, "Weights": {"Passing": 3, "Warning": 1}},
             "Checks": []},
            {"Node": {"Node": "n2", "Address": "10.0.0.2"},
             "Service": {"ID": "a", "Service": "api", "Tags": ["v2"], "Address": "10.0.0.9",
                         "Port": 81, "Meta": {"zone": "z1"}},
             "Checks": []},
            {"Node": {"Node": "n3", "Address": "10.0.0.3"},
             "Service": {"ID": "bad", "Service": "api", "Address": "", "Port": 82,
                         "Weights": {"Passing": 0, "Warning": 1}},
             "Checks": []}
        ]"#;
        let instances = parse_health("api", body).expect("valid JSON");
        assert_eq!(instances.len(), 2, "the entry with weight 0 is skipped");
        assert_eq!(instances[0].id().as_str(), "a");
        assert_eq!(instances[0].address().to_string(), "10.0.0.9:81");
        assert!(instances[0].has_tag("v2"));
        assert_eq!(instances[1].address().to_string(), "10.0.0.1:80");
        assert_eq!(instances[1].weight(), 3);
        assert!(matches!(
            parse_health("api", b"{}"),
            Err(DiscoveryError::InvalidData { .. })
        ));
    }
}
