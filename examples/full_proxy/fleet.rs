//! A fleet: several instances on one shared admin store (Redis) behave as one gateway.
//!
//! The admin store holds what operators change at run time (keys added and removed, client
//! tokens created and revoked, policy settings) and a version every write moves. Each instance
//! polls that version every `FLEET_SYNC_MS` (default 200 ms: one `GET`), loads the whole state
//! when it moved (or went down: a store that lost writes) and reconciles its own view with it:
//! the pool's keys, the token store and the request policy. A full load every
//! [`RESYNC_EVERY`] repairs whatever a version could not tell (a store emptied and written
//! back to the same version). The request path never reads the store: it reads the local
//! view this task keeps current.
//!
//! While the store is unreachable an instance serves on its last known state; once it
//! answers again, the first poll sees the version moved and applies everything that changed
//! meanwhile, revocations first among them. `/status` shows how old the view is.
//!
//! What this instance takes away (a token revoked, a key removed) while the store is down is
//! in force here at once and kept in a pending list, written to the store as soon as it
//! answers, and never undone by a reload in between.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tower_gemini::auth::{MemoryTokenStore, TokenInfo};
use tower_gemini::facts::Account;
use tower_gemini::key_rotation::KeyPool;
use tower_gemini::persist::{AdminState, AdminStore, TokenRecord};
use tower_gemini::policy::{PolicyConfig, PolicyHandle};
use tower_gemini::secret::{ApiKey, TokenDigest};

/// A full load of the shared state at least this often, whatever the version says.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// What the configuration gives, before any admin change: the base every reload starts from.
#[derive(Clone, Default)]
pub struct Base {
    /// `GEMINI_API_KEYS` (or the demo key).
    pub keys: Vec<ApiKey>,
    /// Client tokens from `ALLOWED_TOKENS`, `TOKENS_FILE` (or the one minted at start).
    pub tokens: Vec<BaseToken>,
    /// The admin token: never revoked by a reload.
    pub admin_token: String,
    /// The request policy from the variables.
    pub policy: PolicyConfig,
}

/// A client token the configuration gives.
#[derive(Clone, Debug)]
pub struct BaseToken {
    /// The token's digest (`TOKENS_FILE` may give only that).
    pub digest: TokenDigest,
    /// Its name.
    pub name: String,
    /// What it may do beyond the global settings.
    pub account: Account,
    /// Where it comes from: `config` (`ALLOWED_TOKENS`, a minted one) or `file`.
    pub source: &'static str,
}

/// What this instance knows of the shared state, for `/status` and `/metrics`.
#[derive(Default)]
struct View {
    /// The store's version last applied.
    version: Option<u64>,
    /// When the store last answered.
    last_ok: Option<Instant>,
    /// When the state was last loaded whole.
    last_load: Option<Instant>,
    /// The last store error, while the store does not answer.
    error: Option<String>,
    /// Reloads applied (the version moved, or the periodic resync).
    reloads: u64,
    /// Changes to the local view made by reloads (keys, tokens, policy).
    changes: u64,
}

/// Admin changes this instance made that the store has not taken yet.
#[derive(Default)]
struct Pending {
    revoked: HashMap<TokenDigest, TokenRecord>,
    removed_keys: HashSet<String>,
}

/// The shared-state follower of one instance (see the module docs).
pub struct Fleet {
    store: Arc<dyn AdminStore>,
    base: Base,
    pool: Arc<KeyPool>,
    tokens: Arc<MemoryTokenStore>,
    policy: Arc<Mutex<PolicyConfig>>,
    policy_handle: PolicyHandle,
    every: Duration,
    /// Admin changes and reloads, one at a time: a reload never lands between an admin
    /// change's local effect and its write to the store.
    pub lock: tokio::sync::Mutex<()>,
    view: Mutex<View>,
    pending: Mutex<Pending>,
    /// Whether other instances may share the store (Redis): only then is it followed.
    shared: bool,
    /// This instance's name in the fleet's heartbeats (`HOSTNAME` and a random suffix).
    instance: String,
}

/// An instance whose heartbeat is older than this is not waited for (gone, or cut off).
const ALIVE: Duration = Duration::from_secs(3);
/// An instance silent for this long is forgotten.
const FORGET: Duration = Duration::from_secs(600);
/// The most an admin change waits for every live instance to have it in force.
const WAIT_EVERYWHERE: Duration = Duration::from_secs(2);

impl Fleet {
    /// A follower of `store` for this instance's pool, tokens and policy; `loaded` is the
    /// version of the state the instance started on (`Some(None)`: a store without
    /// versions; `None`: the store could not be read at start).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn AdminStore>,
        base: Base,
        pool: Arc<KeyPool>,
        tokens: Arc<MemoryTokenStore>,
        policy: Arc<Mutex<PolicyConfig>>,
        policy_handle: PolicyHandle,
        every: Duration,
        loaded: Option<Option<u64>>,
    ) -> Arc<Fleet> {
        let shared = store.kind() == "redis";
        let now = Instant::now();
        let view = View {
            version: loaded.flatten(),
            last_ok: loaded.map(|_| now),
            last_load: loaded.map(|_| now),
            ..View::default()
        };
        Arc::new(Fleet {
            store,
            base,
            pool,
            tokens,
            policy,
            policy_handle,
            every,
            lock: tokio::sync::Mutex::new(()),
            view: Mutex::new(view),
            pending: Mutex::new(Pending::default()),
            shared,
            instance: format!(
                "{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "gateway".into()),
                &tower_gemini::auth::mint_token("")[..8]
            ),
        })
    }

    /// Follows the store until the fleet is dropped (only when the store is shared).
    pub fn spawn(self: &Arc<Self>) {
        if !self.shared {
            return;
        }
        let weak = Arc::downgrade(self);
        let every = self.every;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(fleet) = weak.upgrade() else { return };
                fleet.poll().await;
            }
        });
    }

    /// One poll: send what is pending, read the version, reload when it moved (or when the
    /// periodic resync is due).
    pub async fn poll(&self) {
        self.flush_pending().await;
        let version = match self.store.version().await {
            Ok(v) => v,
            Err(e) => return self.failed(&e),
        };
        let due = {
            let view = self.lock_view();
            version.is_none()
                || version != view.version
                || view.last_load.is_none_or(|t| t.elapsed() >= RESYNC_EVERY)
        };
        if !due {
            {
                let mut view = self.lock_view();
                view.last_ok = Some(Instant::now());
                view.error = None;
            }
            self.heartbeat(version).await;
            return;
        }
        let _guard = self.lock.lock().await;
        match self.store.load().await {
            Ok(state) => {
                let changes = self.apply(&state);
                let mut view = self.lock_view();
                let now = Instant::now();
                if view.error.take().is_some() {
                    tracing::info!(
                        "shared admin state reachable again; local view brought up to date"
                    );
                }
                view.version = version;
                view.last_ok = Some(now);
                view.last_load = Some(now);
                view.reloads += 1;
                view.changes += changes;
            }
            Err(e) => return self.failed(&e),
        }
        drop(_guard);
        self.heartbeat(version).await;
        if self.lock_view().reloads % 100 == 1 {
            self.forget_the_gone().await;
        }
    }

    /// Tells the fleet which version this instance has in force.
    async fn heartbeat(&self, version: Option<u64>) {
        if let Some(v) = version {
            if let Err(e) = self.store.report_applied(&self.instance, v).await {
                tracing::debug!(error = %e, "fleet heartbeat not sent");
            }
        }
    }

    async fn forget_the_gone(&self) {
        let Ok(all) = self.store.applied().await else {
            return;
        };
        let now = unix_ms();
        for (instance, _, at) in all {
            if now.saturating_sub(at) > FORGET.as_millis() as u64 {
                let _ = self.store.forget_instance(&instance).await;
            }
        }
    }

    /// Waits (at most 2 s) until every live instance of the fleet has the store's current
    /// version in force, so an admin change answered after this holds on the very next
    /// request anywhere. False when some instance did not confirm in time (cut off from the
    /// store, or slow); the change still reaches it as soon as it polls.
    pub async fn wait_everywhere(&self) -> bool {
        if !self.shared {
            return true;
        }
        let Ok(Some(target)) = self.store.version().await else {
            return false;
        };
        let deadline = Instant::now() + WAIT_EVERYWHERE;
        let pause = (self.every / 4).max(Duration::from_millis(10));
        loop {
            if let Ok(all) = self.store.applied().await {
                let now = unix_ms();
                let alive = |at: u64| now.saturating_sub(at) < ALIVE.as_millis() as u64;
                let me = all
                    .iter()
                    .any(|(i, v, _)| *i == self.instance && *v >= target);
                let lagging: Vec<&str> = all
                    .iter()
                    .filter(|(_, v, at)| alive(*at) && *v < target)
                    .map(|(i, _, _)| i.as_str())
                    .collect();
                if me && lagging.is_empty() {
                    return true;
                }
                if Instant::now() >= deadline {
                    tracing::warn!(
                        lagging = ?lagging,
                        "admin change saved, but not yet confirmed in force on every instance"
                    );
                    return false;
                }
            } else if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// The instances of the fleet as their heartbeats tell: `[{instance, version, age_ms}]`.
    pub async fn instances(&self) -> Value {
        let Ok(all) = self.store.applied().await else {
            return Value::Null;
        };
        let now = unix_ms();
        Value::Array(
            all.into_iter()
                .filter(|(_, _, at)| now.saturating_sub(*at) < FORGET.as_millis() as u64)
                .map(|(instance, version, at)| {
                    json!({
                        "instance": instance,
                        "version": version,
                        "age_ms": now.saturating_sub(at),
                        "this": instance == self.instance,
                    })
                })
                .collect(),
        )
    }

    fn failed(&self, e: &tower_gemini::Error) {
        let mut view = self.lock_view();
        if view.error.is_none() {
            tracing::warn!(
                error = %e,
                "shared admin state unreachable: serving on the last known state"
            );
        }
        view.error = Some(e.to_string());
    }

    fn lock_view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A revocation in force here that the store did not take: retried every poll.
    pub fn pending_revocation(&self, record: TokenRecord) {
        self.lock_pending().revoked.insert(record.digest, record);
    }

    /// A key removal in force here that the store did not take: retried every poll.
    pub fn pending_removal(&self, id: &str) {
        self.lock_pending().removed_keys.insert(id.to_owned());
    }

    async fn flush_pending(&self) {
        let (revoked, removed): (Vec<TokenRecord>, Vec<String>) = {
            let p = self.lock_pending();
            if p.revoked.is_empty() && p.removed_keys.is_empty() {
                return;
            }
            (
                p.revoked.values().cloned().collect(),
                p.removed_keys.iter().cloned().collect(),
            )
        };
        for record in revoked {
            if self.store.revoke_token(&record).await.is_ok() {
                tracing::info!(token.id = %record.id, "pending revocation saved");
                self.lock_pending().revoked.remove(&record.digest);
            }
        }
        for id in removed {
            if self.store.remove_key(&id).await.is_ok() {
                tracing::info!(key.id = %id, "pending key removal saved");
                self.lock_pending().removed_keys.remove(&id);
            }
        }
    }

    /// Brings the pool, the tokens and the policy in line with `state` over the base; the
    /// number of changes made.
    pub fn apply(&self, state: &AdminState) -> u64 {
        let pending = {
            let p = self.lock_pending();
            (
                p.revoked.keys().copied().collect::<HashSet<_>>(),
                p.removed_keys.clone(),
            )
        };
        let mut changes = 0;
        changes += self.apply_keys(state, &pending.1);
        changes += self.apply_tokens(state, &pending.0);
        changes += self.apply_policy(state);
        changes
    }

    fn apply_keys(&self, state: &AdminState, pending_removed: &HashSet<String>) -> u64 {
        let removed: HashSet<&str> = state
            .removed_keys
            .iter()
            .map(String::as_str)
            .chain(pending_removed.iter().map(String::as_str))
            .collect();
        let mut desired: Vec<(String, ApiKey)> = Vec::new();
        for key in &self.base.keys {
            let id = key.fingerprint();
            if !removed.contains(id.as_str()) {
                desired.push((id, key.clone()));
            }
        }
        for record in &state.keys {
            if !pending_removed.contains(&record.id)
                && !desired.iter().any(|(id, _)| *id == record.id)
            {
                desired.push((record.id.clone(), record.key.clone()));
            }
        }
        let current: HashSet<String> = self
            .pool
            .ids()
            .into_iter()
            .map(|id| id.as_str().to_owned())
            .collect();
        let mut changes = 0;
        for (id, key) in &desired {
            if !current.contains(id) {
                match self.pool.add_key(key.clone()) {
                    Ok(added) => {
                        tracing::info!(key.id = %added, "key added by another instance");
                        changes += 1;
                    }
                    Err(e) => tracing::warn!(key.id = %id, error = %e, "shared key refused"),
                }
            }
        }
        let wanted: HashSet<&str> = desired.iter().map(|(id, _)| id.as_str()).collect();
        for id in &current {
            if !wanted.contains(id.as_str()) && self.pool.remove_key(id) {
                tracing::info!(key.id = %id, "key removed by another instance");
                changes += 1;
            }
        }
        changes
    }

    fn apply_tokens(&self, state: &AdminState, pending_revoked: &HashSet<TokenDigest>) -> u64 {
        let revoked: HashSet<TokenDigest> = state
            .revoked_tokens
            .iter()
            .map(|t| t.digest)
            .chain(pending_revoked.iter().copied())
            .collect();
        // digest → (name, admin, account): the base, then what the store says over it.
        let mut wanted: HashMap<TokenDigest, (String, bool, Account)> = HashMap::new();
        let admin = TokenDigest::of(&self.base.admin_token);
        wanted.insert(admin, ("admin".to_owned(), true, Account::default()));
        for t in &self.base.tokens {
            if !revoked.contains(&t.digest) {
                wanted.insert(t.digest, (t.name.clone(), false, t.account.clone()));
            }
        }
        for t in &state.tokens {
            if !revoked.contains(&t.digest) && t.digest != admin {
                wanted.insert(t.digest, (t.name.clone(), t.admin, t.account.clone()));
            }
        }
        let current: HashMap<TokenDigest, TokenInfo> = self
            .tokens
            .list()
            .into_iter()
            .map(|t| (t.digest, t))
            .collect();
        let mut changes = 0;
        for (digest, (name, admin, account)) in &wanted {
            let same = current.get(digest).is_some_and(|c| {
                c.name == *name
                    && c.admin == *admin
                    && c.account.as_deref().cloned().unwrap_or_default() == *account
            });
            if !same {
                self.tokens.insert_account(
                    *digest,
                    digest.id(),
                    name.as_str(),
                    *admin,
                    Some(Arc::new(account.clone())),
                );
                if current.contains_key(digest) {
                    tracing::info!(token.id = %digest.id(), "client token changed");
                } else {
                    tracing::info!(token.id = %digest.id(), "client token created elsewhere");
                }
                changes += 1;
            }
        }
        for digest in current.keys() {
            if !wanted.contains_key(digest) && self.tokens.remove_digest(digest) {
                tracing::info!(token.id = %digest.id(), "client token revoked");
                changes += 1;
            }
        }
        changes
    }

    /// Where a token comes from, for listings: `config`, `file` or `admin`.
    pub fn source_of(&self, digest: &TokenDigest) -> &'static str {
        if *digest == TokenDigest::of(&self.base.admin_token) {
            return "config";
        }
        self.base
            .tokens
            .iter()
            .find(|t| t.digest == *digest)
            .map_or("admin", |t| t.source)
    }

    fn apply_policy(&self, state: &AdminState) -> u64 {
        let mut next = self.base.policy.clone();
        super::admin::restore_policy(&mut next, &state.settings);
        let mut policy = self.policy.lock().unwrap_or_else(|e| e.into_inner());
        if *policy == next {
            return 0;
        }
        self.policy_handle.set(&next.layer());
        *policy = next;
        tracing::info!("request policy changed by another instance");
        1
    }

    /// How old this instance's view of the shared state is, in milliseconds since the store
    /// last answered (`None` before it ever did).
    pub fn age_ms(&self) -> Option<u64> {
        self.lock_view()
            .last_ok
            .map(|t| t.elapsed().as_millis() as u64)
    }

    /// `/status`'s `fleet` object.
    pub fn status(&self) -> Value {
        let view = self.lock_view();
        let pending = self.lock_pending();
        json!({
            "shared": self.shared,
            "store": self.store.kind(),
            "sync_interval_ms": self.every.as_millis() as u64,
            "version": view.version,
            "last_sync_age_ms": view.last_ok.map(|t| t.elapsed().as_millis() as u64),
            "stale": self.shared && view.last_ok.is_none_or(|t| t.elapsed() > self.every * 5),
            "error": view.error,
            "reloads": view.reloads,
            "changes_applied": view.changes,
            "pending_writes": pending.revoked.len() + pending.removed_keys.len(),
            "instance": self.instance,
        })
    }

    /// Prometheus lines: the view's age and the reloads.
    pub fn metrics(&self) -> String {
        if !self.shared {
            return String::new();
        }
        let view = self.lock_view();
        let age = view.last_ok.map_or(-1.0, |t| t.elapsed().as_secs_f64());
        format!(
            "# HELP gemini_gateway_fleet_sync_age_seconds Seconds since this instance last heard from the shared admin store (-1: never).\n\
             # TYPE gemini_gateway_fleet_sync_age_seconds gauge\n\
             gemini_gateway_fleet_sync_age_seconds {age:.3}\n\
             # HELP gemini_gateway_fleet_reloads_total Reloads of the shared admin state.\n\
             # TYPE gemini_gateway_fleet_reloads_total counter\n\
             gemini_gateway_fleet_reloads_total {}\n",
            view.reloads
        )
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
