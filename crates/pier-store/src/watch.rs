//! Watch registry: one channel per distinct (table, key) and (table, prefix), shared by every
//! watcher of it, dropped when the last watcher goes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::select_all;
use tokio::sync::watch;

use crate::model::WatchKey;
use crate::state::Change;

#[derive(Default)]
struct TableWatches {
    exact: HashMap<String, watch::Sender<u64>>,
    prefix: HashMap<String, watch::Sender<u64>>,
}

#[derive(Default)]
pub(crate) struct WatchRegistry {
    tables: Mutex<HashMap<String, TableWatches>>,
}

fn bump(tx: &watch::Sender<u64>) {
    tx.send_modify(|v| *v = v.wrapping_add(1));
}

impl WatchRegistry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, TableWatches>> {
        // A panic while holding this lock cannot leave the maps inconsistent (single inserts
        // and removes), so a poisoned lock is still usable.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe(self: &Arc<Self>, keys: &[WatchKey]) -> Watch {
        let mut tables = self.lock();
        let mut rxs = Vec::with_capacity(keys.len());
        for wk in keys {
            let (table, map, key) = match wk {
                WatchKey::Key { table, key } => {
                    let tw = tables.entry(table.as_str().to_string()).or_default();
                    (table, &mut tw.exact, key)
                }
                WatchKey::Prefix { table, prefix } => {
                    let tw = tables.entry(table.as_str().to_string()).or_default();
                    (table, &mut tw.prefix, prefix)
                }
            };
            let _ = table;
            let tx = map
                .entry(key.clone())
                .or_insert_with(|| watch::channel(0u64).0);
            rxs.push(tx.subscribe());
        }
        Watch {
            rxs,
            keys: keys.to_vec(),
            registry: Some(self.clone()),
        }
    }

    fn release(&self, keys: &[WatchKey]) {
        let mut tables = self.lock();
        for wk in keys {
            let (table, is_prefix, key) = match wk {
                WatchKey::Key { table, key } => (table, false, key),
                WatchKey::Prefix { table, prefix } => (table, true, prefix),
            };
            let Some(tw) = tables.get_mut(table.as_str()) else {
                continue;
            };
            let map = if is_prefix {
                &mut tw.prefix
            } else {
                &mut tw.exact
            };
            if map.get(key).is_some_and(|tx| tx.receiver_count() == 0) {
                map.remove(key);
            }
            if tw.exact.is_empty() && tw.prefix.is_empty() {
                tables.remove(table.as_str());
            }
        }
    }

    /// Wakes the watchers of every changed key: exact watchers of the key and prefix watchers of
    /// every prefix of it. Nobody else.
    pub fn notify(&self, changes: &[Change]) {
        let tables = self.lock();
        if tables.is_empty() {
            return;
        }
        for change in changes {
            let Some(tw) = tables.get(change.table()) else {
                continue;
            };
            match change {
                Change::Put { key, .. } | Change::Delete { key, .. } => {
                    if let Some(tx) = tw.exact.get(key) {
                        bump(tx);
                    }
                    if tw.prefix.is_empty() {
                        continue;
                    }
                    if let Some(tx) = tw.prefix.get("") {
                        bump(tx);
                    }
                    for (i, c) in key.char_indices() {
                        let end = i + c.len_utf8();
                        if let Some(tx) = tw.prefix.get(&key[..end]) {
                            bump(tx);
                        }
                    }
                }
                // Reaping drops history nobody reads; live data is unchanged.
                Change::ReapTombstones { .. } => {}
            }
        }
    }

    /// After a snapshot install anything may have changed.
    pub fn notify_all(&self) {
        let tables = self.lock();
        for tw in tables.values() {
            tw.exact.values().chain(tw.prefix.values()).for_each(bump);
        }
    }

    #[cfg(test)]
    pub fn channel_count(&self) -> usize {
        self.lock()
            .values()
            .map(|t| t.exact.len() + t.prefix.len())
            .sum()
    }
}

/// A subscription to some keys and prefixes. Take it before reading, then call
/// [`Watch::changed`]: a write between the read and the wait is not missed.
pub struct Watch {
    rxs: Vec<watch::Receiver<u64>>,
    keys: Vec<WatchKey>,
    registry: Option<Arc<WatchRegistry>>,
}

impl Watch {
    /// Waits until one of the watched keys or prefixes is written (true) or `timeout` passes
    /// (false). A change since the subscription or the previous call counts at once. Also
    /// returns true when the store shuts down, so callers re-read and see the error.
    pub async fn changed(&mut self, timeout: Duration) -> bool {
        if self.rxs.is_empty() {
            tokio::time::sleep(timeout).await;
            return false;
        }
        let woke = {
            let futs = self.rxs.iter_mut().map(|rx| Box::pin(rx.changed()));
            tokio::time::timeout(timeout, select_all(futs))
                .await
                .is_ok()
        };
        if woke {
            // Any wake means "read again"; what happened so far is covered by that read.
            for rx in &mut self.rxs {
                rx.borrow_and_update();
            }
        }
        woke
    }

    pub fn keys(&self) -> &[WatchKey] {
        &self.keys
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Receivers first, so the registry sees the channels as unused.
        self.rxs.clear();
        if let Some(reg) = self.registry.take() {
            reg.release(&self.keys);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Table;

    #[tokio::test]
    async fn shared_channels_are_released() {
        let reg = Arc::new(WatchRegistry::default());
        let w1 = reg.subscribe(&[WatchKey::prefix(Table::SERVICES, "web")]);
        let w2 = reg.subscribe(&[WatchKey::prefix(Table::SERVICES, "web")]);
        assert_eq!(reg.channel_count(), 1);
        drop(w1);
        assert_eq!(reg.channel_count(), 1);
        drop(w2);
        assert_eq!(reg.channel_count(), 0);
    }

    #[tokio::test]
    async fn only_matching_keys_wake() {
        let reg = Arc::new(WatchRegistry::default());
        let mut w = reg.subscribe(&[WatchKey::prefix(Table::KV, "a/")]);
        reg.notify(&[Change::Put {
            table: "kv".into(),
            key: "b/1".into(),
        }]);
        reg.notify(&[Change::Put {
            table: "nodes".into(),
            key: "a/1".into(),
        }]);
        assert!(!w.changed(Duration::from_millis(20)).await);
        reg.notify(&[Change::Delete {
            table: "kv".into(),
            key: "a/ü/x".into(),
        }]);
        assert!(w.changed(Duration::from_millis(20)).await);
        assert!(!w.changed(Duration::from_millis(20)).await);
    }
}
