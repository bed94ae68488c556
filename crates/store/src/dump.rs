//! Logical dump and load of the whole store, for backups: every table read
//! inside one read-only transaction (one consistent snapshot while the
//! server keeps serving), rows as plain cells independent of the backend,
//! and loading them into an empty store of the same schema version.

use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use sqlx::{Column, Row, TypeInfo, ValueRef};

use crate::{Dialect, Store, StoreError, StoreResult};

/// Every table a backup holds, parents before children (the order a
/// restore loads them in). Sessions and pending sign-in challenges are
/// left out on purpose: after a restore everyone signs in again.
pub const BACKUP_TABLES: &[&str] = &[
    "companies",
    "departments",
    "users",
    "record_types",
    "record_fields",
    "records",
    "record_versions",
    "record_index",
    "company_keys",
    "key_rotations",
    "audit_events",
    "audit_heads",
    "audit_checkpoints",
    "audit_anchors",
    "forward_cursors",
    "detector_rules",
    "address_blocks",
    "account_locks",
    "incidents",
    "sign_in_history",
    "alert_outbox",
    "ip_rules",
    "access_windows",
    "company_settings",
    "password_rules",
    "password_history",
    "sign_in_policy",
    "sign_in_failures",
    "user_password_rules",
    "totp_factors",
    "recovery_codes",
    "passkeys",
    "api_keys",
    "roles",
    "user_roles",
    "department_roles",
    "pledge_versions",
    "pledge_acceptances",
    "training_policy",
    "backup_runs",
    "server_keys",
];

/// One stored value. In JSON: `null`, a number, a string, or `{"b":
/// base64}` for bytes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Cell {
    Null,
    Int(i64),
    Text(String),
    Blob { b: String },
}

/// Read by hand rather than `untagged`: serde's untagged enums try each
/// variant in turn and format an error message for every miss, which was
/// the largest cost of reading a backup.
impl<'de> Deserialize<'de> for Cell {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cell, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Cell;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("null, an integer, a string or {\"b\": base64}")
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<Cell, E> {
                Ok(Cell::Null)
            }

            fn visit_none<E: serde::de::Error>(self) -> Result<Cell, E> {
                Ok(Cell::Null)
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Cell, E> {
                Ok(Cell::Int(v))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Cell, E> {
                i64::try_from(v)
                    .map(Cell::Int)
                    .map_err(|_| E::custom("an integer out of range"))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Cell, E> {
                Ok(Cell::Text(v.to_owned()))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Cell, E> {
                Ok(Cell::Text(v))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Cell, A::Error> {
                let mut b = None;
                while let Some(k) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                    if k != "b" || b.is_some() {
                        return Err(serde::de::Error::custom("a blob is {\"b\": base64} alone"));
                    }
                    b = Some(m.next_value::<String>()?);
                }
                b.map(|b| Cell::Blob { b })
                    .ok_or_else(|| serde::de::Error::custom("a blob without its \"b\""))
            }
        }
        d.deserialize_any(V)
    }
}

impl Cell {
    fn blob(bytes: &[u8]) -> Cell {
        use base64::Engine;
        Cell::Blob {
            b: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }
}

/// A consistent read of the whole store.
pub struct Snapshot {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    dialect: Dialect,
}

impl Store {
    /// Opens a read-only snapshot: everything read through it is as of one
    /// moment, whatever is written meanwhile.
    pub async fn snapshot(&self) -> StoreResult<Snapshot> {
        let mut tx = self.pool.begin().await?;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        // SQLite (WAL): a deferred transaction's snapshot starts at its first
        // read and holds until it ends.
        sqlx::query("SELECT COUNT(*) FROM companies")
            .execute(&mut *tx)
            .await?;
        Ok(Snapshot {
            tx,
            dialect: self.dialect,
        })
    }

    /// Loads rows into a table, in the caller's transaction of restore.
    pub async fn load_rows(
        &self,
        loader: &mut Loader<'_>,
        table: &str,
        columns: &[String],
        rows: &[Vec<Cell>],
    ) -> StoreResult<()> {
        check_name(table)?;
        for c in columns {
            check_name(c)?;
        }
        for row in rows {
            if row.len() != columns.len() {
                return Err(StoreError::Corrupt(format!(
                    "a row of {table} has {} values for {} columns",
                    row.len(),
                    columns.len()
                )));
            }
        }
        if self.dialect == Dialect::Postgres {
            fits_postgres(loader, table, columns, rows).await?;
        }
        // Many rows per statement (bounded by both backends' parameter
        // limits). NULLs are written into the SQL, so no untyped NULL
        // parameter reaches PostgreSQL.
        let per = (30_000 / columns.len().max(1)).clamp(1, 200);
        for group in rows.chunks(per) {
            let mut tuples = Vec::with_capacity(group.len());
            let mut n = 0;
            for row in group {
                let marks: Vec<String> = row
                    .iter()
                    .map(|cell| {
                        if *cell == Cell::Null {
                            "NULL".to_owned()
                        } else {
                            n += 1;
                            crate::mark(self.dialect, n)
                        }
                    })
                    .collect();
                tuples.push(format!("({})", marks.join(", ")));
            }
            let sql = format!(
                "INSERT INTO {table} ({}) VALUES {}",
                columns.join(", "),
                tuples.join(", ")
            );
            let mut q = sqlx::query(&sql).persistent(false);
            for cell in group.iter().flatten() {
                q = match cell {
                    Cell::Null => q,
                    Cell::Int(i) => q.bind(*i),
                    Cell::Text(s) => q.bind(s.clone()),
                    Cell::Blob { b } => {
                        use base64::Engine;
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(b)
                            .map_err(|_| StoreError::Corrupt(format!("a blob of {table}")))?;
                        q.bind(bytes)
                    }
                };
            }
            q.execute(&mut *loader.tx.tx).await?;
        }
        Ok(())
    }

    /// Starts a restore: one transaction for the whole load, so a failure
    /// leaves the target as it was.
    pub async fn begin_load(&self) -> StoreResult<Loader<'_>> {
        let mut tx = self.write_tx().await?;
        if self.dialect == Dialect::Sqlite {
            // Rows arrive parents first, but self-references and the odd
            // cycle are checked at commit.
            sqlx::query("PRAGMA defer_foreign_keys = ON")
                .execute(&mut *tx.tx)
                .await?;
        }
        Ok(Loader {
            tx,
            types: Default::default(),
        })
    }

    /// Ends a load: identity counters continue after the loaded ids.
    pub async fn finish_load(&self, loader: Loader<'_>) -> StoreResult<()> {
        let mut loader = loader;
        if self.dialect == Dialect::Postgres {
            for t in BACKUP_TABLES {
                let has_id = sqlx::query(
                    "SELECT 1 AS one FROM information_schema.columns WHERE table_name = $1 \
                     AND column_name = 'id' AND is_identity = 'YES'",
                )
                .bind(*t)
                .fetch_optional(&mut *loader.tx.tx)
                .await?
                .is_some();
                if has_id {
                    sqlx::query(&format!(
                        "SELECT setval(pg_get_serial_sequence('{t}', 'id'), \
                         COALESCE((SELECT MAX(id) FROM {t}), 0) + 1, false)"
                    ))
                    .execute(&mut *loader.tx.tx)
                    .await?;
                }
            }
        }
        sqlx::query(&format!("DROP TABLE IF EXISTS {RESTORE_PROGRESS}"))
            .execute(&mut *loader.tx.tx)
            .await?;
        loader.tx.commit().await
    }

    /// Commits what a resumable load has loaded so far (with its progress,
    /// [`Store::set_restore_progress`]); the load goes on in a new
    /// transaction from [`Store::begin_load`].
    pub async fn commit_load(&self, loader: Loader<'_>) -> StoreResult<()> {
        loader.tx.commit().await
    }

    async fn table_exists<'c, E>(&self, conn: E, table: &str) -> StoreResult<bool>
    where
        E: sqlx::Executor<'c, Database = sqlx::Any>,
    {
        let sql = match self.dialect {
            Dialect::Sqlite => {
                "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = $1"
            }
            Dialect::Postgres => {
                "SELECT COUNT(*) AS n FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name = $1"
            }
        };
        let row = sqlx::query(sql).bind(table).fetch_one(conn).await?;
        Ok(crate::get::<i64>(&row, "n")? > 0)
    }

    /// Where an interrupted restore stopped, if this store holds one.
    pub async fn restore_progress(&self) -> StoreResult<Option<RestoreProgress>> {
        if !self.table_exists(&self.pool, RESTORE_PROGRESS).await? {
            return Ok(None);
        }
        let row = sqlx::query(&format!(
            "SELECT backup_id, chunks_done, chunks FROM {RESTORE_PROGRESS}"
        ))
        .fetch_optional(&self.pool)
        .await?;
        // The table and its row are made in one transaction: a table
        // without its row was tampered with.
        let r = row.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "{RESTORE_PROGRESS} is empty; restore again with --force, or into a new store"
            ))
        })?;
        Ok(Some(RestoreProgress {
            backup_id: crate::get(&r, "backup_id")?,
            chunks_done: crate::get(&r, "chunks_done")?,
            chunks: crate::get(&r, "chunks")?,
        }))
    }

    /// Records, in the load's transaction, how far a resumable restore got.
    pub async fn set_restore_progress(
        &self,
        loader: &mut Loader<'_>,
        p: &RestoreProgress,
    ) -> StoreResult<()> {
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {RESTORE_PROGRESS} \
             (backup_id TEXT NOT NULL, chunks_done BIGINT NOT NULL, chunks BIGINT NOT NULL)"
        ))
        .execute(&mut *loader.tx.tx)
        .await?;
        sqlx::query(&format!("DELETE FROM {RESTORE_PROGRESS}"))
            .execute(&mut *loader.tx.tx)
            .await?;
        sqlx::query(&format!(
            "INSERT INTO {RESTORE_PROGRESS} (backup_id, chunks_done, chunks) VALUES ($1, $2, $3)"
        ))
        .bind(p.backup_id.clone())
        .bind(p.chunks_done)
        .bind(p.chunks)
        .execute(&mut *loader.tx.tx)
        .await?;
        Ok(())
    }

    /// Rows in one of the backed-up tables.
    pub async fn count_rows(&self, table: &str) -> StoreResult<i64> {
        if !BACKUP_TABLES.contains(&table) {
            return Err(StoreError::NotFound(format!("no table {table}")));
        }
        let row = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
            .fetch_one(&self.pool)
            .await?;
        crate::get(&row, "n")
    }

    /// Whether the store holds nothing a restore would overwrite.
    pub async fn is_blank(&self) -> StoreResult<bool> {
        for t in ["companies", "audit_events", "company_keys"] {
            let row = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {t}"))
                .fetch_one(&self.pool)
                .await?;
            if crate::get::<i64>(&row, "n")? > 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Empties every table a backup holds (a forced restore), inside the
    /// load's transaction: if the load fails, nothing was emptied.
    pub async fn wipe(&self, loader: &mut Loader<'_>) -> StoreResult<()> {
        for t in ["sessions", "sign_in_challenges"]
            .iter()
            .chain(BACKUP_TABLES.iter().rev())
        {
            // A store at an older schema version lacks the newer tables.
            if !self.table_exists(&mut *loader.tx.tx, t).await? {
                continue;
            }
            sqlx::query(&format!("DELETE FROM {t}"))
                .execute(&mut *loader.tx.tx)
                .await?;
        }
        Ok(())
    }
}

/// The table where a resumable restore keeps its progress. It lives outside
/// the migrations (a restore loads at the backup's schema version, which may
/// be older) and is dropped in the transaction that completes the restore;
/// while it exists, the store holds a partial restore and the server
/// refuses it.
const RESTORE_PROGRESS: &str = "strongroom_restore_progress";

/// How far an interrupted restore got: chunks `1..=chunks_done` of backup
/// `backup_id` (of `chunks`) are loaded and committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreProgress {
    pub backup_id: String,
    pub chunks_done: i64,
    pub chunks: i64,
}

impl std::fmt::Display for RestoreProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "an interrupted restore of backup {} ({} of {} chunks loaded); run `strongroom restore {} --into <this store>` again to finish it, or add --force to start over",
            self.backup_id, self.chunks_done, self.chunks, self.backup_id
        )
    }
}

/// PostgreSQL types every column; SQLite keeps what it is given. A backup
/// of a SQLite file that was changed outside Strongroom can carry a value
/// of another kind than its column's (bytes that are not UTF-8 where text
/// belongs, text where a number belongs). This names the first such value,
/// with what to do, before PostgreSQL refuses it with a message about
/// expression types.
async fn fits_postgres(
    loader: &mut Loader<'_>,
    table: &str,
    columns: &[String],
    rows: &[Vec<Cell>],
) -> StoreResult<()> {
    if !loader.types.contains_key(table) {
        let types: Vec<(String, String)> = sqlx::query_as(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1",
        )
        .bind(table)
        .fetch_all(&mut *loader.tx.tx)
        .await?;
        loader
            .types
            .insert(table.to_owned(), types.into_iter().collect());
    }
    let types = &loader.types[table];
    for row in rows {
        for (cell, column) in row.iter().zip(columns) {
            let Some(ty) = types.get(column) else {
                continue;
            };
            let (fits, what) = match cell {
                Cell::Null => (true, ""),
                Cell::Int(_) => (matches!(ty.as_str(), "bigint" | "integer"), "a number"),
                Cell::Text(_) => (ty == "text", "text"),
                Cell::Blob { .. } => (ty == "bytea", "bytes that are not UTF-8 text"),
            };
            if !fits {
                return Err(StoreError::Corrupt(format!(
                    "{table}.{column} in this backup holds {what} where PostgreSQL keeps {ty}; \
                     the SQLite file it was made from was changed outside Strongroom. Restore \
                     it into a SQLite file to examine it, or restore an earlier backup"
                )));
            }
        }
    }
    Ok(())
}

/// A restore in progress.
pub struct Loader<'a> {
    tx: crate::WriteTx<'a>,
    /// On PostgreSQL, each loaded table's column types, read once.
    types: std::collections::HashMap<String, std::collections::HashMap<String, String>>,
}

fn check_name(s: &str) -> StoreResult<()> {
    if !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!(
            "'{}' is not a table or column name",
            s.chars().take(64).collect::<String>()
        )))
    }
}

impl Snapshot {
    /// Streams a table's rows (column names first) to `each`, in key order.
    pub async fn table<F>(&mut self, table: &str, mut each: F) -> StoreResult<Vec<String>>
    where
        F: FnMut(&[String], Vec<Cell>) -> StoreResult<()>,
    {
        check_name(table)?;
        if self.dialect == Dialect::Sqlite {
            return self.sqlite_table(table, each).await;
        }
        let mut columns: Vec<String> = Vec::new();
        let sql = format!("SELECT * FROM {table} ORDER BY 1");
        let mut rows = sqlx::query(&sql).fetch(&mut *self.tx);
        while let Some(row) = rows.try_next().await? {
            if columns.is_empty() {
                columns = row.columns().iter().map(|c| c.name().to_owned()).collect();
            }
            let mut cells = Vec::with_capacity(columns.len());
            for i in 0..columns.len() {
                let raw = row.try_get_raw(i)?;
                if raw.is_null() {
                    cells.push(Cell::Null);
                    continue;
                }
                let kind = raw.type_info().name().to_ascii_uppercase();
                let cell = match kind.as_str() {
                    "TEXT" => Cell::Text(row.try_get::<String, _>(i)?),
                    "BLOB" => Cell::blob(&row.try_get::<Vec<u8>, _>(i)?),
                    _ => match row.try_get::<i64, _>(i) {
                        Ok(v) => Cell::Int(v),
                        Err(_) => match row.try_get::<String, _>(i) {
                            Ok(s) => Cell::Text(s),
                            Err(_) => Cell::blob(&row.try_get::<Vec<u8>, _>(i)?),
                        },
                    },
                };
                cells.push(cell);
            }
            each(&columns, cells)?;
        }
        Ok(columns)
    }

    /// [`Snapshot::table`] on SQLite, which keeps any bytes in any column
    /// whatever its declared type. Each value is read with its storage
    /// class, and text as its bytes: text that is UTF-8 becomes a text
    /// cell, and text that is not (only a hand-edited file holds it)
    /// becomes a bytes cell, so a tampered row is carried as it is rather
    /// than stopping the backup. Such a cell restores into SQLite as the
    /// same bytes; PostgreSQL refuses it (see [`Store::load_rows`]).
    async fn sqlite_table<F>(&mut self, table: &str, mut each: F) -> StoreResult<Vec<String>>
    where
        F: FnMut(&[String], Vec<Cell>) -> StoreResult<()>,
    {
        let names: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info(?) ORDER BY cid")
                .bind(table)
                .fetch_all(&mut *self.tx)
                .await?;
        let Some(first) = names.first() else {
            return Err(StoreError::Corrupt(format!("table {table} has no columns")));
        };
        let mut select = Vec::with_capacity(names.len() * 2);
        for c in &names {
            check_name(c)?;
            select.push(format!("typeof({c})"));
            select.push(format!(
                "CASE WHEN typeof({c}) IN ('text', 'real') THEN CAST({c} AS BLOB) ELSE {c} END"
            ));
        }
        let sql = format!("SELECT {} FROM {table} ORDER BY {first}", select.join(", "));
        let mut seen = false;
        let mut rows = sqlx::query(&sql).fetch(&mut *self.tx);
        while let Some(row) = rows.try_next().await? {
            seen = true;
            let mut cells = Vec::with_capacity(names.len());
            for i in 0..names.len() {
                let kind: String = row.try_get(2 * i)?;
                let v = 2 * i + 1;
                cells.push(match kind.as_str() {
                    "null" => Cell::Null,
                    "integer" => Cell::Int(row.try_get(v)?),
                    // No column of Strongroom's is REAL: such a value was
                    // written by hand, and is carried as its text.
                    "text" | "real" => {
                        let bytes: Vec<u8> = row.try_get(v)?;
                        match String::from_utf8(bytes) {
                            Ok(s) => Cell::Text(s),
                            Err(e) => Cell::blob(e.as_bytes()),
                        }
                    }
                    _ => Cell::blob(&row.try_get::<Vec<u8>, _>(v)?),
                });
            }
            each(&names, cells)?;
        }
        Ok(if seen { names } else { Vec::new() })
    }

    pub async fn end(self) -> StoreResult<()> {
        self.tx.rollback().await?;
        Ok(())
    }
}

/// One backup or drill, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupRun {
    pub kind: String,
    pub backup_id: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: chrono::DateTime<chrono::Utc>,
    pub ok: bool,
    pub detail: serde_json::Value,
}

impl Store {
    pub async fn record_backup_run(&self, r: &BackupRun) -> StoreResult<()> {
        let mut w = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO backup_runs (kind, backup_id, started_at, finished_at, ok, detail) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&r.kind)
        .bind(&r.backup_id)
        .bind(crate::ts(r.started_at))
        .bind(crate::ts(r.finished_at))
        .bind(i64::from(r.ok))
        .bind(r.detail.to_string())
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }

    /// The newest runs first.
    pub async fn backup_runs(&self, limit: i64) -> StoreResult<Vec<BackupRun>> {
        let rows = sqlx::query(
            "SELECT kind, backup_id, started_at, finished_at, ok, detail FROM backup_runs \
             ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let detail: String = crate::get(r, "detail")?;
                Ok(BackupRun {
                    kind: crate::get(r, "kind")?,
                    backup_id: crate::get(r, "backup_id")?,
                    started_at: crate::from_ts(crate::get(r, "started_at")?)?,
                    finished_at: crate::from_ts(crate::get(r, "finished_at")?)?,
                    ok: crate::flag(r, "ok")?,
                    detail: serde_json::from_str(&detail).unwrap_or_default(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Cell;

    #[test]
    fn cells_read_back_as_written_and_odd_json_is_refused() {
        let cells = vec![
            Cell::Null,
            Cell::Int(0),
            Cell::Int(i64::MIN),
            Cell::Int(i64::MAX),
            Cell::Text(String::new()),
            Cell::Text("Hà Nội \"quoted\" \\ {\"b\":1}".into()),
            Cell::Blob { b: String::new() },
            Cell::Blob {
                b: "AAEC/w==".into(),
            },
        ];
        let json = serde_json::to_string(&cells).unwrap();
        assert_eq!(
            json,
            r#"[null,0,-9223372036854775808,9223372036854775807,"","Hà Nội \"quoted\" \\ {\"b\":1}",{"b":""},{"b":"AAEC/w=="}]"#
        );
        let back: Vec<Cell> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cells);
        for bad in [
            "1.5",
            "true",
            "[1]",
            "{}",
            r#"{"b":1}"#,
            r#"{"c":"x"}"#,
            r#"{"b":"x","b":"y"}"#,
            "18446744073709551615",
        ] {
            assert!(serde_json::from_str::<Cell>(bad).is_err(), "{bad}");
        }
    }
}
