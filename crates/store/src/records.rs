//! Record types, records, their versions and the exact-match index.

use crate::appender::{append_events, failed};
use crate::reader::{numbered, one, Cols, Fast};
use crate::{flag, from_ts, get, opt_ts, ts, Arg, Store, StoreError, StoreResult};
use chrono::{DateTime, Utc};
use rusqlite::OptionalExtension;
use sqlx::any::AnyRow;
use strongroom_core::catalogue::RecordTypeDef;
use strongroom_core::{CompanyId, UserKey};
use strongroom_proto::{
    ChangeKind, Classification, DeletedFilter, FieldDef, FieldType, PiiKind, RecordData,
    RecordTypeView, RecordVersionView, RecordView,
};

/// A record type with its internal id.
#[derive(Debug, Clone)]
pub struct StoredRecordType {
    pub id: i64,
    pub view: RecordTypeView,
}

/// A record with its internal id.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub id: i64,
    pub department_id: Option<i64>,
    pub owner: UserKey,
    pub view: RecordView,
}

/// Exact-match index entries of a record: field key and index value (the
/// plain value, or a blind index for protected fields).
pub type IndexEntries = Vec<(String, String)>;

/// A new version of a record's state. `data` is in stored form (protected
/// values sealed).
#[derive(Debug, Clone)]
pub struct RecordWrite<'a> {
    pub data: &'a RecordData,
    /// Audit events stored in the same transaction as the change.
    pub audit: &'a [strongroom_core::audit::AuditEvent],
    pub index: &'a IndexEntries,
    pub deleted_at: Option<DateTime<Utc>>,
    pub kind: ChangeKind,
    pub actor: UserKey,
    pub now: DateTime<Utc>,
}

/// What a list asks for.
#[derive(Debug, Clone, Default)]
pub struct RecordQuery {
    /// Only records with an internal id above this (keyset pagination).
    pub after: Option<i64>,
    pub limit: u32,
    pub deleted: DeletedFilter,
    /// Exact-match filters: field key and value in index form.
    pub equals: Vec<(String, String)>,
    /// When set, only records of this department or owned by this user
    /// (the caller's scope); `(None, None)` matches nothing.
    pub only: Option<(Option<i64>, Option<UserKey>)>,
}

fn enum_col<T>(row: &AnyRow, col: &str, parse: fn(&str) -> Option<T>) -> StoreResult<T> {
    let s: String = get(row, col)?;
    parse(&s).ok_or_else(|| StoreError::Corrupt(format!("{col} '{s}'")))
}

pub(crate) async fn insert_record_type(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    company: CompanyId,
    def: &RecordTypeDef,
    built_in: bool,
    now: DateTime<Utc>,
) -> StoreResult<i64> {
    let row = sqlx::query(
        "INSERT INTO record_types (company_id, type_key, name, classification, built_in, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(company.0)
    .bind(&def.key)
    .bind(&def.name)
    .bind(def.classification.as_str())
    .bind(built_in as i64)
    .bind(ts(now))
    .fetch_one(&mut **tx)
    .await
    .map_err(|e| {
        StoreError::map_conflict(
            e,
            &format!("record type '{}' already exists", def.key),
            "record type conflict",
        )
    })?;
    let id: i64 = get(&row, "id")?;
    insert_fields(tx, company, id, 0, &def.fields).await?;
    Ok(id)
}

async fn insert_fields(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    company: CompanyId,
    type_id: i64,
    first_position: i64,
    fields: &[FieldDef],
) -> StoreResult<()> {
    for (i, f) in fields.iter().enumerate() {
        sqlx::query(
            "INSERT INTO record_fields (company_id, record_type_id, field_key, label, field_type, \
               classification, pii_kind, required, position) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(company.0)
        .bind(type_id)
        .bind(&f.key)
        .bind(&f.label)
        .bind(f.field_type.as_str())
        .bind(f.classification.as_str())
        .bind(f.pii_kind.as_str())
        .bind(f.required as i64)
        .bind(first_position + i as i64)
        .execute(&mut **tx)
        .await
        .map_err(|e| {
            StoreError::map_conflict(
                e,
                &format!("field '{}' already exists", f.key),
                "field conflict",
            )
        })?;
    }
    Ok(())
}

const RECORD_COLUMNS: &str = "r.id, r.public_id, t.type_key, r.version, r.data, r.department_id, \
    d.code AS department_code, r.owner_key, o.user_id AS owner_id, r.created_at, r.updated_at, r.deleted_at";

const RECORD_FROM: &str = "FROM records r \
    JOIN record_types t ON t.id = r.record_type_id AND t.company_id = r.company_id \
    JOIN users o ON o.id = r.owner_key \
    LEFT JOIN departments d ON d.id = r.department_id";

fn parse_data(text: &str) -> StoreResult<RecordData> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("record data: {e}")))
}

const INSERT_RECORD: &str = "INSERT INTO records (public_id, company_id, record_type_id, version, \
    data, department_id, owner_key, created_at, updated_at) \
    VALUES ($1, $2, $3, 1, $4, $5, $6, $7, $7) RETURNING id";
const INSERT_VERSION: &str = "INSERT INTO record_versions (record_id, company_id, version, \
    change_kind, data, deleted, changed_at, changed_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
const UPDATE_DELETED: &str = "UPDATE records SET version = version + 1, data = $4, \
    updated_at = $5, deleted_at = $6 WHERE company_id = $1 AND id = $2 AND version = $3";
const UPDATE_LIVE: &str = "UPDATE records SET version = version + 1, data = $4, \
    updated_at = $5, deleted_at = NULL WHERE company_id = $1 AND id = $2 AND version = $3";
const RECORD_VERSION: &str = "SELECT version FROM records WHERE company_id = $1 AND id = $2";
const DELETE_INDEX: &str = "DELETE FROM record_index WHERE company_id = $1 AND record_id = $2";
/// Followed by the VALUES rows.
const INSERT_INDEX: &str =
    "INSERT INTO record_index (record_id, field_key, company_id, record_type_id, value) VALUES ";
const ID_TAKEN: &str = "record id collision; retry";
const NO_DEPARTMENT: &str = "no such department";
const NO_RECORD: &str = "no such record";

/// What every record write stores beside the record's row: its new
/// version, its blind-index entries and its audit events. Run by the SQLite
/// writer (see `batch`) through rusqlite, or through sqlx by the PostgreSQL
/// writer (see `pg_batch`), which chains the audit events of a whole batch
/// after its writes.
pub(crate) struct Change {
    company: i64,
    type_id: i64,
    text: String,
    kind: ChangeKind,
    actor: i64,
    now: i64,
    index: IndexEntries,
    audit: Vec<strongroom_core::audit::AuditEvent>,
}

impl Change {
    /// Stores version `version` of record `id`, its blind-index entries
    /// and the audit events; hands back the record as now stored.
    fn finish(
        &self,
        tx: &rusqlite::Connection,
        id: i64,
        version: i64,
        deleted: bool,
    ) -> StoreResult<StoredRecord> {
        tx.prepare_cached(numbered(INSERT_VERSION))
            .and_then(|mut s| {
                s.execute(rusqlite::params![
                    id,
                    self.company,
                    version,
                    self.kind.as_str(),
                    self.text,
                    deleted as i64,
                    self.now,
                    self.actor
                ])
            })
            .map_err(failed)?;
        let mut entry = tx
            .prepare_cached(numbered(insert_index_row()))
            .map_err(failed)?;
        for (key, value) in &self.index {
            entry
                .execute(rusqlite::params![
                    id,
                    key,
                    self.company,
                    self.type_id,
                    value
                ])
                .map_err(failed)?;
        }
        let stored = stored_record_sqlite(tx, self.company, id)?;
        append_events(tx, &self.audit)?;
        Ok(stored)
    }

    /// Binds [`INSERT_VERSION`]'s parameters ($1 to $8) for version
    /// `version` of record `id`.
    fn bind_version<'q>(
        &'q self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
        id: i64,
        version: i64,
        deleted: bool,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        q.bind(id)
            .bind(self.company)
            .bind(version)
            .bind(self.kind.as_str())
            .bind(self.text.as_str())
            .bind(deleted as i64)
            .bind(self.now)
            .bind(self.actor)
    }

    /// [`Change::finish`] through sqlx, without the audit events: whoever
    /// commits the transaction chains them (see [`RecordJob`]).
    async fn finish_sqlx(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        dialect: crate::Dialect,
        id: i64,
        version: i64,
        deleted: bool,
    ) -> StoreResult<StoredRecord> {
        if dialect == crate::Dialect::Postgres {
            // One statement (and one round trip) for all three: each part
            // reads the snapshot taken when the statement starts, which
            // holds the record's row written by the statement before.
            let mut q = self.bind_version(
                sqlx::query(finish_postgres(self.index.len())),
                id,
                version,
                deleted,
            );
            if !self.index.is_empty() {
                q = q.bind(self.type_id);
            }
            for (key, value) in &self.index {
                q = q.bind(key).bind(value);
            }
            let row = q.fetch_one(&mut **tx).await?;
            return record_from_row(&row);
        }
        self.bind_version(sqlx::query(INSERT_VERSION), id, version, deleted)
            .execute(&mut **tx)
            .await?;
        write_index(
            tx,
            dialect,
            CompanyId(self.company),
            self.type_id,
            id,
            &self.index,
        )
        .await?;
        stored_record(tx, self.company, id).await
    }
}

/// [`Change::finish_sqlx`]'s statement on PostgreSQL for a record with
/// `entries` index entries: the version's row and the index rows inserted,
/// and the record read back, in one. Parameters: $1 to $8 as
/// [`INSERT_VERSION`]'s; with entries, $9 the record type, then each
/// entry's key and value.
fn finish_postgres(entries: usize) -> &'static str {
    // Built once for each number of entries a record type has (a handful,
    // at most MAX_FIELDS + 1), kept for the process's life.
    static SQL: std::sync::Mutex<Vec<(usize, &'static str)>> = std::sync::Mutex::new(Vec::new());
    let mut built = SQL.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, sql)) = built.iter().find(|(n, _)| *n == entries) {
        return sql;
    }
    let index = if entries == 0 {
        String::new()
    } else {
        let rows: Vec<String> = (0..entries)
            .map(|i| format!("($1, ${}, $2, $9, ${})", 10 + 2 * i, 11 + 2 * i))
            .collect();
        format!(", i AS ({INSERT_INDEX}{})", rows.join(", "))
    };
    let sql: &'static str = Box::leak(
        format!(
            "WITH v AS ({INSERT_VERSION}){index} \
             SELECT {RECORD_COLUMNS} {RECORD_FROM} WHERE r.company_id = $2 AND r.id = $1"
        )
        .into_boxed_str(),
    );
    built.push((entries, sql));
    sql
}

/// A new record.
pub(crate) struct NewRecord {
    change: Change,
    public_id: String,
    department_id: Option<i64>,
}

impl NewRecord {
    fn insert(&self, tx: &rusqlite::Connection) -> StoreResult<StoredRecord> {
        let c = &self.change;
        let id: i64 = tx
            .prepare_cached(numbered(INSERT_RECORD))
            .and_then(|mut s| {
                s.query_row(
                    rusqlite::params![
                        self.public_id,
                        c.company,
                        c.type_id,
                        c.text,
                        self.department_id,
                        c.actor,
                        c.now
                    ],
                    |r| r.get(0),
                )
            })
            .map_err(|e| sqlite_conflict(e, ID_TAKEN, NO_DEPARTMENT))?;
        c.finish(tx, id, 1, false)
    }

    /// [`NewRecord::insert`] through sqlx, without the audit events.
    async fn insert_sqlx(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        dialect: crate::Dialect,
    ) -> StoreResult<StoredRecord> {
        let c = &self.change;
        let row = sqlx::query(INSERT_RECORD)
            .bind(&self.public_id)
            .bind(c.company)
            .bind(c.type_id)
            .bind(&c.text)
            .bind(self.department_id)
            .bind(c.actor)
            .bind(c.now)
            .fetch_one(&mut **tx)
            .await
            .map_err(|e| StoreError::map_conflict(e, ID_TAKEN, NO_DEPARTMENT))?;
        let id: i64 = get(&row, "id")?;
        c.finish_sqlx(tx, dialect, id, 1, false).await
    }
}

/// A change to a record still at `expected_version`.
pub(crate) struct Update {
    change: Change,
    id: i64,
    expected_version: i64,
    deleted_at: Option<i64>,
}

impl Update {
    fn apply(&self, tx: &rusqlite::Connection) -> StoreResult<StoredRecord> {
        let c = &self.change;
        let (company, id, v) = (c.company, self.id, self.expected_version);
        let changed = match self.deleted_at {
            Some(d) => tx
                .prepare_cached(numbered(UPDATE_DELETED))
                .and_then(|mut s| s.execute(rusqlite::params![company, id, v, c.text, c.now, d])),
            None => tx
                .prepare_cached(numbered(UPDATE_LIVE))
                .and_then(|mut s| s.execute(rusqlite::params![company, id, v, c.text, c.now])),
        }
        .map_err(failed)?;
        if changed != 1 {
            let current = tx
                .prepare_cached(numbered(RECORD_VERSION))
                .and_then(|mut s| {
                    s.query_row((company, id), |r| r.get::<_, i64>(0))
                        .optional()
                })
                .map_err(failed)?;
            return Err(match current {
                Some(current) => StoreError::VersionConflict { current },
                None => StoreError::NotFound(NO_RECORD.into()),
            });
        }
        tx.prepare_cached(numbered(DELETE_INDEX))
            .and_then(|mut s| s.execute((company, id)))
            .map_err(failed)?;
        c.finish(tx, id, v + 1, self.deleted_at.is_some())
    }

    /// [`Update::apply`] through sqlx, without the audit events.
    async fn apply_sqlx(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        dialect: crate::Dialect,
    ) -> StoreResult<StoredRecord> {
        let c = &self.change;
        let (company, id, v) = (c.company, self.id, self.expected_version);
        let mut query = sqlx::query(if self.deleted_at.is_some() {
            UPDATE_DELETED
        } else {
            UPDATE_LIVE
        })
        .bind(company)
        .bind(id)
        .bind(v)
        .bind(&c.text)
        .bind(c.now);
        if let Some(d) = self.deleted_at {
            query = query.bind(d);
        }
        let changed = query.execute(&mut **tx).await?.rows_affected();
        if changed != 1 {
            let row = sqlx::query(RECORD_VERSION)
                .bind(company)
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?;
            return match row {
                Some(r) => Err(StoreError::VersionConflict {
                    current: get(&r, "version")?,
                }),
                None => Err(StoreError::NotFound(NO_RECORD.into())),
            };
        }
        // A statement of its own, after the update: its snapshot holds the
        // index rows of a re-encryption that committed while the update
        // waited for the row (one statement's snapshot would not, and the
        // new rows would then collide with them).
        sqlx::query(DELETE_INDEX)
            .bind(company)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        c.finish_sqlx(tx, dialect, id, v + 1, self.deleted_at.is_some())
            .await
    }
}

/// A record write for a transaction run through sqlx: on PostgreSQL one of
/// a batch (see `pg_batch`), elsewhere (an in-memory database) alone.
pub(crate) enum RecordJob {
    Create(NewRecord),
    Update(Update),
}

impl RecordJob {
    /// Runs the write's statements in `tx` (not its audit events) and
    /// hands back the record as now stored.
    pub(crate) async fn run(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        dialect: crate::Dialect,
    ) -> StoreResult<StoredRecord> {
        match self {
            RecordJob::Create(n) => n.insert_sqlx(tx, dialect).await,
            RecordJob::Update(u) => u.apply_sqlx(tx, dialect).await,
        }
    }

    /// The audit events to store if and only if the write is stored.
    pub(crate) fn audit(&self) -> &[strongroom_core::audit::AuditEvent] {
        match self {
            RecordJob::Create(n) => &n.change.audit,
            RecordJob::Update(u) => &u.change.audit,
        }
    }
}

/// One blind-index entry's INSERT, built once.
fn insert_index_row() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| format!("{INSERT_INDEX}($1, $2, $3, $4, $5)"))
}

/// A record as written, read back inside the transaction that wrote it
/// (the writer's pages are warm; a reader's would not be).
fn stored_record_sqlite(
    tx: &rusqlite::Connection,
    company: i64,
    id: i64,
) -> StoreResult<StoredRecord> {
    one(tx, record_by_id(), (company, id), |r| record_from_row(r))?
        .ok_or_else(|| StoreError::NotFound(NO_RECORD.into()))
}

/// [`stored_record_sqlite`] through sqlx.
async fn stored_record(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    company: i64,
    id: i64,
) -> StoreResult<StoredRecord> {
    let row = sqlx::query(record_by_id())
        .bind(company)
        .bind(id)
        .fetch_one(&mut **tx)
        .await?;
    record_from_row(&row)
}

/// [`StoreError::map_conflict`] for SQLite's own errors.
fn sqlite_conflict(e: rusqlite::Error, unique: &str, fk: &str) -> StoreError {
    use rusqlite::ffi;
    match e.sqlite_error().map(|f| f.extended_code) {
        Some(ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
            StoreError::Conflict(unique.into())
        }
        Some(ffi::SQLITE_CONSTRAINT_FOREIGNKEY) => StoreError::Conflict(fk.into()),
        _ => failed(e),
    }
}

fn record_from_row(row: &impl Cols) -> StoreResult<StoredRecord> {
    let data = row.text(4, "data")?;
    Ok(StoredRecord {
        id: row.int(0, "id")?,
        department_id: row.opt_int(5, "department_id")?,
        owner: UserKey(row.int(7, "owner_key")?),
        view: RecordView {
            id: row.text(1, "public_id")?,
            record_type: row.text(2, "type_key")?,
            version: row.int(3, "version")?,
            data: parse_data(&data)?,
            department: row.opt_text(6, "department_code")?,
            owner: row.text(8, "owner_id")?,
            created_at: from_ts(row.int(9, "created_at")?)?,
            updated_at: from_ts(row.int(10, "updated_at")?)?,
            deleted_at: opt_ts(row.opt_int(11, "deleted_at")?)?,
            masked: Vec::new(),
            revealed: Vec::new(),
            withheld: Vec::new(),
        },
    })
}

/// A record by its internal id, built once.
fn record_by_id() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!("SELECT {RECORD_COLUMNS} {RECORD_FROM} WHERE r.company_id = $1 AND r.id = $2")
    })
}

/// The statement behind [`Store::record`], built once.
fn record_query() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "SELECT {RECORD_COLUMNS} {RECORD_FROM} \
             WHERE r.company_id = $1 AND r.record_type_id = $2 AND r.public_id = $3"
        )
    })
}

impl Store {
    pub async fn list_record_types(&self, company: CompanyId) -> StoreResult<Vec<RecordTypeView>> {
        let types = sqlx::query(
            "SELECT id, type_key, name, classification, built_in FROM record_types \
             WHERE company_id = $1 ORDER BY type_key",
        )
        .bind(company.0)
        .fetch_all(&self.pool)
        .await?;
        let fields = sqlx::query(
            "SELECT record_type_id, field_key, label, field_type, classification, pii_kind, required \
             FROM record_fields WHERE company_id = $1 ORDER BY record_type_id, position",
        )
        .bind(company.0)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(types.len());
        for t in &types {
            let id: i64 = get(t, "id")?;
            let mut fs = Vec::new();
            for f in &fields {
                if get::<i64>(f, "record_type_id")? == id {
                    fs.push(field_from_row(f)?);
                }
            }
            out.push(type_view(t, fs)?);
        }
        Ok(out)
    }

    /// A record type with its fields, in one query (every record request
    /// needs it).
    pub async fn record_type(
        &self,
        company: CompanyId,
        key: &str,
    ) -> StoreResult<Option<StoredRecordType>> {
        let rows = sqlx::query(
            "SELECT t.id, t.type_key, t.name, t.classification, t.built_in, \
               f.field_key, f.label, f.field_type, f.classification AS field_classification, \
               f.pii_kind, f.required \
             FROM record_types t \
             LEFT JOIN record_fields f ON f.record_type_id = t.id AND f.company_id = t.company_id \
             WHERE t.company_id = $1 AND t.type_key = $2 ORDER BY f.position",
        )
        .bind(company.0)
        .bind(key)
        .fetch_all(&self.pool)
        .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let mut fields = Vec::with_capacity(rows.len());
        for r in &rows {
            if get::<Option<String>>(r, "field_key")?.is_none() {
                continue;
            }
            fields.push(FieldDef {
                key: get(r, "field_key")?,
                label: get(r, "label")?,
                field_type: enum_col(r, "field_type", FieldType::parse)?,
                classification: enum_col(r, "field_classification", Classification::parse)?,
                pii_kind: enum_col(r, "pii_kind", PiiKind::parse)?,
                required: flag(r, "required")?,
            });
        }
        Ok(Some(StoredRecordType {
            id: get(first, "id")?,
            view: type_view(first, fields)?,
        }))
    }

    pub async fn create_record_type(
        &self,
        company: CompanyId,
        def: &RecordTypeDef,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        insert_record_type(&mut w.tx, company, def, false, now).await?;
        w.commit().await
    }

    pub async fn add_fields(
        &self,
        company: CompanyId,
        record_type: &StoredRecordType,
        fields: &[FieldDef],
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        let first = record_type.view.fields.len() as i64;
        insert_fields(&mut w.tx, company, record_type.id, first, fields).await?;
        w.commit().await
    }

    /// Stores a new record and its first version.
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_record(
        &self,
        company: CompanyId,
        record_type: &StoredRecordType,
        public_id: &str,
        department_id: Option<i64>,
        data: &RecordData,
        index: &IndexEntries,
        actor: UserKey,
        audit: &[strongroom_core::audit::AuditEvent],
        now: DateTime<Utc>,
    ) -> StoreResult<StoredRecord> {
        let text = serde_json::to_string(data).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let new = NewRecord {
            change: Change {
                company: company.0,
                type_id: record_type.id,
                text,
                kind: ChangeKind::Create,
                actor: actor.0,
                now: ts(now),
                index: index.clone(),
                audit: audit.to_vec(),
            },
            public_id: public_id.to_owned(),
            department_id,
        };
        if let Some(writer) = &self.record_writer {
            return writer.write(move |tx| new.insert(tx)).await;
        }
        self.write_through_sqlx(RecordJob::Create(new)).await
    }

    /// A record write on PostgreSQL (in the writer's next batch) or on an
    /// in-memory database (a transaction of its own), with its audit
    /// events in the same transaction.
    async fn write_through_sqlx(&self, job: RecordJob) -> StoreResult<StoredRecord> {
        if let Some(writer) = &self.pg_writer {
            return writer.write(job).await;
        }
        let mut w = self.write_tx().await?;
        let stored = job.run(&mut w.tx, self.dialect).await?;
        crate::audit::chain_events(&mut w.tx, self.dialect, &self.head_guesses, job.audit())
            .await?;
        w.commit().await?;
        Ok(stored)
    }

    pub async fn record(
        &self,
        company: CompanyId,
        record_type: &StoredRecordType,
        public_id: &str,
    ) -> StoreResult<Option<StoredRecord>> {
        let sql = record_query();
        if let Some(readers) = &self.readers {
            let params = (company.0, record_type.id, public_id);
            if let Fast::Done(r) = readers.read(|c| one(c, sql, params, |r| record_from_row(r))) {
                return r;
            }
        }
        let row = sqlx::query(sql)
            .bind(company.0)
            .bind(record_type.id)
            .bind(public_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    /// One page of records in creation order. Returns the records and, when
    /// more may follow, the internal id to continue after.
    /// Changes the classification of a record type and of some of its
    /// fields.
    pub async fn set_classification(
        &self,
        company: CompanyId,
        record_type: &StoredRecordType,
        type_level: Option<strongroom_proto::Classification>,
        fields: &std::collections::BTreeMap<String, strongroom_proto::Classification>,
    ) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        if let Some(c) = type_level {
            sqlx::query(
                "UPDATE record_types SET classification = $3 WHERE company_id = $1 AND id = $2",
            )
            .bind(company.0)
            .bind(record_type.id)
            .bind(c.as_str())
            .execute(&mut *w.tx)
            .await?;
        }
        for (f, c) in fields {
            sqlx::query(
                "UPDATE record_fields SET classification = $4 \
                 WHERE company_id = $1 AND record_type_id = $2 AND field_key = $3",
            )
            .bind(company.0)
            .bind(record_type.id)
            .bind(f)
            .bind(c.as_str())
            .execute(&mut *w.tx)
            .await?;
        }
        w.commit().await
    }

    pub async fn list_records(
        &self,
        company: CompanyId,
        record_type: &StoredRecordType,
        q: &RecordQuery,
    ) -> StoreResult<(Vec<StoredRecord>, Option<i64>)> {
        let mut args = vec![
            Arg::Int(company.0),
            Arg::Int(record_type.id),
            Arg::Int(q.after.unwrap_or(0)),
        ];
        let mut sql = format!(
            "SELECT {RECORD_COLUMNS} {RECORD_FROM} \
             WHERE r.company_id = $1 AND r.record_type_id = $2 AND r.id > $3"
        );
        if let Some((dept, owner)) = q.only {
            let mut any = Vec::new();
            if let Some(d) = dept {
                args.push(Arg::Int(d));
                any.push(format!("r.department_id = ${}", args.len()));
            }
            if let Some(o) = owner {
                args.push(Arg::Int(o.0));
                any.push(format!("r.owner_key = ${}", args.len()));
            }
            if any.is_empty() {
                sql.push_str(" AND 1 = 0");
            } else {
                sql.push_str(&format!(" AND ({})", any.join(" OR ")));
            }
        }
        match q.deleted {
            DeletedFilter::Exclude => sql.push_str(" AND r.deleted_at IS NULL"),
            DeletedFilter::Only => sql.push_str(" AND r.deleted_at IS NOT NULL"),
            DeletedFilter::Include => {}
        }
        for (field, value) in &q.equals {
            args.push(Arg::Text(field.clone()));
            args.push(Arg::Text(value.clone()));
            let (f, v) = (args.len() - 1, args.len());
            sql.push_str(&format!(
                " AND r.id IN (SELECT i.record_id FROM record_index i WHERE i.company_id = $1 \
                   AND i.record_type_id = $2 AND i.field_key = ${f} AND i.value = ${v})"
            ));
        }
        // One extra row tells whether another page follows.
        let limit = q.limit.max(1);
        args.push(Arg::Int(i64::from(limit) + 1));
        sql.push_str(&format!(" ORDER BY r.id LIMIT ${}", args.len()));
        let rows = crate::bind_all(sqlx::query(&sql), &args)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut last = None;
        for r in rows.iter().take(limit as usize) {
            let rec = record_from_row(r)?;
            last = Some(rec.id);
            out.push(rec);
        }
        let next = if rows.len() > limit as usize {
            last
        } else {
            None
        };
        Ok((out, next))
    }

    /// Writes a new version of a record if it is still at `expected_version`.
    pub async fn write_record(
        &self,
        company: CompanyId,
        record_type: &StoredRecordType,
        record: &StoredRecord,
        expected_version: i64,
        change: RecordWrite<'_>,
    ) -> StoreResult<StoredRecord> {
        let text =
            serde_json::to_string(change.data).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let deleted_at = change.deleted_at.map(ts);
        let update = Update {
            change: Change {
                company: company.0,
                type_id: record_type.id,
                text,
                kind: change.kind,
                actor: change.actor.0,
                now: ts(change.now),
                index: change.index.clone(),
                audit: change.audit.to_vec(),
            },
            id: record.id,
            expected_version,
            deleted_at,
        };
        if let Some(writer) = &self.record_writer {
            return writer.write(move |tx| update.apply(tx)).await;
        }
        self.write_through_sqlx(RecordJob::Update(update)).await
    }

    /// Every version of a record, oldest first.
    pub async fn record_history(
        &self,
        company: CompanyId,
        record: &StoredRecord,
    ) -> StoreResult<Vec<RecordVersionView>> {
        let rows = sqlx::query(
            "SELECT v.version, v.change_kind, v.data, v.deleted, v.changed_at, u.user_id \
             FROM record_versions v JOIN users u ON u.id = v.changed_by \
             WHERE v.company_id = $1 AND v.record_id = $2 ORDER BY v.version",
        )
        .bind(company.0)
        .bind(record.id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let data: String = get(r, "data")?;
                Ok(RecordVersionView {
                    version: get(r, "version")?,
                    change: enum_col(r, "change_kind", ChangeKind::parse)?,
                    data: parse_data(&data)?,
                    deleted: flag(r, "deleted")?,
                    changed_at: from_ts(get(r, "changed_at")?)?,
                    changed_by: get(r, "user_id")?,
                    masked: Vec::new(),
                    revealed: Vec::new(),
                    withheld: Vec::new(),
                })
            })
            .collect()
    }
}

pub(crate) async fn write_index(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    dialect: crate::Dialect,
    company: CompanyId,
    type_id: i64,
    record_id: i64,
    index: &IndexEntries,
) -> StoreResult<()> {
    // One statement for all of a record's entries (a record has at most a
    // few dozen fields, far below both backends' parameter limits).
    let entries: Vec<_> = index.iter().collect();
    for group in entries.chunks(100) {
        let sql = format!(
            "{INSERT_INDEX}{}",
            crate::values_placeholders(dialect, group.len(), 5)
        );
        let mut q = sqlx::query(&sql);
        for (key, text) in group {
            q = q
                .bind(record_id)
                .bind(key)
                .bind(company.0)
                .bind(type_id)
                .bind(text);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

fn field_from_row(r: &AnyRow) -> StoreResult<FieldDef> {
    Ok(FieldDef {
        key: get(r, "field_key")?,
        label: get(r, "label")?,
        field_type: enum_col(r, "field_type", FieldType::parse)?,
        classification: enum_col(r, "classification", Classification::parse)?,
        pii_kind: enum_col(r, "pii_kind", PiiKind::parse)?,
        required: flag(r, "required")?,
    })
}

fn type_view(t: &AnyRow, fields: Vec<FieldDef>) -> StoreResult<RecordTypeView> {
    Ok(RecordTypeView {
        key: get(t, "type_key")?,
        name: get(t, "name")?,
        classification: enum_col(t, "classification", Classification::parse)?,
        fields,
        built_in: flag(t, "built_in")?,
    })
}
