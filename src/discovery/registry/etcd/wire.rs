//! The JSON stored under an instance's key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::discovery::instance::{Instance, InstanceAddress};
use crate::error::ConfigError;

/// The JSON stored under an instance's key.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredInstance {
    service: String,
    id: String,
    host: String,
    port: u16,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default = "default_weight")]
    weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl StoredInstance {
    pub(super) fn of(instance: &Instance) -> Self {
        Self {
            service: instance.service().to_string(),
            id: instance.id().to_string(),
            host: instance.address().host().to_owned(),
            port: instance.address().port(),
            tags: instance.tags().to_vec(),
            metadata: instance.metadata().clone(),
            weight: instance.weight(),
        }
    }

    pub(super) fn into_instance(self) -> Result<Instance, ConfigError> {
        let address = InstanceAddress::new(&self.host, self.port)?;
        let mut builder = Instance::builder(&self.service, &self.id, address)
            .tags(self.tags)
            .weight(self.weight);
        for (key, value) in self.metadata {
            builder = builder.metadata(key, value);
        }
        builder.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_instances_round_trip() {
        let instance = Instance::builder("api", "api-1", "[::1]:80")
            .tag("v2")
            .metadata("zone", "a")
            .weight(4)
            .build()
            .expect("valid");
        let json = serde_json::to_string(&StoredInstance::of(&instance)).expect("json");
        let back: StoredInstance = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.into_instance().expect("valid"), instance);
    }
}
