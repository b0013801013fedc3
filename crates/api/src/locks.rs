//! One lock per adapter name, so changes to the same adapter (create, update, delete, and the
//! rollbacks of failed deployments) never interleave within this process. Changes to different
//! adapters run in parallel. Entries are dropped when nobody holds or waits for them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use mcp_gateway_core::AdapterName;
use tokio::sync::OwnedMutexGuard;

type Locks = Arc<Mutex<HashMap<AdapterName, Arc<tokio::sync::Mutex<()>>>>>;

#[derive(Clone, Default)]
pub(crate) struct NameLocks(Locks);

impl NameLocks {
    /// Waits until no other change of `name` is in progress.
    pub(crate) async fn lock(&self, name: &AdapterName) -> NameGuard {
        let lock = {
            let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(map.entry(name.clone()).or_default())
        };
        NameGuard {
            guard: Some(lock.lock_owned().await),
            locks: Arc::clone(&self.0),
            name: name.clone(),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// Held while one adapter is being changed.
pub(crate) struct NameGuard {
    guard: Option<OwnedMutexGuard<()>>,
    locks: Locks,
    name: AdapterName,
}

impl Drop for NameGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        if map
            .get(&self.name)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn changes_of_one_name_wait_for_each_other_and_entries_are_dropped() {
        let locks = NameLocks::default();
        let a = AdapterName::new("a").unwrap();
        let first = locks.lock(&a).await;
        let other = locks.lock(&AdapterName::new("b").unwrap()).await;
        let waiting = tokio::spawn({
            let (locks, a) = (locks.clone(), a.clone());
            async move { drop(locks.lock(&a).await) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        drop(first);
        waiting.await.unwrap();
        drop(other);
        assert_eq!(locks.len(), 0);
    }
}
