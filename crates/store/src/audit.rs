//! The audit log: per-company hash chains, their heads and signed
//! checkpoints.

use crate::{from_ts, get, ts, Dialect, Store, StoreError, StoreResult};
use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use strongroom_core::audit::{chain_hash, genesis, AuditEvent, Outcome};

/// An event as stored, with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: i64,
    pub event: AuditEvent,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
    /// What in the stored row no writer of Strongroom could have put there
    /// (it was changed outside Strongroom), e.g. "its time is not a
    /// number". The fields it names hold stand-ins: the Unix epoch for a
    /// time, `failed` for an outcome, empty text. `None` for every event
    /// Strongroom wrote.
    pub damaged: Option<String>,
}

/// A signed chain position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub chain: i64,
    pub seq: i64,
    pub hash: Vec<u8>,
    pub at: DateTime<Utc>,
    pub key_version: i64,
    pub public_key: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Filters for reading the log; all optional.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub after_seq: i64,
    /// The last place to read, if any.
    pub until_seq: Option<i64>,
    pub limit: i64,
    pub from: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub outcome: Option<String>,
    /// Only refused and failed events (outcome not `success`).
    pub refusals: bool,
    pub client_ip: Option<String>,
}

pub(crate) const EVENT_COLUMNS: &str =
    "chain, seq, at, actor, action, target, outcome, reason, detail, \
    session_ref, client_ip, user_agent, request_id, prev_hash, hash";

/// [`EVENT_COLUMNS`] as the log's readers select them. SQLite keeps
/// whatever it is given in a column, so a tampered value need not be text
/// (or bytes, for the hashes): there each column but the three numbers is
/// read as its bytes, and what is not UTF-8 is shown with U+FFFD, and a
/// time that is not an integer reads as none. The event still shows where
/// it stands in the log (with [`StoredEvent::damaged`] saying what could
/// not be read), and `audit verify` names it as changed; one bad row must
/// not hide the rest of the log from its readers, nor stop forwarding.
fn reader_columns(dialect: Dialect) -> &'static str {
    static AS_BYTES: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    match dialect {
        Dialect::Postgres => EVENT_COLUMNS,
        Dialect::Sqlite => AS_BYTES.get_or_init(|| {
            EVENT_COLUMNS
                .split(',')
                .map(str::trim)
                .map(|c| match c {
                    "chain" | "seq" => c.to_owned(),
                    "at" => "CASE WHEN typeof(at) = 'integer' THEN at END AS at".to_owned(),
                    _ => format!("CAST({c} AS BLOB) AS {c}"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        }),
    }
}

/// A stored event holding what no writer stores (it was changed by hand),
/// named by its place in the log.
fn impossible(chain: i64, seq: i64, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("audit event {seq} of chain {chain}: {what}"))
}

/// One event as the chain scan reads it: its place, and the bytes its
/// hash covers (see [`AuditEvent::canonical`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLink {
    pub seq: i64,
    pub canonical: Vec<u8>,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

impl ChainLink {
    pub fn of(e: &StoredEvent) -> ChainLink {
        ChainLink {
            seq: e.seq,
            canonical: e.event.canonical(e.seq),
            prev_hash: e.prev_hash.clone(),
            hash: e.hash.clone(),
        }
    }

    pub fn as_link(&self) -> LinkRef<'_> {
        LinkRef {
            seq: self.seq,
            canonical: &self.canonical,
            prev_hash: &self.prev_hash,
            hash: &self.hash,
        }
    }
}

/// A [`ChainLink`] borrowed from a scan's buffer: what
/// [`Store::scan_audit`] hands its visitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkRef<'a> {
    pub seq: i64,
    pub canonical: &'a [u8],
    pub prev_hash: &'a [u8],
    pub hash: &'a [u8],
}

impl LinkRef<'_> {
    pub fn owned(&self) -> ChainLink {
        ChainLink {
            seq: self.seq,
            canonical: self.canonical.to_vec(),
            prev_hash: self.prev_hash.to_vec(),
            hash: self.hash.to_vec(),
        }
    }
}

/// Links in one buffer. A scan reads rows into a batch on one thread and
/// visits it on another; the emptied batch goes back to be filled again,
/// so an event costs no allocation.
#[derive(Debug, Default)]
struct LinkBatch {
    bytes: Vec<u8>,
    /// Each link's sequence number, and where its canonical bytes, its
    /// previous hash and its hash end in `bytes` (each part starts where
    /// the one before it ends).
    ends: Vec<(i64, usize, usize, usize)>,
}

impl LinkBatch {
    fn len(&self) -> usize {
        self.ends.len()
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    fn links(&self) -> impl Iterator<Item = LinkRef<'_>> {
        let mut start = 0;
        self.ends.iter().map(move |&(seq, c, p, h)| {
            let link = LinkRef {
                seq,
                canonical: &self.bytes[start..c],
                prev_hash: &self.bytes[c..p],
                hash: &self.bytes[p..h],
            };
            start = h;
            link
        })
    }

    /// Appends the event of one scan row: `at`, `text(i)` for columns 2 to
    /// 11 of the scan's SELECT (actor, action, target, outcome, reason,
    /// detail, session, client address, user agent, request id) and the
    /// bytes of columns 12 and 13 (the hashes). The time and the outcome
    /// must be ones an event can have.
    fn push<'r>(
        &mut self,
        chain: i64,
        seq: i64,
        at: i64,
        text: impl Fn(usize) -> StoreResult<Option<&'r [u8]>>,
    ) -> StoreResult<()> {
        let required = |i: usize| {
            text(i)?.ok_or_else(|| impossible(chain, seq, format!("column {i} is empty")))
        };
        let placed = |e: StoreError| match e {
            StoreError::Corrupt(what) => impossible(chain, seq, what),
            e => e,
        };
        from_ts(at).map_err(placed)?;
        let outcome_text = required(5)?;
        outcome_of(outcome_text).map_err(placed)?;
        let parts = [
            Some(required(2)?),
            Some(required(3)?),
            Some(required(4)?),
            Some(outcome_text),
            text(6)?,
            Some(required(7)?),
            text(8)?,
            text(9)?,
            text(10)?,
            text(11)?,
        ];
        let (prev_hash, hash) = (required(12)?, required(13)?);
        strongroom_core::audit::write_canonical(&mut self.bytes, chain, seq, at, parts);
        let c = self.bytes.len();
        self.bytes.extend_from_slice(prev_hash);
        let p = self.bytes.len();
        self.bytes.extend_from_slice(hash);
        self.ends.push((seq, c, p, self.bytes.len()));
        Ok(())
    }
}

/// [`Store::scan_audit`] over an SQLite file: rows read into batches,
/// each handed to `hand`, which gives back an empty batch to fill next or
/// `None` to stop. The canonical bytes are built from the bytes SQLite
/// hands out, without an event (and its dozen strings) in between.
fn scan_sqlite(
    file: &std::path::Path,
    chain: i64,
    after_seq: i64,
    until_seq: i64,
    mut hand: impl FnMut(LinkBatch) -> Option<LinkBatch>,
) -> StoreResult<()> {
    use rusqlite::types::ValueRef;
    let failed = |e: rusqlite::Error| StoreError::Sqlite(format!("reading the audit log: {e}"));
    let conn = crate::reader::open_read_only(file).map_err(failed)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(failed)?;
    let mut stmt = conn
        .prepare(
            "SELECT seq, at, actor, action, target, outcome, reason, detail, session_ref, \
             client_ip, user_agent, request_id, prev_hash, hash \
             FROM audit_events WHERE chain = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq",
        )
        .map_err(failed)?;
    let mut rows = stmt.query((chain, after_seq, until_seq)).map_err(failed)?;
    let mut batch = LinkBatch::default();
    while let Some(r) = rows.next().map_err(failed)? {
        let seq: i64 = r.get(0).map_err(failed)?;
        // INTEGER affinity keeps text that does not read as a number.
        let at: i64 = r
            .get(1)
            .map_err(|_| impossible(chain, seq, "its time is not a number"))?;
        // The text columns have TEXT affinity, so a number written there
        // is stored as text. A blob gives its bytes, as a cast to text
        // would: the same bytes are the same event, others fail its hash.
        let text = |i: usize| match r.get_ref(i).map_err(failed)? {
            ValueRef::Null => Ok(None),
            ValueRef::Text(b) | ValueRef::Blob(b) => Ok(Some(b)),
            ValueRef::Integer(_) | ValueRef::Real(_) => {
                Err(impossible(chain, seq, format!("column {i} holds a number")))
            }
        };
        batch.push(chain, seq, at, text)?;
        if batch.len() == SCAN_BATCH {
            match hand(batch) {
                Some(empty) => batch = empty,
                None => return Ok(()),
            }
        }
    }
    if batch.len() > 0 {
        hand(batch);
    }
    Ok(())
}

/// [`Store::scan_audit`] on PostgreSQL: one query streamed over a
/// connection of its own, with native rows read by position (the pool's
/// `Any` rows convert every column of every row, and each lookup by name
/// hashes it), decoded on a task of its own while `visit` runs here.
async fn scan_postgres<S, F>(
    opts: std::sync::Arc<sqlx::postgres::PgConnectOptions>,
    chain: i64,
    after_seq: i64,
    until_seq: i64,
    mut state: S,
    visit: F,
) -> StoreResult<S>
where
    F: Fn(&mut S, LinkRef<'_>) -> bool,
{
    use futures_util::TryStreamExt;
    use sqlx::{Connection, Row};
    let (tx, mut rx) = tokio::sync::mpsc::channel::<StoreResult<LinkBatch>>(BATCHES_IN_FLIGHT);
    let (back, mut returned) = tokio::sync::mpsc::channel::<LinkBatch>(BATCHES_IN_FLIGHT + 1);
    let reader = tokio::spawn(async move {
        let read = async {
            // The chain in the order of its primary key, never sorted: a
            // planner without fresh statistics (a table just written to)
            // would sort the whole chain on disk instead.
            let opts = opts.as_ref().clone().options([("enable_sort", "off")]);
            let mut conn = sqlx::postgres::PgConnection::connect_with(&opts).await?;
            // Every column in the table's order (EVENT_COLUMNS), so the
            // server sends its rows as they are stored, without building
            // new ones.
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM audit_events \
                 WHERE chain = $1 AND seq > $2 AND seq <= $3 ORDER BY seq"
            );
            let mut rows = sqlx::query(&sql)
                .bind(chain)
                .bind(after_seq)
                .bind(until_seq)
                .fetch(&mut conn);
            let mut batch = LinkBatch::default();
            while let Some(r) = rows.try_next().await? {
                let seq: i64 = r.try_get(1)?;
                let at: i64 = r.try_get(2)?;
                // The bytes of text and bytea alike, as the hash covers them.
                let text = |i: usize| Ok(r.try_get_unchecked::<Option<&[u8]>, _>(i + 1)?);
                batch.push(chain, seq, at, text)?;
                if batch.len() == SCAN_BATCH {
                    let next = returned.try_recv().unwrap_or_default();
                    if tx
                        .send(Ok(std::mem::replace(&mut batch, next)))
                        .await
                        .is_err()
                    {
                        // The visitor stopped.
                        batch.clear();
                        break;
                    }
                }
            }
            drop(rows);
            if batch.len() > 0 {
                let _ = tx.send(Ok(batch)).await;
            }
            // Said goodbye to, the server does not log a lost client.
            conn.close().await?;
            StoreResult::Ok(())
        };
        if let Err(e) = read.await {
            let _ = tx.send(Err(e)).await;
        }
    });
    while let Some(batch) = rx.recv().await {
        let mut batch = batch?;
        for link in batch.links() {
            if !visit(&mut state, link) {
                // Dropping the receiver stops the reader at its next batch.
                return Ok(state);
            }
        }
        batch.clear();
        let _ = back.try_send(batch);
    }
    reader
        .await
        .map_err(|e| StoreError::Sqlite(format!("the audit scan stopped: {e}")))?;
    Ok(state)
}

/// Events in a batch handed from the reading thread to the visiting one.
const SCAN_BATCH: usize = 1024;

/// Full batches waiting for the visitor at most.
const BATCHES_IN_FLIGHT: usize = 8;

/// [`scan_sqlite`] on a thread of its own, with `visit` on the calling
/// thread: reading and decoding rows, and what the visitor does with them
/// (hashing, for verification), each take about half of the work, and run
/// on two cores at once. A visitor that stops stops the reader.
fn scan_sqlite_pipelined(
    file: &std::path::Path,
    chain: i64,
    after_seq: i64,
    until_seq: i64,
    visit: &mut dyn FnMut(LinkRef<'_>) -> bool,
) -> StoreResult<()> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<LinkBatch>(BATCHES_IN_FLIGHT);
    let (back, returned) = std::sync::mpsc::sync_channel::<LinkBatch>(BATCHES_IN_FLIGHT + 1);
    std::thread::scope(|scope| {
        let reader = std::thread::Builder::new()
            .name("strongroom-scan".into())
            .spawn_scoped(scope, move || {
                scan_sqlite(file, chain, after_seq, until_seq, |full| {
                    tx.send(full).ok()?;
                    Some(returned.try_recv().unwrap_or_default())
                })
            })
            .map_err(|e| StoreError::Sqlite(format!("the audit scan cannot start: {e}")))?;
        'batches: for mut batch in rx.iter() {
            for link in batch.links() {
                if !visit(link) {
                    break 'batches;
                }
            }
            batch.clear();
            let _ = back.try_send(batch);
        }
        // Dropping the receiver tells a reader still at work to stop.
        drop(rx);
        reader
            .join()
            .map_err(|_| StoreError::Sqlite("the audit scan stopped".into()))?
    })
}

fn outcome_of(s: &[u8]) -> StoreResult<Outcome> {
    match s {
        b"success" => Ok(Outcome::Success),
        b"denied" => Ok(Outcome::Denied),
        b"failed" => Ok(Outcome::Failed),
        other => Err(StoreError::Corrupt(format!(
            "audit outcome '{}'",
            String::from_utf8_lossy(other)
        ))),
    }
}

fn outcome(s: &str) -> StoreResult<Outcome> {
    outcome_of(s.as_bytes())
}

/// An event selected with [`reader_columns`].
fn event_from_row(r: &AnyRow, dialect: Dialect) -> StoreResult<StoredEvent> {
    // What cannot be read is named, and a stand-in shown, rather than the
    // whole page failing: see `StoredEvent::damaged`.
    let mut damage: Vec<String> = Vec::new();
    let text = |col: &str, damage: &mut Vec<String>| -> StoreResult<Option<String>> {
        match dialect {
            Dialect::Postgres => get(r, col),
            Dialect::Sqlite => Ok(get::<Option<Vec<u8>>>(r, col)?.map(|b| {
                String::from_utf8(b).unwrap_or_else(|e| {
                    damage.push(format!("its {col} is not UTF-8 text"));
                    String::from_utf8_lossy(e.as_bytes()).into_owned()
                })
            })),
        }
    };
    let required = |col: &str, damage: &mut Vec<String>| -> StoreResult<String> {
        Ok(text(col, damage)?.unwrap_or_else(|| {
            damage.push(format!("its {col} is empty"));
            String::new()
        }))
    };
    let d = &mut damage;
    let (actor, action, target) = (
        required("actor", d)?,
        required("action", d)?,
        required("target", d)?,
    );
    let (stored_outcome, detail) = (required("outcome", d)?, required("detail", d)?);
    let (reason, session) = (text("reason", d)?, text("session_ref", d)?);
    let (client_ip, user_agent) = (text("client_ip", d)?, text("user_agent", d)?);
    let request_id = text("request_id", d)?;
    let outcome = outcome(&stored_outcome).unwrap_or_else(|_| {
        damage.push(format!(
            "its outcome '{}' is none of success, denied, failed",
            stored_outcome.chars().take(40).collect::<String>()
        ));
        Outcome::Failed
    });
    let at = match get::<Option<i64>>(r, "at")? {
        None => {
            damage.push("its time is not a number".into());
            DateTime::UNIX_EPOCH
        }
        Some(us) => from_ts(us).unwrap_or_else(|_| {
            damage.push(format!("its time {us} is out of range"));
            DateTime::UNIX_EPOCH
        }),
    };
    Ok(StoredEvent {
        seq: get(r, "seq")?,
        event: AuditEvent {
            chain: get(r, "chain")?,
            at,
            actor,
            action,
            target,
            outcome,
            reason,
            detail,
            session,
            client_ip,
            user_agent,
            request_id,
        },
        prev_hash: get(r, "prev_hash")?,
        hash: get(r, "hash")?,
        damaged: (!damage.is_empty()).then(|| damage.join("; ")),
    })
}

fn checkpoint_from_row(r: &AnyRow) -> StoreResult<Checkpoint> {
    Ok(Checkpoint {
        chain: get(r, "chain")?,
        seq: get(r, "seq")?,
        hash: get(r, "hash")?,
        at: from_ts(get(r, "at")?)?,
        key_version: get(r, "key_version")?,
        public_key: get(r, "public_key")?,
        signature: get(r, "signature")?,
    })
}

/// Appends events to their chains inside `tx`: each chain's head is locked,
/// so concurrent writers (several nodes on PostgreSQL) take turns and the
/// chain never forks.
/// Events stored by one INSERT (15 parameters each, well under both
/// backends' parameter limits).
const ROWS_PER_INSERT: usize = 50;

pub(crate) async fn chain_events(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    dialect: Dialect,
    guesses: &HeadGuesses,
    events: &[AuditEvent],
) -> StoreResult<Vec<ChainHead>> {
    let mut heads = Vec::new();
    let mut chains: Vec<i64> = events.iter().map(|e| e.chain).collect();
    chains.sort_unstable();
    chains.dedup();
    // Heads are locked in chain order, so two batches never deadlock.
    for chain in chains {
        let lock = if dialect == Dialect::Postgres {
            " FOR UPDATE"
        } else {
            ""
        };
        let select = format!("SELECT seq, hash FROM audit_heads WHERE chain = $1{lock}");
        // A chain's first event makes its head (a second writer doing the
        // same at once is harmless: the insert does nothing, and the row is
        // then read and locked).
        let head = match sqlx::query(&select)
            .bind(chain)
            .fetch_optional(&mut **tx)
            .await?
        {
            Some(head) => head,
            None => {
                sqlx::query(
                    "INSERT INTO audit_heads (chain, seq, hash) VALUES ($1, 0, $2) ON CONFLICT (chain) DO NOTHING",
                )
                .bind(chain)
                .bind(genesis(chain).to_vec())
                .execute(&mut **tx)
                .await?;
                sqlx::query(&select)
                    .bind(chain)
                    .fetch_one(&mut **tx)
                    .await?
            }
        };
        let mine = events.iter().filter(|e| e.chain == chain);
        let (links, head) = link(chain, get(&head, "seq")?, get(&head, "hash")?, mine);
        // Stored with one statement per group of rows (a batch of a few
        // hundred events is a few statements, not a few hundred). On
        // PostgreSQL the last of them also moves the head (locked above),
        // which saves a round trip per chain and batch.
        let groups = links.chunks(ROWS_PER_INSERT).count();
        for (i, group) in links.chunks(ROWS_PER_INSERT).enumerate() {
            let moves_head = dialect == Dialect::Postgres && i + 1 == groups;
            let values = crate::values_placeholders(dialect, group.len(), 15);
            let sql = if moves_head {
                let p = group.len() * 15;
                format!(
                    "WITH head AS (UPDATE audit_heads SET seq = ${}, hash = ${} WHERE chain = ${}) \
                     INSERT INTO audit_events ({EVENT_COLUMNS}) VALUES {values}",
                    p + 2,
                    p + 3,
                    p + 1
                )
            } else {
                format!("INSERT INTO audit_events ({EVENT_COLUMNS}) VALUES {values}")
            };
            let mut q = bind_links(sqlx::query(&sql), chain, group);
            if moves_head {
                q = q.bind(chain).bind(head.seq).bind(head.hash.as_slice());
            }
            q.execute(&mut **tx).await?;
        }
        if dialect != Dialect::Postgres {
            sqlx::query(HEAD_UPDATE)
                .bind(chain)
                .bind(head.seq)
                .bind(head.hash.clone())
                .execute(&mut **tx)
                .await?;
        }
        // Noted before the commit: a guess that never committed only sends
        // the next fast append (see `append_in_one_statement`) this way.
        guesses.note(&head);
        heads.push(head);
    }
    Ok(heads)
}

/// Binds the 15 columns of each link of `group`, all of `chain`, in
/// [`EVENT_COLUMNS`] order.
fn bind_links<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    chain: i64,
    group: &'q [Link<'q>],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for l in group {
        let e = l.event;
        q = q
            .bind(chain)
            .bind(l.seq)
            .bind(ts(e.at))
            .bind(e.actor.as_str())
            .bind(e.action.as_str())
            .bind(e.target.as_str())
            .bind(e.outcome.as_str())
            .bind(e.reason.as_deref())
            .bind(e.detail.as_str())
            .bind(e.session.as_deref())
            .bind(e.client_ip.as_deref())
            .bind(e.user_agent.as_deref())
            .bind(e.request_id.as_deref())
            .bind(l.prev.as_slice())
            .bind(l.hash.as_slice());
    }
    q
}

/// Where this node last saw each chain end (its own appends, on
/// PostgreSQL): a guess, never trusted. An append built on it moves the
/// head only if the head is still there (see `append_in_one_statement`);
/// a stale guess (another node wrote, or a transaction that noted it
/// rolled back) costs one statement that stores nothing.
#[derive(Default)]
pub(crate) struct HeadGuesses(std::sync::Mutex<std::collections::HashMap<i64, (i64, Vec<u8>)>>);

impl HeadGuesses {
    fn get(&self, chain: i64) -> Option<(i64, Vec<u8>)> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&chain)
            .cloned()
    }

    pub(crate) fn note(&self, head: &ChainHead) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= 10_000 && !map.contains_key(&head.chain) {
            map.clear();
        }
        map.insert(head.chain, (head.seq, head.hash.clone()));
    }
}

pub(crate) const HEAD_UPDATE: &str = "UPDATE audit_heads SET seq = $2, hash = $3 WHERE chain = $1";

/// One checkpoint's INSERT; a checkpoint already stored at that place is
/// kept.
pub(crate) const CHECKPOINT_INSERT: &str =
    "INSERT INTO audit_checkpoints (chain, seq, hash, at, key_version, public_key, signature) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (chain, seq) DO NOTHING";

/// One event's place in its chain, worked out before it is stored.
pub(crate) struct Link<'e> {
    pub event: &'e AuditEvent,
    pub seq: i64,
    pub prev: Vec<u8>,
    pub hash: Vec<u8>,
}

/// Links `events` (all of `chain`, in order) onto a chain that ends at
/// `seq` with `hash`; returns their links and the chain's new head.
pub(crate) fn link<'e>(
    chain: i64,
    mut seq: i64,
    mut prev: Vec<u8>,
    events: impl Iterator<Item = &'e AuditEvent>,
) -> (Vec<Link<'e>>, ChainHead) {
    let mut links = Vec::new();
    for event in events {
        seq += 1;
        let hash = chain_hash(&prev, &event.canonical(seq)).to_vec();
        links.push(Link {
            event,
            seq,
            prev: std::mem::replace(&mut prev, hash.clone()),
            hash,
        });
    }
    (
        links,
        ChainHead {
            chain,
            seq,
            hash: prev,
        },
    )
}

/// Where a chain ended after a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub chain: i64,
    pub seq: i64,
    pub hash: Vec<u8>,
}

async fn insert_checkpoint(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    c: &Checkpoint,
) -> StoreResult<()> {
    sqlx::query(CHECKPOINT_INSERT)
        .bind(c.chain)
        .bind(c.seq)
        .bind(c.hash.clone())
        .bind(ts(c.at))
        .bind(c.key_version)
        .bind(c.public_key.clone())
        .bind(c.signature.clone())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The events of one append (in the order given to it) with their sequence
/// numbers, from the heads it returned: each chain's events took the
/// numbers up to its new head, in order. An event of a chain without a
/// head gets none.
pub fn numbered(events: Vec<AuditEvent>, heads: &[ChainHead]) -> Vec<(AuditEvent, Option<i64>)> {
    let mut next: std::collections::HashMap<i64, i64> =
        heads.iter().map(|h| (h.chain, h.seq + 1)).collect();
    for e in &events {
        if let Some(n) = next.get_mut(&e.chain) {
            *n -= 1;
        }
    }
    events
        .into_iter()
        .map(|e| {
            let seq = next.get_mut(&e.chain).map(|n| {
                *n += 1;
                *n - 1
            });
            (e, seq)
        })
        .collect()
}

impl Store {
    /// Stores events durably (one transaction for the batch). Returns only
    /// once they are committed, with where each chain written to now ends
    /// (each event's own number: [`numbered`]).
    pub async fn append_audit(&self, events: &[AuditEvent]) -> StoreResult<Vec<ChainHead>> {
        self.append_audit_signed(events, &[]).await
    }

    /// [`Store::append_audit`], storing `checkpoints` (of events committed
    /// before) in the same transaction: the audit writer's way of signing
    /// without a commit of its own.
    pub async fn append_audit_signed(
        &self,
        events: &[AuditEvent],
        checkpoints: &[Checkpoint],
    ) -> StoreResult<Vec<ChainHead>> {
        if events.is_empty() && checkpoints.is_empty() {
            return Ok(Vec::new());
        }
        if checkpoints.is_empty() {
            if let Some(head) = self.append_in_one_statement(events).await? {
                return Ok(vec![head]);
            }
        }
        let mut w = self.write_tx().await?;
        let heads = chain_events(&mut w.tx, self.dialect, &self.head_guesses, events).await?;
        for c in checkpoints {
            insert_checkpoint(&mut w.tx, c).await?;
        }
        w.commit().await?;
        Ok(heads)
    }

    /// On PostgreSQL, events of one chain (one INSERT's worth) stored by a
    /// single statement, committed on its own: one round trip instead of
    /// four (BEGIN, the head locked, the INSERT, COMMIT). The events are
    /// linked onto where this node last saw the chain end, and the
    /// statement moves the head from exactly there, or stores nothing: a
    /// writer that moved it first (another node, a record write) holds its
    /// row lock until it commits, and PostgreSQL then checks the condition
    /// again against the head it committed. `None` when nothing was stored
    /// (no guess, a stale one, or events this path does not take): the
    /// caller appends as usual, with the head locked.
    async fn append_in_one_statement(
        &self,
        events: &[AuditEvent],
    ) -> StoreResult<Option<ChainHead>> {
        let Some(chain) = events.first().map(|e| e.chain) else {
            return Ok(None);
        };
        if self.dialect != Dialect::Postgres
            || events.len() > ROWS_PER_INSERT
            || events.iter().any(|e| e.chain != chain)
        {
            return Ok(None);
        }
        let Some((seq, hash)) = self.head_guesses.get(chain) else {
            return Ok(None);
        };
        let (links, head) = link(chain, seq, hash.clone(), events.iter());
        let p = links.len() * 15;
        let sql = format!(
            "WITH moved AS (UPDATE audit_heads SET seq = ${}, hash = ${} \
             WHERE chain = ${} AND seq = ${} AND hash = ${} RETURNING chain) \
             INSERT INTO audit_events ({EVENT_COLUMNS}) \
             SELECT * FROM (VALUES {}) AS v WHERE EXISTS (SELECT 1 FROM moved)",
            p + 2,
            p + 3,
            p + 1,
            p + 4,
            p + 5,
            crate::values_placeholders(self.dialect, links.len(), 15),
        );
        let stored = match bind_links(sqlx::query(&sql), chain, &links)
            .bind(chain)
            .bind(head.seq)
            .bind(head.hash.as_slice())
            .bind(seq)
            .bind(hash.as_slice())
            .execute(&self.pool)
            .await
        {
            Ok(done) => done.rows_affected(),
            // A statement that lost to another transaction (a serialization
            // failure under a stricter isolation level than PostgreSQL's
            // default, or a deadlock) stored nothing either: the same answer.
            Err(e) => match StoreError::from(e) {
                e if crate::pg_batch::lost_to_another(&e) => 0,
                e => return Err(e),
            },
        };
        match stored {
            // The usual way that follows notes where the chain now ends.
            0 => Ok(None),
            n if n == links.len() as u64 => {
                self.head_guesses.note(&head);
                self.fast_appends
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(Some(head))
            }
            n => Err(StoreError::Corrupt(format!(
                "an audit append stored {n} of {} events",
                links.len()
            ))),
        }
    }

    /// How many audit batches [`Store::append_audit`] stored with one
    /// statement on PostgreSQL (see `append_in_one_statement`), since the
    /// store was opened: for tests and diagnostics.
    pub fn audit_appends_in_one_statement(&self) -> u64 {
        self.fast_appends.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The sequence number of a chain's newest signed checkpoint.
    pub async fn last_checkpoint_seq(&self, chain: i64) -> StoreResult<Option<i64>> {
        let row = sqlx::query("SELECT MAX(seq) AS seq FROM audit_checkpoints WHERE chain = $1")
            .bind(chain)
            .fetch_one(&self.pool)
            .await?;
        get(&row, "seq")
    }

    /// A page of one chain's events, oldest first, after `q.after_seq`.
    pub async fn audit_events(&self, chain: i64, q: &AuditQuery) -> StoreResult<Vec<StoredEvent>> {
        let mut args = vec![crate::Arg::Int(chain), crate::Arg::Int(q.after_seq)];
        let mut sql = format!(
            "SELECT {} FROM audit_events WHERE chain = $1 AND seq > $2",
            reader_columns(self.dialect)
        );
        if self.dialect == Dialect::Sqlite {
            // INTEGER affinity keeps a place that is not a number, and such
            // a value sorts after every number: read, it would stop every
            // reader there for good. It is left out (`audit verify` names
            // the event as missing).
            sql.push_str(" AND typeof(seq) = 'integer'");
        }
        let mut push = |cond: &str, a: crate::Arg| {
            args.push(a);
            sql.push_str(&format!(" AND {cond} ${}", args.len()));
        };
        if let Some(seq) = q.until_seq {
            push("seq <=", crate::Arg::Int(seq));
        }
        if let Some(t) = q.from {
            push("at >=", crate::Arg::Int(ts(t)));
        }
        if let Some(t) = q.until {
            push("at <", crate::Arg::Int(ts(t)));
        }
        for (col, v) in [
            ("actor =", &q.actor),
            ("action =", &q.action),
            ("target =", &q.target),
            ("outcome =", &q.outcome),
            ("client_ip =", &q.client_ip),
        ] {
            if let Some(v) = v {
                push(col, crate::Arg::Text(v.clone()));
            }
        }
        if q.refusals {
            sql.push_str(" AND outcome <> 'success'");
        }
        args.push(crate::Arg::Int(q.limit.max(1)));
        sql.push_str(&format!(" ORDER BY seq LIMIT ${}", args.len()));
        let rows = crate::bind_all(sqlx::query(&sql), &args)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| event_from_row(r, self.dialect))
            .collect()
    }

    /// The chains that have events.
    pub async fn audit_chains(&self) -> StoreResult<Vec<i64>> {
        Ok(self
            .audit_ends()
            .await?
            .into_iter()
            .map(|(c, _)| c)
            .collect())
    }

    /// Where every chain ends: (chain, seq), in chain order.
    pub async fn audit_ends(&self) -> StoreResult<Vec<(i64, i64)>> {
        let rows = sqlx::query("SELECT chain, seq FROM audit_heads ORDER BY chain")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((get(r, "chain")?, get(r, "seq")?)))
            .collect()
    }

    /// Where a chain ends: (seq, hash), if it has begun.
    pub async fn audit_head(&self, chain: i64) -> StoreResult<Option<(i64, Vec<u8>)>> {
        let row = sqlx::query("SELECT seq, hash FROM audit_heads WHERE chain = $1")
            .bind(chain)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((get(&r, "seq")?, get(&r, "hash")?)))
            .transpose()
    }

    pub async fn add_checkpoint(&self, c: &Checkpoint) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        insert_checkpoint(&mut w.tx, c).await?;
        w.commit().await
    }

    pub async fn checkpoints(&self, chain: i64) -> StoreResult<Vec<Checkpoint>> {
        let rows = sqlx::query(
            "SELECT chain, seq, hash, at, key_version, public_key, signature FROM audit_checkpoints \
             WHERE chain = $1 ORDER BY seq",
        )
        .bind(chain)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(checkpoint_from_row).collect()
    }
}

impl Store {
    pub async fn forward_cursor(&self, chain: i64) -> StoreResult<i64> {
        let row = sqlx::query("SELECT seq FROM forward_cursors WHERE chain = $1")
            .bind(chain)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => get(&r, "seq")?,
            None => 0,
        })
    }

    pub async fn set_forward_cursor(&self, chain: i64, seq: i64) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        sqlx::query("DELETE FROM forward_cursors WHERE chain = $1")
            .bind(chain)
            .execute(&mut *w.tx)
            .await?;
        sqlx::query("INSERT INTO forward_cursors (chain, seq) VALUES ($1, $2)")
            .bind(chain)
            .bind(seq)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await
    }

    /// Where a chain's live log starts after archiving: (seq, hash) of the
    /// last archived event.
    pub async fn audit_anchor(&self, chain: i64) -> StoreResult<Option<(i64, Vec<u8>)>> {
        let row = sqlx::query("SELECT seq, hash FROM audit_anchors WHERE chain = $1")
            .bind(chain)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((get(&r, "seq")?, get(&r, "hash")?)))
            .transpose()
    }

    /// Removes a chain's events up to `upto` (already written to an archive
    /// by the caller) and records the anchor the live log continues from.
    pub async fn archive_prefix(
        &self,
        chain: i64,
        upto: i64,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        let row = sqlx::query("SELECT hash FROM audit_events WHERE chain = $1 AND seq = $2")
            .bind(chain)
            .bind(upto)
            .fetch_optional(&mut *w.tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("event {upto} is not in the live log")))?;
        let hash: Vec<u8> = get(&row, "hash")?;
        sqlx::query("DELETE FROM audit_anchors WHERE chain = $1")
            .bind(chain)
            .execute(&mut *w.tx)
            .await?;
        sqlx::query(
            "INSERT INTO audit_anchors (chain, seq, hash, archived_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(chain)
        .bind(upto)
        .bind(hash)
        .bind(ts(now))
        .execute(&mut *w.tx)
        .await?;
        sqlx::query("DELETE FROM audit_events WHERE chain = $1 AND seq <= $2")
            .bind(chain)
            .bind(upto)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await
    }
}

impl Store {
    /// Hands every event of a chain after `after_seq` and up to `until_seq`
    /// (`i64::MAX`: to the end) to `visit` with `state` (as a [`LinkRef`]:
    /// what its hash covers, and its links), oldest first, until `visit`
    /// says stop (returns `false`); gives the state back. Scans of
    /// different ranges may run at once.
    ///
    /// For verifying a whole chain. On an SQLite file the rows are read on a
    /// thread of their own through a read-only connection (rusqlite), while
    /// `visit` runs on another: sqlx's driver hands every row from its
    /// worker thread to the caller's, which costs several times more than
    /// reading and hashing the row. On PostgreSQL they stream over a
    /// connection of the scan's own (see `scan_postgres`); elsewhere (an
    /// in-memory database) they come in pages through the pool.
    pub async fn scan_audit<S, F>(
        &self,
        chain: i64,
        after_seq: i64,
        until_seq: i64,
        mut state: S,
        visit: F,
    ) -> StoreResult<S>
    where
        S: Send + 'static,
        F: Fn(&mut S, LinkRef<'_>) -> bool + Send + 'static,
    {
        if let Some(file) = self.sqlite_file.clone() {
            return tokio::task::spawn_blocking(move || {
                scan_sqlite_pipelined(&file, chain, after_seq, until_seq, &mut |e| {
                    visit(&mut state, e)
                })?;
                Ok(state)
            })
            .await
            .map_err(|e| StoreError::Sqlite(format!("the audit scan stopped: {e}")))?;
        }
        if let Some(opts) = self.pg_options.clone() {
            return scan_postgres(opts, chain, after_seq, until_seq, state, visit).await;
        }
        // The next page is asked for before this one is visited, so the
        // database's work overlaps ours.
        let fetch = |after: i64| {
            let store = self.clone();
            tokio::spawn(async move { store.audit_after(chain, after, 2000).await })
        };
        let mut next = fetch(after_seq);
        loop {
            let page = next
                .await
                .map_err(|e| StoreError::Sqlite(format!("the audit scan stopped: {e}")))??;
            let Some(last) = page.last() else {
                return Ok(state);
            };
            next = fetch(last.seq);
            for e in page {
                if e.seq > until_seq || !visit(&mut state, ChainLink::of(&e).as_link()) {
                    next.abort();
                    return Ok(state);
                }
            }
        }
    }

    /// Where a chain's events stored at or after `since` begin: the place
    /// just before the first of them in time (found by the time index), or
    /// `None` when there are none. Reading on from there with
    /// [`AuditQuery::from`] set reads the events since then without
    /// walking the chain from its start.
    pub async fn audit_place_before(
        &self,
        chain: i64,
        since: DateTime<Utc>,
    ) -> StoreResult<Option<i64>> {
        let row = sqlx::query(
            "SELECT seq FROM audit_events WHERE chain = $1 AND at >= $2 ORDER BY at LIMIT 1",
        )
        .bind(chain)
        .bind(ts(since))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| get::<i64>(&r, "seq").map(|seq| seq - 1))
            .transpose()
    }

    /// The next page of a chain after `after_seq`, oldest first (no filters).
    pub async fn audit_after(
        &self,
        chain: i64,
        after_seq: i64,
        limit: i64,
    ) -> StoreResult<Vec<StoredEvent>> {
        self.audit_events(
            chain,
            &AuditQuery {
                after_seq,
                limit,
                ..Default::default()
            },
        )
        .await
    }
}
