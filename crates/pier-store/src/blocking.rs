//! Blocking queries, Consul style, over store watches: the one implementation behind the
//! catalog's `/v1/*` reads, the KV API and the orchestrator's watches (`?index=&wait=`).
//!
//! A query is a function of the state that returns its result and the exact set of keys and
//! prefixes the result depends on. Its index is `StateView::index_of` of that set, so it moves
//! only when something the result reads changes (never because of unrelated writes) and never
//! goes backwards (deletes leave tombstones). The loop:
//!
//! 1. read → `(result, keys, index)`;
//! 2. answer if the caller did not block (`index=0`), if `index != min_index` (newer, or
//!    *older* after a restore: Consul resets the client then), or the wait is over;
//! 3. if no subscription covers exactly `keys`, subscribe to `keys` and go back to 1 — the
//!    subscription is taken before the read that the wait relies on, so nothing falls between;
//! 4. wait for a change of a watched key or the deadline, then go back to 1.
//!
//! The key set depends on the result (a service's watchers also watch the nodes it runs on),
//! which is why step 3 compares sets instead of subscribing once.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::error::StoreError;
use crate::{Consistency, StateView, Store, WatchKey};

/// Consul's default `wait`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Consul's maximum `wait`; above it the request is refused with 400.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// How to run a read: freshness, and whether and how long to block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryOptions {
    pub consistency: Consistency,
    /// 0 = answer at once; otherwise hold until the result's index differs from this.
    pub min_index: u64,
    /// How long to hold at most (jitter is added by [`QueryOptions::with_jitter`]).
    pub wait: Duration,
}

impl Default for QueryOptions {
    fn default() -> Self {
        QueryOptions {
            consistency: Consistency::Default,
            min_index: 0,
            wait: DEFAULT_WAIT,
        }
    }
}

impl QueryOptions {
    /// A non-blocking read at the given consistency.
    pub fn now(consistency: Consistency) -> QueryOptions {
        QueryOptions {
            consistency,
            ..QueryOptions::default()
        }
    }

    /// Adds up to wait/16 of random jitter so that many watchers with the same wait do not all
    /// come back at the same instant (Consul does the same).
    pub fn with_jitter(mut self) -> QueryOptions {
        let max_jitter_ms = (self.wait.as_millis() / 16) as u64;
        if max_jitter_ms > 0 {
            let jitter = rand::rng().random_range(0..=max_jitter_ms);
            self.wait += Duration::from_millis(jitter);
        }
        self
    }
}

/// Runs `query` as a blocking query. `query` returns its result and the keys it depends on;
/// the answer is `(index, result)`, the index being `StateView::index_of` those keys.
pub async fn blocking_query<R, E, F>(
    store: &Store,
    opts: &QueryOptions,
    query: F,
) -> Result<(u64, R), E>
where
    E: From<StoreError>,
    F: Fn(&StateView<'_>) -> Result<(R, Vec<WatchKey>), E>,
{
    let deadline = Instant::now() + opts.wait;
    let mut subscription: Option<(Vec<WatchKey>, crate::Watch)> = None;
    loop {
        let (value, keys, index) = store
            .read(opts.consistency, |view| {
                let (value, keys) = query(view)?;
                let index = view.index_of(&keys);
                Ok::<_, E>((value, keys, index))
            })
            .await??;
        let now = Instant::now();
        if opts.min_index == 0 || index != opts.min_index || now >= deadline {
            return Ok((index, value));
        }
        let covered = matches!(&subscription, Some((watched, _)) if *watched == keys);
        if !covered {
            let watch = store.watch(&keys);
            subscription = Some((keys, watch));
            continue;
        }
        if let Some((_, watch)) = subscription.as_mut() {
            if !watch.changed(deadline - now).await {
                return Ok((index, value));
            }
        }
    }
}
