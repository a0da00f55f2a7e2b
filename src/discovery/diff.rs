//! Turning successive snapshots of a service's healthy instances into
//! changes, for every consumer of [`Registry::watch`](super::Registry::watch).

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use super::instance::{Instance, InstanceId};

/// How the healthy instances of a service changed between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceChange {
    /// A new instance id.
    Added(Instance),
    /// A known id with another address, tags, metadata or weight; holds the
    /// new instance. Consumers that hold a client per instance rebuild it.
    Updated(Instance),
    /// An id that is no longer healthy or registered; holds the instance
    /// as it was last seen.
    Removed(Instance),
}

impl InstanceChange {
    /// The instance the change is about.
    pub fn instance(&self) -> &Instance {
        match self {
            InstanceChange::Added(i) | InstanceChange::Updated(i) | InstanceChange::Removed(i) => i,
        }
    }
}

/// Remembers the last snapshot of a watch and reports what the next one
/// changed. Registry watches yield full snapshots (robust for backends that
/// list and re-list, like Consul's blocking queries, DNS and an etcd watch
/// that re-lists after compaction); consumers diff them with this.
///
/// ```
/// use palisade::discovery::{Instance, InstanceChange, SnapshotDiff};
///
/// let a = Instance::builder("api", "a", "10.0.0.1:80").build()?;
/// let b = Instance::builder("api", "b", "10.0.0.2:80").build()?;
/// let mut diff = SnapshotDiff::new();
/// assert_eq!(diff.apply(vec![a.clone(), b.clone()]).len(), 2);
/// assert!(diff.apply(vec![b.clone(), a.clone()]).is_empty(), "order does not matter");
/// assert_eq!(diff.apply(vec![b]), vec![InstanceChange::Removed(a)]);
/// # Ok::<(), palisade::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct SnapshotDiff {
    current: BTreeMap<InstanceId, Instance>,
}

impl SnapshotDiff {
    /// Starts from an empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the set with `snapshot` and returns the changes: removals
    /// first, then updates and additions, each in id order. When an id
    /// appears twice in `snapshot` the last one counts.
    pub fn apply(&mut self, snapshot: impl IntoIterator<Item = Instance>) -> Vec<InstanceChange> {
        let mut next: BTreeMap<InstanceId, Instance> = BTreeMap::new();
        for instance in snapshot {
            next.insert(instance.id().clone(), instance);
        }
        let mut changes = Vec::new();
        let previous = std::mem::take(&mut self.current);
        for (id, old) in &previous {
            if !next.contains_key(id) {
                changes.push(InstanceChange::Removed(old.clone()));
            }
        }
        for (id, instance) in &next {
            match previous.get(id) {
                None => changes.push(InstanceChange::Added(instance.clone())),
                Some(old) if old != instance => {
                    changes.push(InstanceChange::Updated(instance.clone()))
                }
                Some(_) => {}
            }
        }
        self.current = next;
        changes
    }

    /// Applies one change (for backends with incremental watches that keep
    /// the current set here and publish [`snapshot`](Self::snapshot)s).
    /// Returns `false` when the change changed nothing.
    pub fn apply_change(&mut self, change: InstanceChange) -> bool {
        match change {
            InstanceChange::Added(instance) | InstanceChange::Updated(instance) => {
                match self.current.entry(instance.id().clone()) {
                    Entry::Occupied(mut e) if e.get() != &instance => {
                        e.insert(instance);
                        true
                    }
                    Entry::Occupied(_) => false,
                    Entry::Vacant(e) => {
                        e.insert(instance);
                        true
                    }
                }
            }
            InstanceChange::Removed(instance) => self.current.remove(instance.id()).is_some(),
        }
    }

    /// The current set, in id order.
    pub fn snapshot(&self) -> Vec<Instance> {
        self.current.values().cloned().collect()
    }

    /// The instance with `id`, if in the current set.
    pub fn get(&self, id: &str) -> Option<&Instance> {
        self.current.get(id)
    }

    /// How many instances the current set holds.
    pub fn len(&self) -> usize {
        self.current.len()
    }

    /// Whether the current set is empty.
    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }
}
