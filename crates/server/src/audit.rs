//! The audit trail: building events, storing them with group commit before
//! the response goes out (fail closed), signing checkpoints, verifying
//! chains, and the read API.
//!
//! Writes that change records store their events in the same transaction
//! as the change. Reads and other events go through [`AuditLog`], which
//! writes the events of concurrent requests together in one transaction;
//! each request waits for its batch to commit.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::Json;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use strongroom_core::audit::{
    chain_hash, checkpoint_message, genesis, AuditEvent, Outcome, SERVER_CHAIN,
};
use strongroom_core::CompanyId;
use strongroom_proto::{ErrorBody, ErrorCode};
use strongroom_store::{AuditQuery, Checkpoint, KeyPurpose, Store, StoreError};
use tokio::sync::{mpsc, oneshot};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{current_request_id, ApiError, ApiResult};
use crate::extract::ClientInfo;
use crate::keys::KeyRing;
use crate::state::AppState;

/// Events between checkpoints, at most.
pub const CHECKPOINT_EVERY: i64 = 100;
/// How often [`verify`] reads on after events a running server appended
/// while it read the chain.
const MAX_CATCH_UP: usize = 16;
/// Largest batch one transaction writes.
const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<(), String>>;

/// The group-commit writer's front door.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<(Vec<AuditEvent>, Reply)>,
    /// Benchmarks only (never configuration): events are dropped, to
    /// measure what auditing costs.
    discard: bool,
}

impl AuditLog {
    /// Starts the writer task.
    pub fn start(
        store: Store,
        keys: std::sync::Arc<KeyRing>,
        clock: strongroom_core::clock::SharedClock,
        detection: crate::detection::Detection,
    ) -> AuditLog {
        let (tx, rx) = mpsc::channel(4096);
        if store.dialect() == strongroom_store::Dialect::Sqlite {
            // Every request waits for its batch, and a batch is several
            // statements, each a hand-over to SQLite's connection thread and
            // back. On the shared runtime the writer would queue behind every
            // ready request at each step; on a thread of its own it is woken
            // at once. (SQLite connections are threads of their own, not tied
            // to a runtime; PostgreSQL's sockets belong to the shared
            // runtime, where that writer stays.)
            let spawned = std::thread::Builder::new()
                .name("strongroom-audit".into())
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(writer(store, keys, clock, detection, rx)),
                        Err(e) => tracing::error!(error = %e, "the audit writer cannot start"),
                    }
                });
            // Without a writer every audited request fails (closed).
            if let Err(e) = spawned {
                tracing::error!(error = %e, "the audit writer cannot start");
            }
        } else {
            tokio::spawn(writer(store, keys, clock, detection, rx));
        }
        AuditLog { tx, discard: false }
    }

    /// For benchmarks: the same log, but reads' events are dropped. Not
    /// reachable from configuration.
    pub fn discarding(mut self) -> AuditLog {
        self.discard = true;
        self
    }

    /// Stores the events; returns once they are committed. An error means
    /// they are not stored, and the request must fail.
    pub async fn write(&self, events: Vec<AuditEvent>) -> ApiResult<()> {
        if self.discard {
            return Ok(());
        }
        let (reply, wait) = oneshot::channel();
        self.tx
            .send((events, reply))
            .await
            .map_err(|_| ApiError::internal("audit writer stopped"))?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ApiError::internal(format!("audit write failed: {e}"))),
            Err(_) => Err(ApiError::internal("audit writer dropped the request")),
        }
    }
}

async fn writer(
    store: Store,
    keys: std::sync::Arc<KeyRing>,
    clock: strongroom_core::clock::SharedClock,
    detection: crate::detection::Detection,
    mut rx: mpsc::Receiver<(Vec<AuditEvent>, Reply)>,
) {
    // The newest checkpoint's sequence number per chain, as far as this
    // writer knows (it only grows; a stale value costs one query).
    let mut signed: std::collections::HashMap<i64, i64> = std::collections::HashMap::new();
    // On an SQLite file, batches are written through a connection of the
    // writer's own (see strongroom_store::AuditAppender); elsewhere, and
    // should that connection not open, through the store's pool.
    let mut appender = store.audit_appender().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "the audit log's own SQLite connection did not open; writing through the pool");
        None
    });
    // Checkpoints signed after a batch, stored with the next one: a
    // checkpoint of its own would be one more commit (an fsync on SQLite)
    // that the next batch waits for. When no batch comes soon, they are
    // stored alone.
    let mut pending: Vec<Checkpoint> = Vec::new();
    loop {
        let first = if pending.is_empty() {
            rx.recv().await
        } else {
            match tokio::time::timeout(CHECKPOINT_RIDE, rx.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    store_alone(&store, std::mem::take(&mut pending)).await;
                    continue;
                }
            }
        };
        let Some(first) = first else {
            store_alone(&store, pending).await;
            break;
        };
        let mut batch = vec![first];
        let mut n = batch[0].0.len();
        while n < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => {
                    n += item.0.len();
                    batch.push(item);
                }
                Err(_) => break,
            }
        }
        let mut events: Vec<AuditEvent> = Vec::with_capacity(n);
        let mut replies = Vec::with_capacity(batch.len());
        for (mine, reply) in batch {
            events.extend(mine);
            replies.push(reply);
        }
        let signed_with = std::mem::take(&mut pending);
        let written = match appender.as_mut() {
            Some(a) => a.append(&events, &signed_with).await,
            None => store.append_audit_signed(&events, &signed_with).await,
        }
        .map_err(|e| e.to_string());
        if written.is_err() && !signed_with.is_empty() {
            // Not retried: were a checkpoint the cause, every batch after
            // would fail too. The periodic checkpoint signs those events.
            tracing::warn!(
                checkpoints = signed_with.len(),
                "audit checkpoints were not stored with the failed batch"
            );
        }
        let result = written.as_ref().map(|_| ()).map_err(Clone::clone);
        if let Err(e) = &result {
            tracing::error!(error = %e, events = events.len(), "AUDIT WRITE FAILED; the requests waiting for it fail");
        }
        if let Ok(heads) = &written {
            // Queued before the requests are answered, so that a caller who
            // has its answer can rely on the detectors having the event.
            detection.feed_stored(strongroom_store::numbered(events, heads));
        }
        for reply in replies {
            let _ = reply.send(result.clone());
        }
        // Every CHECKPOINT_EVERY events a chain gets a signed checkpoint.
        for head in written.unwrap_or_default() {
            if head.chain == SERVER_CHAIN {
                continue;
            }
            let known = signed.get(&head.chain).copied().unwrap_or(i64::MIN / 2);
            if !checkpoint_due(head.seq, known, false) {
                continue;
            }
            let last = match store.last_checkpoint_seq(head.chain).await {
                Ok(last) => last.unwrap_or(0),
                Err(e) => {
                    tracing::warn!(chain = head.chain, error = %e, "audit checkpoint failed");
                    continue;
                }
            };
            signed.insert(head.chain, last);
            if !checkpoint_due(head.seq, last, false) {
                continue;
            }
            match signed_checkpoint(&keys, head.chain, head.seq, head.hash, clock.now()).await {
                Ok(c) => {
                    signed.insert(head.chain, head.seq);
                    pending.push(c);
                }
                Err(e) => {
                    tracing::warn!(chain = head.chain, error = %e.message, "audit checkpoint failed")
                }
            }
        }
    }
}

/// A short, non-secret reference to a session: the first 8 bytes of its
/// token hash, so events of one session can be grouped.
pub fn session_ref(token_hash: &[u8; 32]) -> String {
    hex::encode(&token_hash[..8])
}

/// How events name what authenticated the caller: the session reference,
/// or `key:<id>` for an API key.
pub fn caller_ref(caller: &Caller) -> String {
    match &caller.api_key {
        Some(id) => format!("key:{id}"),
        None => session_ref(&caller.token_hash),
    }
}

/// A successful event about what an authenticated caller did.
pub fn event(
    state: &AppState,
    caller: &Caller,
    client: &ClientInfo,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> AuditEvent {
    AuditEvent {
        chain: caller.principal.company.0,
        at: state.clock.now(),
        actor: format!("user:{}", caller.principal.user_id),
        action: action.into(),
        target: target.into(),
        outcome: Outcome::Success,
        reason: None,
        detail: detail.to_string(),
        session: Some(caller_ref(caller)),
        client_ip: Some(client.ip.to_string()),
        user_agent: client.user_agent.clone(),
        request_id: Some(current_request_id()),
    }
}

/// Stores one successful event about `caller` before the response is sent.
pub async fn record(
    state: &AppState,
    caller: &Caller,
    client: &ClientInfo,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> ApiResult<()> {
    let e = event(state, caller, client, action, target, detail);
    state.audit.write(vec![e]).await
}

/// Records a refusal, then returns the error to send. If even the audit
/// write fails, the client still gets an error (never a success).
pub async fn refused(
    state: &AppState,
    caller: &Caller,
    client: &ClientInfo,
    action: &str,
    target: &str,
    err: ApiError,
) -> ApiError {
    let outcome = if err.code == ErrorCode::Forbidden {
        Outcome::Denied
    } else {
        Outcome::Failed
    };
    let mut e = event(state, caller, client, action, target, serde_json::json!({}));
    e.outcome = outcome;
    e.reason = Some(err.code.as_str().to_owned());
    match state.audit.write(vec![e]).await {
        Ok(()) => err,
        Err(audit_err) => audit_err,
    }
}

// ----- checkpoints ---------------------------------------------------------

fn signing_pair(seed: &[u8; 32]) -> Result<Ed25519KeyPair, ApiError> {
    Ed25519KeyPair::from_seed_unchecked(seed)
        .map_err(|_| ApiError::internal("bad audit signing key"))
}

/// Signs the chain's head if enough has happened since the last checkpoint
/// (`force`: if anything has). The server chain (0) is not signed: it has
/// no company key.
pub async fn checkpoint(
    store: &Store,
    keys: &KeyRing,
    chain: i64,
    now: chrono::DateTime<chrono::Utc>,
    force: bool,
) -> ApiResult<Option<i64>> {
    if chain == SERVER_CHAIN {
        return Ok(None);
    }
    let Some((seq, hash)) = store.audit_head(chain).await? else {
        return Ok(None);
    };
    let last = store.last_checkpoint_seq(chain).await?.unwrap_or(0);
    if !checkpoint_due(seq, last, force) {
        return Ok(None);
    }
    let c = signed_checkpoint(keys, chain, seq, hash, now).await?;
    store.add_checkpoint(&c).await?;
    Ok(Some(seq))
}

/// Whether a chain whose head is at `seq` and whose newest checkpoint is at
/// `last` needs a new one (with `force`: whenever events are unsigned).
fn checkpoint_due(seq: i64, last: i64, force: bool) -> bool {
    seq - last >= CHECKPOINT_EVERY || (force && seq > last)
}

/// How long signed checkpoints wait for the next batch to be stored with
/// before they are stored alone.
const CHECKPOINT_RIDE: Duration = Duration::from_millis(20);

/// Stores checkpoints in a transaction of their own.
async fn store_alone(store: &Store, checkpoints: Vec<Checkpoint>) {
    for c in checkpoints {
        if let Err(e) = store.add_checkpoint(&c).await {
            tracing::warn!(chain = c.chain, error = %e, "audit checkpoint failed");
        }
    }
}

/// A checkpoint of a chain at `seq` (whose event hash is `hash`), signed
/// with the company's audit-signing key.
async fn signed_checkpoint(
    keys: &KeyRing,
    chain: i64,
    seq: i64,
    hash: Vec<u8>,
    now: chrono::DateTime<chrono::Utc>,
) -> ApiResult<Checkpoint> {
    let key = keys
        .current(CompanyId(chain), KeyPurpose::AuditSigning)
        .await?;
    let pair = signing_pair(key.expose())?;
    let sig = pair.sign(&checkpoint_message(chain, seq, &hash, now));
    Ok(Checkpoint {
        chain,
        seq,
        hash,
        at: now,
        key_version: key.version(),
        public_key: pair.public_key().as_ref().to_vec(),
        signature: sig.as_ref().to_vec(),
    })
}

/// Checkpoints every chain that is due; with `force`, every chain with
/// unsigned events (the periodic "every T seconds" checkpoint).
pub async fn checkpoint_all(
    store: &Store,
    keys: &KeyRing,
    now: chrono::DateTime<chrono::Utc>,
    force: bool,
) -> ApiResult<usize> {
    let mut n = 0;
    for chain in store.audit_chains().await? {
        if checkpoint(store, keys, chain, now, force).await?.is_some() {
            n += 1;
        }
    }
    Ok(n)
}

// ----- verification --------------------------------------------------------

/// The result of checking one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub chain: i64,
    pub events: i64,
    pub checkpoints: usize,
    /// The first problem found, naming the event (by sequence number).
    pub problem: Option<String>,
}

/// Walks a chain segment, checking sequence, links and hashes.
struct Walker {
    /// The hash the next event must follow. Empty in the second half of a
    /// split walk until its first event, which is taken as it is and kept
    /// in `first` for [`Walker::join`].
    prev: Vec<u8>,
    next_seq: i64,
    events: i64,
    hashes: std::collections::HashMap<i64, Vec<u8>>,
    /// The sequence numbers whose hashes `hashes` keeps (the checkpoints'),
    /// in ascending order; those behind the walk are dropped.
    want: std::collections::VecDeque<i64>,
    /// The first problem [`Walker::visit`] met; the walk stops there.
    problem: Option<String>,
    /// A second half's first event: its number and the hash it follows.
    first: Option<(i64, Vec<u8>)>,
}

impl Walker {
    fn new(prev: Vec<u8>, next_seq: i64, want: std::collections::VecDeque<i64>) -> Walker {
        Walker {
            prev,
            next_seq,
            events: 0,
            hashes: std::collections::HashMap::new(),
            want,
            problem: None,
            first: None,
        }
    }

    /// Splits the walk at `mid`: this walker takes the events up to `mid`,
    /// and the one returned those after it, from wherever they start. The
    /// two can be walked at once, and [`Walker::join`]ed.
    fn split(&mut self, mid: i64) -> Walker {
        let at = self.want.partition_point(|&w| w <= mid);
        Walker::new(Vec::new(), mid + 1, self.want.split_off(at))
    }

    /// This walk (up to some `mid`) followed by `second` (after it): as if
    /// one walker had read both, finding the same first problem.
    fn join(mut self, second: Walker) -> Walker {
        if self.problem.is_some() {
            return self;
        }
        let Some((seq, follows)) = &second.first else {
            // Nothing after `mid`.
            return self;
        };
        if *seq != self.next_seq {
            self.problem = Some(missing(self.next_seq, *seq));
            return self;
        }
        if *follows != self.prev {
            self.problem = Some(broken(*seq));
            return self;
        }
        self.prev = second.prev;
        self.next_seq = second.next_seq;
        self.events += second.events;
        self.hashes.extend(second.hashes);
        self.want = second.want;
        self.problem = second.problem;
        self
    }

    /// [`Walker::step`] for a scan: false (stop) at the first problem,
    /// which is kept.
    fn visit(&mut self, e: strongroom_store::LinkRef<'_>) -> bool {
        match self.step(e) {
            Ok(()) => true,
            Err(p) => {
                self.problem = Some(p);
                false
            }
        }
    }

    fn step(&mut self, e: strongroom_store::LinkRef<'_>) -> Result<(), String> {
        if self.prev.is_empty() && self.first.is_none() {
            // A second half's first event: where it starts, and what it
            // follows, are for `join` to check.
            self.first = Some((e.seq, e.prev_hash.to_vec()));
            self.next_seq = e.seq;
            self.prev.extend_from_slice(e.prev_hash);
        }
        if e.seq != self.next_seq {
            return Err(if e.seq > self.next_seq {
                missing(self.next_seq, e.seq)
            } else {
                format!("event {} is out of order", e.seq)
            });
        }
        if e.prev_hash != self.prev.as_slice() {
            return Err(broken(e.seq));
        }
        let h = chain_hash(&self.prev, e.canonical);
        if h[..] != *e.hash {
            return Err(format!("event {} was changed after it was written", e.seq));
        }
        while self.want.front().is_some_and(|&w| w <= e.seq) {
            if self.want.pop_front() == Some(e.seq) {
                self.hashes.insert(e.seq, h.to_vec());
            }
        }
        self.prev.clear();
        self.prev.extend_from_slice(&h);
        self.next_seq += 1;
        self.events += 1;
        Ok(())
    }
}

fn missing(seq: i64, next_stored: i64) -> String {
    format!("event {seq} is missing (next stored is {next_stored})")
}

fn broken(seq: i64) -> String {
    format!(
        "event {seq} does not follow event {}: the chain is broken (an event was removed, inserted or reordered)",
        seq - 1
    )
}

/// A chain with at least this many events to read is read in two halves
/// at once: on SQLite each half has a reading thread and a hashing one,
/// on PostgreSQL a server process of its own.
pub const SPLIT_FROM: i64 = 20_000;

/// Recomputes every hash of a chain, checks the head and every checkpoint
/// signature (against the company's own signing key, not the public key
/// stored beside the signature), and that no event after the latest
/// checkpoint is missing. Archived events (from `audit archive`) can be
/// given to verify the chain from its very start; without them the live
/// log is verified from its archive anchor.
pub async fn verify(
    store: &Store,
    keys: &KeyRing,
    chain: i64,
    check_signatures: bool,
    archive: Option<&[strongroom_store::StoredEvent]>,
) -> Result<Verification, ApiError> {
    verify_split_from(store, keys, chain, check_signatures, archive, SPLIT_FROM).await
}

/// [`verify`], reading the chain in two halves at once when at least
/// `split_from` events are to be read (the tests split small chains).
pub async fn verify_split_from(
    store: &Store,
    keys: &KeyRing,
    chain: i64,
    check_signatures: bool,
    archive: Option<&[strongroom_store::StoredEvent]>,
    split_from: i64,
) -> Result<Verification, ApiError> {
    let mut out = Verification {
        chain,
        events: 0,
        checkpoints: 0,
        problem: None,
    };
    let checkpoints = store.checkpoints(chain).await?;
    let anchor = store.audit_anchor(chain).await?;
    let mut w = Walker::new(genesis(chain).to_vec(), 1, {
        let mut seqs: Vec<i64> = checkpoints.iter().map(|c| c.seq).collect();
        seqs.sort_unstable();
        seqs.into()
    });
    match (archive, &anchor) {
        (Some(arch), _) => {
            for e in arch {
                if let Err(p) = w.step(strongroom_store::ChainLink::of(e).as_link()) {
                    out.problem = Some(format!("in the archive: {p}"));
                    return Ok(out);
                }
            }
            if let Some((seq, hash)) = &anchor {
                if w.next_seq - 1 != *seq || &w.prev != hash {
                    out.problem = Some(format!(
                        "the archive ends at event {} but the live log continues from event {seq}",
                        w.next_seq - 1
                    ));
                    return Ok(out);
                }
            }
        }
        (None, Some((seq, hash))) => {
            w.prev = hash.clone();
            w.next_seq = seq + 1;
        }
        (None, None) => {}
    }
    let verified_from = w.next_seq - w.events;
    let signatures =
        check_checkpoint_signatures(keys, chain, &checkpoints, verified_from, check_signatures)
            .await?;
    // The chain is read in one snapshot, then its head; a server still
    // running may have appended events meanwhile, so while the head is
    // ahead and the last read found more, the new events are read too. A
    // truncated log finds nothing more, and is reported; a log written to
    // faster than it is read is verified as far as it was read. (The head
    // seen before a read only says how far it goes: whether to halve it.)
    let mut head = store.audit_head(chain).await?;
    let mut growing = false;
    for _ in 0..MAX_CATCH_UP {
        let from = w.next_seq;
        let ahead = head.as_ref().map_or(0, |(seq, _)| seq - from + 1);
        w = match walk(store, chain, w, ahead, split_from).await {
            Ok(w) => w,
            // An event no writer could have stored (a time that is not a
            // number, an outcome that is none, an empty required column)
            // was changed by hand: tampering, named by its place. With more
            // than one changed event, this one may not be the first.
            Err(StoreError::Corrupt(what)) => {
                out.problem = Some(what);
                return Ok(out);
            }
            Err(e) => return Err(e.into()),
        };
        if w.problem.is_some() {
            break;
        }
        head = store.audit_head(chain).await?;
        growing = w.next_seq > from && matches!(&head, Some((seq, _)) if *seq >= w.next_seq);
        if !growing {
            break;
        }
    }
    out.problem = w.problem.take();
    out.events = w.events;
    let last = w.next_seq - 1;
    if out.problem.is_none() {
        match head {
            Some((seq, hash)) if seq == last && hash == w.prev => {}
            // Still being written to after every catch-up: what was read
            // is verified, and the rest is the next run's.
            Some(_) if growing => {}
            Some((seq, _)) if seq > last => {
                out.problem = Some(format!(
                    "events {}..{seq} are missing: the log was truncated",
                    last + 1
                ))
            }
            Some(_) => out.problem = Some("the chain head does not match the last event".into()),
            None if last == 0 => {}
            None => out.problem = Some("the chain head is missing".into()),
        }
    }
    if out.problem.is_none() && chain != SERVER_CHAIN {
        let bad_signatures = signatures
            .await
            .map_err(|e| ApiError::internal(format!("checkpoint signature check failed: {e}")))?;
        for c in &checkpoints {
            if c.seq < verified_from {
                // Vouches for archived events that were not given.
                continue;
            }
            if bad_signatures.contains(&c.seq) {
                out.problem = Some(format!(
                    "the checkpoint at event {} has a bad signature",
                    c.seq
                ));
                break;
            }
            if c.seq > last {
                out.problem = Some(format!(
                    "the log ends at event {last} but a signed checkpoint vouches for event {}: the log was truncated",
                    c.seq
                ));
                break;
            }
            if w.hashes.get(&c.seq) != Some(&c.hash) {
                out.problem = Some(format!(
                    "event {} does not match its signed checkpoint",
                    c.seq
                ));
                break;
            }
            out.checkpoints += 1;
        }
    }
    Ok(out)
}

/// Reads the chain on from where `w` stands: in two halves at once when the
/// head was last seen at least `split_from` events ahead (`ahead`).
async fn walk(
    store: &Store,
    chain: i64,
    mut w: Walker,
    ahead: i64,
    split_from: i64,
) -> Result<Walker, StoreError> {
    let from = w.next_seq;
    if ahead < split_from.max(2) {
        return store
            .scan_audit(chain, from - 1, i64::MAX, w, Walker::visit)
            .await;
    }
    let mid = from - 1 + ahead / 2;
    let second = w.split(mid);
    let later = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .scan_audit(chain, mid, i64::MAX, second, Walker::visit)
                .await
        })
    };
    let first = store
        .scan_audit(chain, from - 1, mid, w, Walker::visit)
        .await;
    let first = first?;
    match later.await {
        Ok(Ok(second)) => Ok(first.join(second)),
        // A problem in the first half comes before whatever the second
        // found.
        _ if first.problem.is_some() => Ok(first),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(StoreError::Sqlite(format!("the audit scan stopped: {e}"))),
    }
}

/// Starts checking the signatures of a chain's checkpoints from
/// `verified_from` on another thread (while the chain is read), and hands
/// back the sequence numbers of the bad ones. With `check_signatures`, each
/// against the company's own key of its version (whose public half must be
/// the one stored beside it); without (the company's keys are gone),
/// against the stored public key: internal consistency only.
async fn check_checkpoint_signatures(
    keys: &KeyRing,
    chain: i64,
    checkpoints: &[Checkpoint],
    verified_from: i64,
    check_signatures: bool,
) -> ApiResult<tokio::task::JoinHandle<std::collections::HashSet<i64>>> {
    // The server chain has no signing key, and no checkpoints to check.
    let mine: Vec<Checkpoint> = if chain == SERVER_CHAIN {
        Vec::new()
    } else {
        checkpoints
            .iter()
            .filter(|c| c.seq >= verified_from)
            .cloned()
            .collect()
    };
    let mut company_keys = std::collections::HashMap::new();
    if check_signatures {
        for c in &mine {
            if let std::collections::hash_map::Entry::Vacant(slot) =
                company_keys.entry(c.key_version)
            {
                let key = keys
                    .key(CompanyId(chain), KeyPurpose::AuditSigning, c.key_version)
                    .await?;
                slot.insert(signing_pair(key.expose())?.public_key().as_ref().to_vec());
            }
        }
    }
    Ok(tokio::task::spawn_blocking(move || {
        let mut bad = std::collections::HashSet::new();
        let mut signed = Vec::with_capacity(mine.len());
        for c in &mine {
            let public = if check_signatures {
                match company_keys.get(&c.key_version) {
                    Some(p) if *p == c.public_key => p.as_slice(),
                    _ => {
                        bad.insert(c.seq);
                        continue;
                    }
                }
            } else {
                c.public_key.as_slice()
            };
            signed.push(Signed {
                seq: c.seq,
                public,
                message: checkpoint_message(chain, c.seq, &c.hash, c.at),
                signature: &c.signature,
            });
        }
        bad.extend(bad_signatures(&signed));
        bad
    }))
}

/// One checkpoint's signature, to check.
struct Signed<'a> {
    seq: i64,
    public: &'a [u8],
    message: Vec<u8>,
    signature: &'a [u8],
}

/// Signatures checked together: one batch equation costs about a third of
/// checking each alone.
const SIGNATURES_PER_BATCH: usize = 64;

/// The sequence numbers of the checkpoints whose signature does not
/// verify. Each group is checked as a batch first (ed25519-dalek); a group
/// that fails, and only such a group, is checked one signature at a time
/// (ring), which names the bad ones. A batch accepts exactly the
/// signatures that the key's holder made, as single checks do; it may
/// also accept one of them with a small-order point added, which vouches
/// for the same signed message.
fn bad_signatures(signed: &[Signed<'_>]) -> Vec<i64> {
    let mut keys: std::collections::HashMap<&[u8], Option<ed25519_dalek::VerifyingKey>> =
        std::collections::HashMap::new();
    let mut bad = Vec::new();
    for group in signed.chunks(SIGNATURES_PER_BATCH) {
        let batch = group
            .iter()
            .map(|s| {
                let key = *keys.entry(s.public).or_insert_with(|| {
                    <[u8; 32]>::try_from(s.public)
                        .ok()
                        .and_then(|k| ed25519_dalek::VerifyingKey::from_bytes(&k).ok())
                });
                Some((
                    key?,
                    ed25519_dalek::Signature::from_slice(s.signature).ok()?,
                ))
            })
            .collect::<Option<(Vec<_>, Vec<_>)>>();
        let valid = batch.is_some_and(|(keys, signatures)| {
            let messages: Vec<&[u8]> = group.iter().map(|s| s.message.as_slice()).collect();
            ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
        });
        if !valid {
            bad.extend(
                group
                    .iter()
                    .filter(|s| {
                        UnparsedPublicKey::new(&ED25519, s.public)
                            .verify(&s.message, s.signature)
                            .is_err()
                    })
                    .map(|s| s.seq),
            );
        }
    }
    bad
}

// ----- reading -------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEventView {
    pub seq: i64,
    pub at: chrono::DateTime<chrono::Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub reason: Option<String>,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    pub session: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    /// This event's chain hash (hex), for receivers that verify.
    pub hash: String,
    /// Present when the stored event holds what Strongroom never writes,
    /// i.e. it was changed outside Strongroom: what could not be read
    /// ("its time is not a number"). The fields it names show stand-ins
    /// (the Unix epoch, `failed`, empty text); `strongroom audit verify`
    /// names the event as tampered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditEventView>,
    /// Pass as `after` for the next page; absent on the last one.
    pub next_after: Option<i64>,
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Sequence number to continue after.
    after: Option<i64>,
    /// Events per page, 1 to 1000 (default 100).
    limit: Option<i64>,
    /// From this time (RFC 3339), inclusive.
    from: Option<chrono::DateTime<chrono::Utc>>,
    /// Until this time (RFC 3339), exclusive.
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// e.g. `user:master`.
    actor: Option<String>,
    /// e.g. `record.read`.
    action: Option<String>,
    /// e.g. `customer/<id>`.
    target: Option<String>,
    /// `success`, `denied` or `failed`.
    outcome: Option<String>,
    client_ip: Option<String>,
}

/// The company's audit log, oldest first (administrators). Reading it is
/// itself recorded.
#[utoipa::path(get, path = "/api/v1/audit/events", tag = "audit",
    params(AuditParams),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_events(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    query: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<AuditPage>> {
    let auth = require_admin(&state, &caller, &client, "audit.read", "audit").await?;
    let Query(p) =
        query.map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be from 1 to 1000"));
    }
    let events = state
        .store
        .audit_events(
            auth.company().0,
            &AuditQuery {
                after_seq: p.after.unwrap_or(0),
                limit: limit + 1,
                from: p.from,
                until: p.until,
                actor: p.actor,
                action: p.action,
                target: p.target,
                outcome: p.outcome,
                client_ip: p.client_ip,
                ..Default::default()
            },
        )
        .await?;
    let more = events.len() as i64 > limit;
    let items: Vec<AuditEventView> = events
        .into_iter()
        .take(limit as usize)
        .map(|e| AuditEventView {
            seq: e.seq,
            at: e.event.at,
            actor: e.event.actor,
            action: e.event.action,
            target: e.event.target,
            outcome: e.event.outcome.as_str().into(),
            reason: e.event.reason,
            detail: serde_json::from_str(&e.event.detail).unwrap_or(serde_json::Value::Null),
            session: e.event.session,
            client_ip: e.event.client_ip,
            user_agent: e.event.user_agent,
            request_id: e.event.request_id,
            hash: hex::encode(&e.hash),
            damaged: e.damaged,
        })
        .collect();
    let next_after = if more {
        items.last().map(|e| e.seq)
    } else {
        None
    };
    record(
        &state,
        &caller,
        &client,
        "audit.read",
        "audit",
        serde_json::json!({ "events": items.len() }),
    )
    .await?;
    Ok(Json(AuditPage { items, next_after }))
}

/// How often the periodic checkpoint runs.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);

/// Administrative authority for `caller`, or a recorded denial. The power
/// needed follows from the action (see `strongroom_core::access::power_for`).
pub async fn require_admin(
    state: &AppState,
    caller: &Caller,
    client: &ClientInfo,
    action: &str,
    target: &str,
) -> ApiResult<strongroom_core::access::AdminAuthority> {
    crate::access::require(state, caller, client, action, target).await
}

/// One stored event as a line in `format` (JSON Lines, syslog, CEF).
pub fn export_line(
    format: strongroom_core::export::Format,
    company: Option<&str>,
    e: &strongroom_store::StoredEvent,
    host: &str,
) -> String {
    strongroom_core::export::line(
        format,
        &strongroom_core::export::ExportedEvent {
            company,
            seq: e.seq,
            event: &e.event,
            prev_hash: &e.prev_hash,
            hash: &e.hash,
            damaged: e.damaged.as_deref(),
        },
        host,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key's public half, `n` checkpoint messages, and their
    /// signatures.
    fn signed(n: usize) -> (Vec<u8>, Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let pair = signing_pair(&[7; 32]).unwrap();
        let messages: Vec<Vec<u8>> = (0..n)
            .map(|i| checkpoint_message(5, i as i64, &[i as u8; 32], chrono::DateTime::UNIX_EPOCH))
            .collect();
        let signatures = messages
            .iter()
            .map(|m| pair.sign(m).as_ref().to_vec())
            .collect();
        (pair.public_key().as_ref().to_vec(), messages, signatures)
    }

    fn check(public: &[u8], messages: &[Vec<u8>], signatures: &[Vec<u8>]) -> Vec<i64> {
        let list: Vec<Signed<'_>> = messages
            .iter()
            .zip(signatures)
            .enumerate()
            .map(|(i, (m, s))| Signed {
                seq: i as i64,
                public,
                message: m.clone(),
                signature: s,
            })
            .collect();
        bad_signatures(&list)
    }

    use strongroom_store::ChainLink;

    /// A chain of `n` events as stored.
    fn chain_of(n: i64) -> Vec<ChainLink> {
        let mut prev = genesis(9).to_vec();
        (1..=n)
            .map(|seq| {
                let canonical = format!("event {seq}").into_bytes();
                let hash = chain_hash(&prev, &canonical).to_vec();
                let prev_hash = std::mem::replace(&mut prev, hash.clone());
                ChainLink {
                    seq,
                    canonical,
                    prev_hash,
                    hash,
                }
            })
            .collect()
    }

    /// Walks the stored events with seq in `range` (as a scan with those
    /// bounds hands them out).
    fn walk_over(
        mut w: Walker,
        stored: &[ChainLink],
        range: std::ops::RangeInclusive<i64>,
    ) -> Walker {
        for e in stored {
            if range.contains(&e.seq) && !w.visit(e.as_link()) {
                break;
            }
        }
        w
    }

    /// Every kind of tampering, at every place, found the same whether the
    /// chain is walked whole or in two halves split anywhere.
    #[test]
    fn a_walk_in_halves_finds_what_a_whole_walk_finds() {
        let n = 12;
        let mut cases = vec![chain_of(n)];
        for k in 1..=n {
            let good = chain_of(n);
            let mut removed = good.clone();
            removed.retain(|e| e.seq != k);
            let mut changed = good.clone();
            changed[k as usize - 1].canonical.push(b'!');
            let mut relinked = good.clone();
            relinked[k as usize - 1].prev_hash[0] ^= 1;
            let mut truncated = good.clone();
            truncated.truncate(k as usize - 1);
            let mut inserted = good.clone();
            for e in &mut inserted[k as usize - 1..] {
                e.seq += 1;
            }
            let copy = ChainLink {
                seq: k,
                ..inserted[k as usize - 1].clone()
            };
            inserted.insert(k as usize - 1, copy);
            cases.extend([removed, changed, relinked, truncated, inserted]);
            if k < n {
                let mut swapped = good.clone();
                swapped.swap(k as usize - 1, k as usize);
                swapped[k as usize - 1].seq = k;
                swapped[k as usize].seq = k + 1;
                cases.push(swapped);
            }
        }
        let want = || std::collections::VecDeque::from(vec![3, 7, 12]);
        for stored in &cases {
            let whole = walk_over(
                Walker::new(genesis(9).to_vec(), 1, want()),
                stored,
                1..=i64::MAX,
            );
            for mid in 0..=n + 1 {
                let mut first = Walker::new(genesis(9).to_vec(), 1, want());
                let second = walk_over(first.split(mid), stored, mid + 1..=i64::MAX);
                let first = walk_over(first, stored, 1..=mid);
                let joined = first.join(second);
                let seen = |w: &Walker| {
                    (
                        w.problem.clone(),
                        w.events,
                        w.next_seq,
                        w.prev.clone(),
                        w.hashes.clone(),
                    )
                };
                assert_eq!(seen(&joined), seen(&whole), "split at {mid} of {stored:?}");
            }
        }
        assert_eq!(cases[0].len(), 12);
        let whole = walk_over(
            Walker::new(genesis(9).to_vec(), 1, want()),
            &cases[0],
            1..=i64::MAX,
        );
        assert_eq!(
            (whole.problem, whole.events, whole.hashes.len()),
            (None, 12, 3)
        );
    }

    #[test]
    fn batches_find_exactly_the_bad_signatures() {
        let (public, messages, mut signatures) = signed(150);
        assert_eq!(check(&public, &messages, &signatures), Vec::<i64>::new());
        // A bit flipped, another checkpoint's signature, and one too short,
        // in three different batches.
        signatures[3][10] ^= 1;
        signatures[70] = signatures[71].clone();
        signatures[149].pop();
        assert_eq!(check(&public, &messages, &signatures), vec![3, 70, 149]);
        // A message changed under its signature.
        let (_, mut messages, signatures) = signed(150);
        messages[100][0] ^= 1;
        assert_eq!(check(&public, &messages, &signatures), vec![100]);
        // Another key, or no key at all, vouches for nothing.
        let other = signing_pair(&[8; 32]).unwrap();
        assert_eq!(
            check(
                other.public_key().as_ref(),
                &messages[..2],
                &signatures[..2]
            ),
            vec![0, 1]
        );
        assert_eq!(check(&[1, 2, 3], &messages[..1], &signatures[..1]), vec![0]);
    }
}
