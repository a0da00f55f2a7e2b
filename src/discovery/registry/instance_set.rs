//! [`InstanceSet`]: a persistent snapshot of a service's healthy instances.

use std::fmt;

use imbl::OrdMap;
use imbl::ordmap::DiffItem;

use crate::discovery::diff::InstanceChange;
use crate::discovery::instance::{Instance, InstanceId};

/// A snapshot of a service's healthy instances, keyed and ordered by id,
/// that shares its structure with the snapshots it was derived from.
///
/// Cloning one is O(1); [`insert`](Self::insert) and
/// [`remove`](Self::remove) cost O(log n) and leave the clones as they
/// were. Two sets where one was derived from the other by `k` changes
/// share all but O(k log n) of their nodes, and
/// [`changes_to`](Self::changes_to) skips what they share: a registry
/// that publishes one instance's change costs O(log n) to every watcher
/// of [`Registry::watch_sets`](super::Registry::watch_sets), however many
/// instances the service has.
///
/// ```
/// use palisade::discovery::registry::InstanceSet;
/// use palisade::discovery::{Instance, InstanceChange};
///
/// let a = Instance::builder("api", "a", "10.0.0.1:80").build()?;
/// let b = Instance::builder("api", "b", "10.0.0.2:80").build()?;
/// let before: InstanceSet = [a.clone()].into_iter().collect();
/// let mut after = before.clone();
/// after.insert(b.clone());
/// after.remove("a");
/// assert_eq!(
///     before.changes_to(&after),
///     vec![InstanceChange::Removed(a), InstanceChange::Added(b.clone())]
/// );
/// assert_eq!(after.to_vec(), vec![b]);
/// # Ok::<(), palisade::ConfigError>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct InstanceSet {
    instances: OrdMap<InstanceId, Instance>,
}

impl InstanceSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many instances the set holds.
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// The instance with id `id`, if any.
    pub fn get(&self, id: &str) -> Option<&Instance> {
        self.instances.get(id)
    }

    /// Adds `instance`, or replaces the one with its id; returns the
    /// replaced one. O(log n).
    pub fn insert(&mut self, instance: Instance) -> Option<Instance> {
        self.instances.insert(instance.id().clone(), instance)
    }

    /// Removes the instance with id `id`; returns it. O(log n).
    pub fn remove(&mut self, id: &str) -> Option<Instance> {
        self.instances.remove(id)
    }

    /// The instances in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Instance> + '_ {
        self.instances.values()
    }

    /// The instances in id order, copied into a vector. O(n).
    pub fn to_vec(&self) -> Vec<Instance> {
        self.instances.values().cloned().collect()
    }

    /// What changes this set into `next`: removals first, then updates and
    /// additions, each in id order (as
    /// [`SnapshotDiff::apply`](crate::discovery::SnapshotDiff::apply)
    /// reports them). Parts the two sets share are skipped without being
    /// visited: O(k log n) for `k` changes between a set and one derived
    /// from it, O(n) for unrelated sets.
    pub fn changes_to(&self, next: &InstanceSet) -> Vec<InstanceChange> {
        let mut removed = Vec::new();
        let mut changed = Vec::new();
        for item in self.instances.diff(&next.instances) {
            match item {
                DiffItem::Remove(_, old) => removed.push(InstanceChange::Removed(old.clone())),
                DiffItem::Update { new: (_, new), .. } => {
                    changed.push(InstanceChange::Updated(new.clone()))
                }
                DiffItem::Add(_, new) => changed.push(InstanceChange::Added(new.clone())),
            }
        }
        removed.append(&mut changed);
        removed
    }
}

impl FromIterator<Instance> for InstanceSet {
    /// A set of `instances`; when an id appears twice the last one counts.
    fn from_iter<I: IntoIterator<Item = Instance>>(instances: I) -> Self {
        let mut set = Self::new();
        for instance in instances {
            set.insert(instance);
        }
        set
    }
}

impl fmt::Debug for InstanceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.instances.values()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::SnapshotDiff;

    fn instance(id: &str, port: u16) -> Instance {
        Instance::builder("api", id, format!("10.0.0.1:{port}"))
            .build()
            .unwrap()
    }

    #[test]
    fn changes_to_reports_what_snapshot_diff_reports_in_the_same_order() {
        let before = vec![instance("a", 1), instance("b", 1), instance("c", 1)];
        let after = vec![instance("d", 1), instance("c", 2), instance("a", 1)];
        let mut diff = SnapshotDiff::new();
        diff.apply(before.clone());
        let expected = diff.apply(after.clone());
        let from: InstanceSet = before.into_iter().collect();
        let to: InstanceSet = after.into_iter().collect();
        assert_eq!(from.changes_to(&to), expected);
        assert_eq!(
            expected,
            vec![
                InstanceChange::Removed(instance("b", 1)),
                InstanceChange::Updated(instance("c", 2)),
                InstanceChange::Added(instance("d", 1)),
            ]
        );
    }

    #[test]
    fn a_set_derived_by_one_change_diffs_to_exactly_that_change() {
        let big: InstanceSet = (0..10_000)
            .map(|i| instance(&format!("i{i:05}"), 1))
            .collect();
        let mut added = big.clone();
        added.insert(instance("i05000x", 1));
        assert_eq!(
            big.changes_to(&added),
            vec![InstanceChange::Added(instance("i05000x", 1))]
        );
        let mut updated = added.clone();
        updated.insert(instance("i00042", 2));
        assert_eq!(
            added.changes_to(&updated),
            vec![InstanceChange::Updated(instance("i00042", 2))]
        );
        let mut removed = updated.clone();
        removed.remove("i09999");
        assert_eq!(
            updated.changes_to(&removed),
            vec![InstanceChange::Removed(instance("i09999", 1))]
        );
        assert_eq!(big.len(), 10_000, "deriving leaves the original as it was");
        assert!(big.changes_to(&big.clone()).is_empty());
    }

    #[test]
    fn collecting_keeps_the_last_instance_of_an_id_and_lists_in_id_order() {
        let set: InstanceSet = [instance("b", 1), instance("a", 1), instance("b", 2)]
            .into_iter()
            .collect();
        assert_eq!(set.to_vec(), vec![instance("a", 1), instance("b", 2)]);
        assert_eq!(set.get("b"), Some(&instance("b", 2)));
        assert_eq!(set.iter().count(), set.len());
    }
}
