//! Per-digest critical sections between publishing a blob and GC deleting
//! its file. Striped: a fixed set of async mutexes picked by digest, so
//! memory stays constant and unrelated pushes rarely meet. Readers never
//! take these.

use std::hash::{BuildHasher, RandomState};

use tokio::sync::{Mutex, MutexGuard};

const STRIPES: usize = 256;

pub struct DigestLocks {
    stripes: Vec<Mutex<()>>,
    hasher: RandomState,
}

impl DigestLocks {
    pub fn new() -> DigestLocks {
        DigestLocks {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn stripe(&self, digest: &str) -> usize {
        (self.hasher.hash_one(digest) as usize) % STRIPES
    }

    pub async fn lock(&self, digest: &str) -> MutexGuard<'_, ()> {
        self.stripes[self.stripe(digest)].lock().await
    }

    /// Locks the stripes of all `digests`, in stripe order so that two
    /// callers can never deadlock.
    pub async fn lock_many<'a>(
        &self,
        digests: impl Iterator<Item = &'a str>,
    ) -> Vec<MutexGuard<'_, ()>> {
        let mut idx: Vec<usize> = digests.map(|d| self.stripe(d)).collect();
        idx.sort_unstable();
        idx.dedup();
        let mut guards = Vec::with_capacity(idx.len());
        for i in idx {
            guards.push(self.stripes[i].lock().await);
        }
        guards
    }
}
