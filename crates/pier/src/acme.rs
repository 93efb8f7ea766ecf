//! Certificates from an ACME directory for routes with `tls = "acme"` (route tag option
//! `tls=acme`), ordered by one task that acts only on the raft leader, for the whole cluster.
//!
//! Each pass (on a catalog change, and at least every `PASS_EVERY`) collects the hosts whose
//! routes ask for ACME and that have no certificate valid for 30 more days, and orders one per
//! host through `instant-acme`, answering HTTP-01 or TLS-ALPN-01 (`--acme-challenge`; the
//! other one when the CA does not offer the chosen one). The key authorization is written to
//! the store (`acme_challenges`, token → key authorization for HTTP-01; `acme_tls_alpn`,
//! host → key authorization for TLS-ALPN-01), which every gateway follows, so whichever
//! gateway the CA's validator reaches answers it: HTTP-01 on the plain HTTP listener,
//! TLS-ALPN-01 on the HTTPS listener with a validation certificate each gateway makes from the
//! key authorization. The issued chain and key are stored like a provided
//! certificate (key sealed with the server secret in a secure cluster), source `acme`. A
//! failure is recorded per host in `acme_status` (shown by `pier cert ls`) and retried with
//! exponential backoff; the route keeps serving plain HTTP meanwhile.
//!
//! Every write is guarded by the leader term the barrier returned (`Op::leader_term`), so a
//! deposed leader's late writes fail. The ACME account key lives in the store (sealed like
//! certificate keys), so a new leader reuses the account instead of registering another.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use pier_gateway::AcmeChallenges;
use pier_security::seal::SealKey;
use pier_store::{Consistency, Op, Store, Table, Txn, TypedTable, WatchKey};
use serde::{Deserialize, Serialize};

pub const CHALLENGES: Table = Table::from_static("acme_challenges");
const CHALLENGE_TABLE: TypedTable<String> = TypedTable::new(CHALLENGES);
/// TLS-ALPN-01 challenges: host → key authorization.
pub const TLS_ALPN_CHALLENGES: Table = Table::from_static("acme_tls_alpn");
const TLS_ALPN_TABLE: TypedTable<String> = TypedTable::new(TLS_ALPN_CHALLENGES);
const STATUS: TypedTable<AcmeStatus> = TypedTable::new(Table::from_static("acme_status"));
const ACCOUNTS: TypedTable<StoredAccount> = TypedTable::new(Table::from_static("acme_account"));

/// Renew (or order) when a certificate has less than this left.
const RENEW_BEFORE_SECS: i64 = 30 * 24 * 3600;
/// A pass runs at least this often even without catalog changes (expiry moves on by itself).
const PASS_EVERY: Duration = Duration::from_secs(60);
const BACKOFF_FIRST: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(3600);
/// Followers apply a committed write within a heartbeat or two; the CA is told to validate
/// only after this, so a gateway on another server already knows the token.
const SPREAD: Duration = Duration::from_millis(300);

/// One order's deadline, from the new-order request to the downloaded chain.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);

/// The server's ACME settings (`--acme-email`, `--acme-directory`, `--acme-ca-cert`,
/// `--acme-challenge`).
#[derive(Clone, Debug)]
pub struct AcmeConfig {
    pub email: Option<String>,
    pub directory: String,
    /// A PEM root to trust for the directory's HTTPS (a test CA such as pebble's).
    pub ca_cert: Option<PathBuf>,
    /// The challenge answered when the CA offers it; the other one otherwise.
    pub challenge: ChallengeKind,
}

/// The challenge types every gateway can answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ChallengeKind {
    /// On the gateways' plain HTTP port (80 for a public CA).
    #[default]
    #[value(name = "http-01")]
    Http01,
    /// On the gateways' HTTPS port (443 for a public CA), in the TLS handshake.
    #[value(name = "tls-alpn-01")]
    TlsAlpn01,
}

impl ChallengeKind {
    fn acme(self) -> ChallengeType {
        match self {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        }
    }

    fn other(self) -> ChallengeKind {
        match self {
            ChallengeKind::Http01 => ChallengeKind::TlsAlpn01,
            ChallengeKind::TlsAlpn01 => ChallengeKind::Http01,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// A challenge answer written to the store, removed once its order ends either way.
enum Pending {
    Http01 { token: String },
    TlsAlpn01 { host: String },
}

impl Pending {
    fn delete(self) -> Op {
        match self {
            Pending::Http01 { token } => CHALLENGE_TABLE.delete(token),
            Pending::TlsAlpn01 { host } => TLS_ALPN_TABLE.delete(host),
        }
    }
}

/// The last failed order of a host.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct AcmeStatus {
    last_error: String,
    failures: u32,
    at_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    /// `AccountCredentials` JSON, sealed when there is a server secret.
    credentials: String,
    sealed: bool,
}

#[derive(Debug, thiserror::Error)]
enum AcmeError {
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("store: {0}")]
    Store(#[from] pier_store::StoreError),
    #[error("{0}")]
    Other(String),
}

fn account_context(directory: &str) -> String {
    format!("acme-account:{directory}")
}

/// Adds each host's last ACME error to the listing; a host with no certificate yet is
/// listed on its own, so a failing first order is visible.
pub async fn add_status(
    store: &Store,
    views: &mut Vec<pier_api::cert::CertView>,
) -> Result<(), pier_store::StoreError> {
    let status = store
        .read(Consistency::Default, |v| STATUS.list(v, ""))
        .await??;
    for (host, s) in status {
        match views.iter_mut().find(|c| c.host == host) {
            Some(c) => {
                c.last_error = Some(match c.last_error.take() {
                    Some(other) => format!("{}; {other}", s.value.last_error),
                    None => s.value.last_error,
                })
            }
            None => views.push(pier_api::cert::CertView {
                host,
                names: Vec::new(),
                issuer: String::new(),
                not_after: 0,
                source: "acme".into(),
                key_sealed: false,
                added_at_ms: s.value.at_ms,
                last_error: Some(s.value.last_error),
            }),
        }
    }
    Ok(())
}

/// Keeps `challenges` equal to the store's pending challenges, until the process ends.
pub async fn follow_challenges(store: Store, challenges: Arc<AcmeChallenges>) {
    // Validation certificates already made, by host and key authorization: a change to one
    // challenge does not remake the others'.
    let mut made: HashMap<(String, String), Arc<rustls::sign::CertifiedKey>> = HashMap::new();
    loop {
        // Subscribe before reading, so no write between the two is missed.
        let mut watch = store.watch(&[
            WatchKey::prefix(CHALLENGES, ""),
            WatchKey::prefix(TLS_ALPN_CHALLENGES, ""),
        ]);
        let read = store
            .read(Consistency::Stale, |v| {
                Ok::<_, pier_store::StoreError>((
                    CHALLENGE_TABLE.list(v, "")?,
                    TLS_ALPN_TABLE.list(v, "")?,
                ))
            })
            .await;
        match read {
            Ok(Ok((http, tls))) => {
                challenges.replace(http.into_iter().map(|(k, v)| (k, v.value)).collect());
                let mut next = HashMap::new();
                let mut certs = HashMap::new();
                for (host, key_auth) in tls {
                    let key = (host.clone(), key_auth.value);
                    let ck = match made.remove(&key) {
                        Some(ck) => ck,
                        None => match validation_cert(&key.0, &key.1) {
                            Ok(ck) => ck,
                            Err(e) => {
                                tracing::warn!(%host, error = %e, "cannot make the TLS-ALPN-01 certificate");
                                continue;
                            }
                        },
                    };
                    certs.insert(host, Arc::clone(&ck));
                    next.insert(key, ck);
                }
                made = next;
                challenges.replace_tls_alpn(certs);
            }
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(error = %e, "cannot read the ACME challenges; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        watch.changed(PASS_EVERY).await;
    }
}

/// The TLS-ALPN-01 validation certificate of `host`, ready for the gateway's resolver.
fn validation_cert(host: &str, key_auth: &str) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let (cert, key) =
        pier_security::acme::tls_alpn_01_cert(host, key_auth).map_err(|e| e.to_string())?;
    pier_gateway::acme_validation_key(cert.as_bytes(), key.as_bytes()).map_err(|e| e.to_string())
}

/// The manager's memory: the account, and when each failing host may be tried again.
struct Manager {
    store: Store,
    seal: Option<SealKey>,
    cfg: AcmeConfig,
    account: Option<Account>,
    retry_at: HashMap<String, (u32, Instant)>,
    /// The term whose leftovers were cleared.
    cleared_term: Option<u64>,
}

/// Runs the manager until the process ends; it acts only while this server leads.
pub async fn run(store: Store, seal: Option<SealKey>, cfg: AcmeConfig) {
    tracing::info!(directory = %cfg.directory, "ACME manager started");
    let mut m = Manager {
        store,
        seal,
        cfg,
        account: None,
        retry_at: HashMap::new(),
        cleared_term: None,
    };
    loop {
        let mut watch = m.store.watch(&[WatchKey::prefix(Table::SERVICES, "")]);
        // The barrier fails at once on a follower.
        let mut next_due = PASS_EVERY;
        match m.store.leader_barrier().await {
            Ok(term) => match m.begin_term(term).await {
                Err(e) => tracing::warn!(error = %e, "ACME: cannot clear old challenges; retrying"),
                Ok(()) => match m.pass(term).await {
                    Ok(d) => next_due = d,
                    Err(e) => tracing::warn!(error = %e, "ACME pass failed; retrying"),
                },
            },
            Err(e) => {
                tracing::debug!(error = %e, "ACME manager idle: not the leader");
                // Backoff is a leader's memory; a later term starts afresh.
                m.retry_at.clear();
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        // Wake for new routes, when the earliest backoff ends or a certificate falls due.
        let wait = m
            .retry_at
            .values()
            .map(|(_, at)| at.saturating_duration_since(Instant::now()))
            .chain([next_due])
            .min()
            .unwrap_or(PASS_EVERY)
            .clamp(Duration::from_millis(200), PASS_EVERY);
        watch.changed(wait).await;
    }
}

impl Manager {
    /// Challenges left by an earlier leader that died mid-order: no order of theirs is
    /// still going on, so they are removed once per term.
    async fn begin_term(&mut self, term: u64) -> Result<(), AcmeError> {
        if self.cleared_term == Some(term) {
            return Ok(());
        }
        self.store
            .write(Txn {
                ops: vec![
                    Op::leader_term(term),
                    Op::delete_prefix(CHALLENGES, ""),
                    Op::delete_prefix(TLS_ALPN_CHALLENGES, ""),
                ],
            })
            .await?;
        self.cleared_term = Some(term);
        Ok(())
    }

    /// Orders what is due; returns how long until the next certificate is due.
    async fn pass(&mut self, term: u64) -> Result<Duration, AcmeError> {
        let now = i64::try_from(pier_api::time::now_secs()).unwrap_or(i64::MAX);
        let (due, stale, mut next) = self
            .store
            .read(Consistency::Default, |v| {
                let (mut due, mut next) = (Vec::new(), i64::MAX);
                for h in acme_hosts(v) {
                    match crate::certs::renew_at(v, &h, RENEW_BEFORE_SECS)? {
                        Some(at) if at > now => next = next.min(at),
                        _ => due.push(h),
                    }
                }
                // An error recorded for a host that no longer needs an order (the route is
                // gone, or a certificate was added) would show in `cert ls` forever.
                let stale: Vec<String> = STATUS
                    .list(v, "")?
                    .into_iter()
                    .map(|(h, _)| h)
                    .filter(|h| !due.contains(h))
                    .collect();
                Ok::<_, pier_store::StoreError>((due, stale, next))
            })
            .await??;
        if !stale.is_empty() {
            let mut ops = vec![Op::leader_term(term)];
            for h in &stale {
                self.retry_at.remove(h);
                ops.push(STATUS.delete(h.clone()));
            }
            self.store.write(Txn { ops }).await?;
        }
        for host in due {
            if self
                .retry_at
                .get(&host)
                .is_some_and(|(_, at)| *at > Instant::now())
            {
                continue;
            }
            if self.obtain(term, &host).await? {
                // The new certificate's renewal time is not in `next`: look again soon.
                next = now;
            }
        }
        let secs = u64::try_from(next.saturating_sub(now)).unwrap_or(0);
        Ok(Duration::from_secs(secs))
    }

    /// Orders `host`'s certificate and records the outcome. Only a store failure is
    /// returned (the pass stops then); an ACME failure is recorded and backed off.
    /// Returns whether a certificate was stored.
    async fn obtain(&mut self, term: u64, host: &str) -> Result<bool, AcmeError> {
        tracing::info!(%host, "ordering an ACME certificate");
        let mut pending = Vec::new();
        // The ACME client sets no overall deadline: a CA that stops answering must not stall
        // every other host.
        let outcome =
            match tokio::time::timeout(ORDER_TIMEOUT, self.order(term, host, &mut pending)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(AcmeError::Other(format!(
                    "the order took longer than {ORDER_TIMEOUT:?}"
                ))),
            };
        let mut ops = vec![Op::leader_term(term)];
        ops.extend(pending.into_iter().map(Pending::delete));
        let stored = outcome.is_ok();
        match outcome {
            Ok(put) => {
                tracing::info!(%host, "ACME certificate stored");
                self.retry_at.remove(host);
                ops.push(put);
                ops.push(STATUS.delete(host.to_string()));
            }
            Err(AcmeError::Store(e)) => return Err(AcmeError::Store(e)),
            Err(e) => {
                let failures = self.retry_at.get(host).map_or(0, |(n, _)| *n) + 1;
                let backoff = BACKOFF_FIRST
                    .saturating_mul(1 << (failures - 1).min(12))
                    .min(BACKOFF_MAX);
                tracing::warn!(%host, error = %e, retry_in = ?backoff, "ACME order failed");
                self.retry_at
                    .insert(host.to_string(), (failures, Instant::now() + backoff));
                let status = AcmeStatus {
                    last_error: e.to_string(),
                    failures,
                    at_ms: pier_api::time::now_ms(),
                };
                ops.push(STATUS.put(host.to_string(), &status)?);
            }
        }
        self.store.write(Txn { ops }).await?;
        Ok(stored)
    }

    /// One order; returns the write that stores the certificate. Challenge answers written
    /// to the store are pushed to `pending` so the caller removes them either way.
    async fn order(
        &mut self,
        term: u64,
        host: &str,
        pending: &mut Vec<Pending>,
    ) -> Result<Op, AcmeError> {
        let account = self.account(term).await?;
        let ids = [Identifier::Dns(host.to_string())];
        let mut order = account.new_order(&NewOrder::new(&ids)).await?;
        let mut authzs = order.authorizations();
        while let Some(authz) = authzs.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Other(format!(
                        "authorization for {host} is {other:?}"
                    )))
                }
            }
            let preferred = self.cfg.challenge;
            let kind = [preferred, preferred.other()]
                .into_iter()
                .find(|k| authz.challenges.iter().any(|c| c.r#type == k.acme()))
                .ok_or_else(|| {
                    AcmeError::Other(format!(
                        "the CA offers neither http-01 nor tls-alpn-01 for {host}"
                    ))
                })?;
            let mut challenge = authz
                .challenge(kind.acme())
                .ok_or_else(|| AcmeError::Other(format!("no {} challenge", kind.name())))?;
            let key_auth = challenge.key_authorization().as_str().to_string();
            let (entry, put) = match kind {
                ChallengeKind::Http01 => {
                    let token = challenge.token.clone();
                    let put = CHALLENGE_TABLE.put(token.clone(), &key_auth)?;
                    (Pending::Http01 { token }, put)
                }
                ChallengeKind::TlsAlpn01 => {
                    let put = TLS_ALPN_TABLE.put(host.to_string(), &key_auth)?;
                    (
                        Pending::TlsAlpn01 {
                            host: host.to_string(),
                        },
                        put,
                    )
                }
            };
            tracing::info!(%host, challenge = kind.name(), "answering an ACME challenge");
            pending.push(entry);
            self.store
                .write(Txn {
                    ops: vec![Op::leader_term(term), put],
                })
                .await?;
            tokio::time::sleep(SPREAD).await;
            challenge.set_ready().await?;
        }
        let retry = RetryPolicy::new().timeout(Duration::from_secs(90));
        let status = order.poll_ready(&retry).await?;
        if status != OrderStatus::Ready {
            return Err(AcmeError::Other(failure_detail(&mut order, status).await));
        }
        let key_pem = order.finalize().await?;
        let chain = order.poll_certificate(&retry).await?;
        crate::certs::acme_put(host, chain, key_pem, self.seal.as_ref()).map_err(AcmeError::Other)
    }

    /// The account: this process's, else the stored one, else a new one (then stored).
    async fn account(&mut self, term: u64) -> Result<Account, AcmeError> {
        if let Some(a) = &self.account {
            return Ok(a.clone());
        }
        let dir = self.cfg.directory.clone();
        let stored = self
            .store
            .read(Consistency::Default, |v| ACCOUNTS.get(v, &dir))
            .await??;
        let account = match stored {
            Some(s) => {
                let creds = self.open_credentials(&s.value)?;
                self.builder()?.from_credentials(creds).await?
            }
            None => self.register(term).await?,
        };
        self.account = Some(account.clone());
        Ok(account)
    }

    async fn register(&self, term: u64) -> Result<Account, AcmeError> {
        let contact = self.cfg.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let new = NewAccount {
            contact: &contacts,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, creds) = self
            .builder()?
            .create(&new, self.cfg.directory.clone(), None)
            .await?;
        let json = serde_json::to_string(&creds).map_err(|e| AcmeError::Other(e.to_string()))?;
        let stored = match &self.seal {
            Some(seal) => StoredAccount {
                directory: self.cfg.directory.clone(),
                credentials: seal.seal(json.as_bytes(), &account_context(&self.cfg.directory)),
                sealed: true,
            },
            None => StoredAccount {
                directory: self.cfg.directory.clone(),
                credentials: json,
                sealed: false,
            },
        };
        self.store
            .write(Txn {
                ops: vec![
                    Op::leader_term(term),
                    ACCOUNTS.put(self.cfg.directory.clone(), &stored)?,
                ],
            })
            .await?;
        tracing::info!(id = %account.id(), "ACME account registered and stored");
        Ok(account)
    }

    fn open_credentials(&self, s: &StoredAccount) -> Result<AccountCredentials, AcmeError> {
        let json = match (&self.seal, s.sealed) {
            (_, false) => s.credentials.clone().into_bytes(),
            (Some(seal), true) => seal
                .open(&s.credentials, &account_context(&s.directory))
                .map_err(|e| AcmeError::Other(format!("cannot open the ACME account key: {e}")))?,
            (None, true) => {
                return Err(AcmeError::Other(
                    "the ACME account key is sealed but this server holds no secret".into(),
                ))
            }
        };
        serde_json::from_slice(&json).map_err(|e| AcmeError::Other(e.to_string()))
    }

    fn builder(&self) -> Result<instant_acme::AccountBuilder, AcmeError> {
        Ok(match &self.cfg.ca_cert {
            Some(path) => Account::builder_with_root(path)?,
            None => Account::builder()?,
        })
    }
}

/// Every host a route with `tls=acme` names.
fn acme_hosts(v: &pier_store::StateView<'_>) -> BTreeSet<String> {
    let mut hosts = BTreeSet::new();
    for inst in pier_catalog::catalog::read_instances(v) {
        for tag in &inst.tags {
            if let Ok(Some(spec)) = pier_gateway::try_parse_urlprefix_tag(tag) {
                if let (true, Some(h)) = (spec.acme, spec.host) {
                    hosts.insert(h);
                }
            }
        }
    }
    hosts
}

/// Why an order did not become ready: the CA's problem on a challenge, if it gave one.
async fn failure_detail(order: &mut instant_acme::Order, status: OrderStatus) -> String {
    let mut detail = format!("order {status:?}");
    if let Some(p) = &order.state().error {
        detail = format!("{detail}: {p}");
    }
    let mut authzs = order.authorizations();
    while let Some(Ok(authz)) = authzs.next().await {
        for c in &authz.challenges {
            if let Some(p) = &c.error {
                detail = format!("{detail}: {} challenge: {p}", authz.identifier());
            }
        }
    }
    detail
}
