//! ACME HTTP-01 answers: `GET /.well-known/acme-challenge/TOKEN` over plain HTTP is answered
//! with the token's key authorization when this gateway knows the token. The map is filled
//! from the replicated store by the binary, so every gateway answers a challenge that one
//! server's ACME manager started, whichever gateway the CA's validator reaches.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// Token → key authorization, swapped whole.
#[derive(Default)]
pub struct AcmeChallenges {
    answers: ArcSwap<HashMap<String, String>>,
}

impl AcmeChallenges {
    pub fn new() -> Arc<AcmeChallenges> {
        Arc::new(AcmeChallenges::default())
    }

    /// Replaces every answer at once.
    pub fn replace(&self, answers: HashMap<String, String>) {
        self.answers.store(Arc::new(answers));
    }

    /// The key authorization for `token`, if a challenge for it is pending.
    pub fn answer(&self, token: &str) -> Option<String> {
        self.answers.load().get(token).cloned()
    }

    pub fn is_empty(&self) -> bool {
        self.answers.load().is_empty()
    }
}
