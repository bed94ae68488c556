//! Backups in Strongroom's own logical format, independent of the backend
//! (a backup taken on SQLite restores into PostgreSQL and back), and their
//! restore and drill.
//!
//! A backup is a directory `<target>/<id>/` of chunks and a manifest:
//! - each chunk is JSON Lines of rows (`{"t": table, "r": [cells]}`),
//!   compressed with zstd and sealed with AES-256-GCM under a fresh backup
//!   key (associated data: backup id and chunk number, so chunks cannot be
//!   swapped or moved between backups); values that are encrypted in the
//!   store stay encrypted inside;
//! - the backup key is stored only wrapped by the master key;
//! - `manifest.json` records format and schema version, time, per-table
//!   row counts and columns, each chunk's SHA-256, each company's audit
//!   chain head, an Ed25519 signature by the installation's backup-signing
//!   key (whose public half can be pinned, so anyone can check a backup's
//!   integrity without the master key), and an HMAC over all of it under a
//!   key derived from the backup key (so nobody without the master key can
//!   forge or alter it).
//!
//! Writes go to `<target>/.partial-<id>/` and the directory is renamed into
//! place only after every file is written and synced: an interrupted
//! backup never looks complete. A restore checks the whole backup before it
//! touches the target, and loads in one transaction.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{DateTime, Utc};
use ring::hmac;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use strongroom_crypto::envelope::{open_raw, seal_raw, SecretKey};
use strongroom_crypto::provider::KeyProvider;
use strongroom_store::{Cell, ServerKey, Store, BACKUP_TABLES, SCHEMA_VERSION};

/// The backup format this binary writes and reads.
pub const FORMAT: u32 = 1;
/// Uncompressed bytes per chunk.
const CHUNK_BYTES: usize = 4 << 20;
/// The largest chunk or manifest file a restore will read.
const MAX_FILE_BYTES: u64 = 256 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableEntry {
    pub name: String,
    pub columns: Vec<String>,
    pub rows: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChunkEntry {
    pub file: String,
    pub sha256: String,
    pub rows: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChainHead {
    pub seq: i64,
    pub hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub schema_version: i64,
    /// The backend the backup was taken from (`sqlite` or `postgres`).
    pub source: String,
    pub tables: Vec<TableEntry>,
    pub chunks: Vec<ChunkEntry>,
    /// Audit chain heads by chain id (0: the server's own).
    pub chain_heads: BTreeMap<i64, ChainHead>,
    pub wrap_key_id: String,
    pub wrapped_key: String,
    /// The installation's signature (absent in backups made before
    /// signatures; the MAC still authenticates those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<ManifestSignature>,
    /// HMAC-SHA-256 of the manifest with this field empty.
    pub mac: String,
}

/// An Ed25519 signature over the manifest with `mac` and `sig` empty.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestSignature {
    pub algorithm: String,
    pub key_version: i64,
    /// The signer's public key, hex.
    pub public_key: String,
    /// The signature, hex.
    pub sig: String,
}

impl Manifest {
    pub fn total_rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
}

#[derive(Serialize, Deserialize)]
struct Line {
    t: String,
    r: Vec<Cell>,
}

fn wrap_context(id: &str) -> String {
    format!("strongroom/backup/v1/{id}")
}

fn chunk_aad(id: &str, n: usize) -> Vec<u8> {
    format!("strongroom/backup-chunk/v1\0{id}\0{n}").into_bytes()
}

fn mac_of(key: &SecretKey, m: &Manifest) -> anyhow::Result<String> {
    let derived = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, key.expose()),
        b"strongroom/backup-manifest/v1",
    );
    let mut unsigned = m.clone();
    unsigned.mac = String::new();
    let bytes = serde_json::to_vec(&unsigned)?;
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()), &bytes);
    Ok(hex::encode(tag.as_ref()))
}

/// The bytes the signature covers: the manifest with `mac` and `sig` empty.
fn signed_bytes(m: &Manifest) -> anyhow::Result<Vec<u8>> {
    let mut unsigned = m.clone();
    unsigned.mac = String::new();
    if let Some(s) = unsigned.signature.as_mut() {
        s.sig = String::new();
    }
    let mut out = b"strongroom/backup-manifest-signature/v1\0".to_vec();
    out.extend(serde_json::to_vec(&unsigned)?);
    Ok(out)
}

const SIGNING_PURPOSE: &str = "backup_signing";

fn signing_context(version: i64) -> String {
    crate::keys::server_key_context(SIGNING_PURPOSE, version)
}

/// The installation's backup-signing key.
pub struct Signer {
    pair: Ed25519KeyPair,
    version: i64,
}

impl Signer {
    /// The public key, hex (what an auditor pins).
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }
}

/// The installation's backup-signing key, made on first use and stored
/// only wrapped by the master key (with its public half in clear, checked
/// against the unwrapped seed).
pub async fn signer(
    store: &Store,
    provider: &dyn KeyProvider,
    now: DateTime<Utc>,
) -> anyhow::Result<Signer> {
    if store.server_key(SIGNING_PURPOSE).await?.is_none() {
        let seed = zeroize::Zeroizing::new(strongroom_crypto::token::random_bytes::<32>()?);
        let pair = Ed25519KeyPair::from_seed_unchecked(seed.as_ref())
            .map_err(|_| anyhow!("cannot make a backup-signing key"))?;
        store
            .add_server_key(&ServerKey {
                purpose: SIGNING_PURPOSE.into(),
                version: 1,
                wrapped: provider.wrap(seed.as_ref(), &signing_context(1))?,
                wrap_key_id: provider.current_key_id(),
                public_key: pair.public_key().as_ref().to_vec(),
                created_at: now,
            })
            .await?;
    }
    let k = store
        .server_key(SIGNING_PURPOSE)
        .await?
        .ok_or_else(|| anyhow!("the backup-signing key vanished"))?;
    let seed = provider
        .unwrap(&k.wrap_key_id, &k.wrapped, &signing_context(k.version))
        .map_err(|_| anyhow!("the backup-signing key does not open with this master key"))?;
    let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
        .map_err(|_| anyhow!("the stored backup-signing key is damaged"))?;
    if pair.public_key().as_ref() != k.public_key.as_slice() {
        bail!("the stored backup-signing key does not match its public key; the store was altered");
    }
    Ok(Signer {
        pair,
        version: k.version,
    })
}

/// The installation's backup-signing public key (hex), if it has made one.
pub async fn signing_public_key(store: &Store) -> anyhow::Result<Option<String>> {
    Ok(store
        .server_key(SIGNING_PURPOSE)
        .await?
        .map(|k| hex::encode(k.public_key)))
}

fn sign(signer: &Signer, m: &mut Manifest) -> anyhow::Result<()> {
    m.signature = Some(ManifestSignature {
        algorithm: "ed25519".into(),
        key_version: signer.version,
        public_key: signer.public_key_hex(),
        sig: String::new(),
    });
    let sig = signer.pair.sign(&signed_bytes(m)?);
    if let Some(s) = m.signature.as_mut() {
        s.sig = hex::encode(sig.as_ref());
    }
    Ok(())
}

/// Checks the manifest's signature against the public key it names, and
/// against `pinned` when given. Returns the signer's public key (hex), or
/// None for a backup made before signatures (refused when pinned).
fn check_signature(m: &Manifest, pinned: Option<&str>) -> anyhow::Result<Option<String>> {
    let Some(s) = &m.signature else {
        if pinned.is_some() {
            bail!(
                "backup {} carries no signature (it was made before backups were signed)",
                m.id
            );
        }
        return Ok(None);
    };
    if s.algorithm != "ed25519" {
        bail!(
            "backup {} is signed with {}, which this Strongroom does not know",
            m.id,
            s.algorithm
        );
    }
    if let Some(p) = pinned {
        if !p.trim().eq_ignore_ascii_case(&s.public_key) {
            bail!(
                "backup {} is signed by key {}, not by the pinned key {}",
                m.id,
                s.public_key,
                p.trim()
            );
        }
    }
    let public = hex::decode(&s.public_key)
        .map_err(|_| anyhow!("the signer's key in the manifest of {} is damaged", m.id))?;
    let sig = hex::decode(&s.sig)
        .map_err(|_| anyhow!("the signature in the manifest of {} is damaged", m.id))?;
    UnparsedPublicKey::new(&ED25519, &public)
        .verify(&signed_bytes(m)?, &sig)
        .map_err(|_| {
            anyhow!(
                "the manifest of backup {} was altered (its signature does not match)",
                m.id
            )
        })?;
    Ok(Some(s.public_key.clone()))
}

fn new_id(now: DateTime<Utc>) -> anyhow::Result<String> {
    let r = strongroom_crypto::token::random_bytes::<4>()?;
    Ok(format!(
        "{}-{}",
        now.format("%Y%m%dT%H%M%SZ"),
        hex::encode(r)
    ))
}

/// Is `id` the shape of a backup id (so it is safe in a path)?
pub fn valid_id(id: &str) -> bool {
    id.len() <= 64 && !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Hears how many rows a backup has written so far.
pub type Progress<'a> = &'a (dyn Fn(u64) + Send + Sync);

fn no_progress(_: u64) {}

struct ChunkWriter<'a> {
    dir: &'a Path,
    chunk_bytes: usize,
    progress: Progress<'a>,
    written: u64,
    id: &'a str,
    key: &'a SecretKey,
    buf: Vec<u8>,
    rows: u64,
    chunks: Vec<ChunkEntry>,
}

impl ChunkWriter<'_> {
    fn push(&mut self, line: &Line) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.buf, line)?;
        self.buf.push(b'\n');
        self.rows += 1;
        if self.buf.len() >= self.chunk_bytes {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let n = self.chunks.len() + 1;
        let packed = zstd::encode_all(self.buf.as_slice(), 3)?;
        let sealed = seal_raw(self.key, &chunk_aad(self.id, n), &packed)?;
        let file = format!("chunk-{n:06}.bin");
        write_synced(&self.dir.join(&file), &sealed)?;
        self.chunks.push(ChunkEntry {
            file,
            sha256: hex::encode(Sha256::digest(&sealed)),
            rows: self.rows,
        });
        self.written += self.rows;
        (self.progress)(self.written);
        self.buf.clear();
        self.rows = 0;
        Ok(())
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {} (is the disk full?)", path.display()))?;
    Ok(())
}

/// Takes a backup of the whole store into `target` while the server keeps
/// serving. Returns its manifest.
pub async fn create(
    store: &Store,
    provider: &dyn KeyProvider,
    target: &Path,
    now: DateTime<Utc>,
) -> anyhow::Result<Manifest> {
    create_with(store, provider, target, now, CHUNK_BYTES, &no_progress).await
}

/// [`create`] with chunks of about `chunk_bytes` uncompressed bytes (at
/// least 1 KiB, at most the default 4 MiB), telling `progress` the rows
/// written as each chunk is.
pub async fn create_with(
    store: &Store,
    provider: &dyn KeyProvider,
    target: &Path,
    now: DateTime<Utc>,
    chunk_bytes: usize,
    progress: Progress<'_>,
) -> anyhow::Result<Manifest> {
    let chunk_bytes = chunk_bytes.clamp(1024, CHUNK_BYTES);
    std::fs::create_dir_all(target)
        .with_context(|| format!("cannot create the backup target {}", target.display()))?;
    let id = new_id(now)?;
    let signer = signer(store, provider, now).await?;
    let partial = target.join(format!(".partial-{id}"));
    std::fs::create_dir(&partial)
        .with_context(|| format!("cannot write into {}", target.display()))?;
    let job = Job {
        dir: &partial,
        id: &id,
        now,
        chunk_bytes,
        progress,
    };
    let result = write_backup(store, provider, &signer, job).await;
    match result {
        Ok(m) => {
            let done = target.join(&id);
            std::fs::rename(&partial, &done)
                .with_context(|| format!("cannot finish {}", done.display()))?;
            if let Ok(d) = std::fs::File::open(target) {
                let _ = d.sync_all();
            }
            Ok(m)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            Err(e)
        }
    }
}

/// What one backup writes: where, under which id and time, in chunks of
/// what size, telling whom.
struct Job<'a> {
    dir: &'a Path,
    id: &'a str,
    now: DateTime<Utc>,
    chunk_bytes: usize,
    progress: Progress<'a>,
}

async fn write_backup(
    store: &Store,
    provider: &dyn KeyProvider,
    signer: &Signer,
    job: Job<'_>,
) -> anyhow::Result<Manifest> {
    let Job {
        dir,
        id,
        now,
        chunk_bytes,
        progress,
    } = job;
    let raw = strongroom_crypto::token::random_bytes::<32>()?;
    let key = SecretKey::from_bytes(1, &raw)?;
    let wrapped = provider.wrap(&raw, &wrap_context(id))?;
    let mut w = ChunkWriter {
        dir,
        chunk_bytes,
        progress,
        written: 0,
        id,
        key: &key,
        buf: Vec::with_capacity(chunk_bytes + 4096),
        rows: 0,
        chunks: Vec::new(),
    };
    let mut tables = Vec::new();
    let mut heads = BTreeMap::new();
    let mut snap = store.snapshot().await?;
    for t in BACKUP_TABLES {
        let mut rows = 0u64;
        let mut err = None;
        let columns = snap
            .table(t, |cols, cells| {
                rows += 1;
                if *t == "audit_heads" {
                    let get = |name: &str| cols.iter().position(|c| c == name).map(|i| &cells[i]);
                    if let (Some(Cell::Int(chain)), Some(Cell::Int(seq)), Some(Cell::Blob { b })) =
                        (get("chain"), get("seq"), get("hash"))
                    {
                        let hash = B64.decode(b).map(hex::encode).unwrap_or_default();
                        heads.insert(*chain, ChainHead { seq: *seq, hash });
                    }
                }
                if let Err(e) = w.push(&Line {
                    t: (*t).to_owned(),
                    r: cells,
                }) {
                    err = Some(e);
                }
                Ok(())
            })
            .await?;
        if let Some(e) = err {
            return Err(e);
        }
        tables.push(TableEntry {
            name: (*t).to_owned(),
            columns,
            rows,
        });
    }
    snap.end().await?;
    w.flush()?;
    let mut m = Manifest {
        format: FORMAT,
        id: id.to_owned(),
        created_at: now,
        schema_version: SCHEMA_VERSION,
        source: format!("{:?}", store.dialect()).to_ascii_lowercase(),
        tables,
        chunks: w.chunks,
        chain_heads: heads,
        wrap_key_id: provider.current_key_id(),
        wrapped_key: B64.encode(&wrapped),
        signature: None,
        mac: String::new(),
    };
    sign(signer, &mut m)?;
    m.mac = mac_of(&key, &m)?;
    write_synced(&dir.join("manifest.json"), &serde_json::to_vec_pretty(&m)?)?;
    Ok(m)
}

/// The backups in a target, oldest first (incomplete ones are not listed).
pub fn list(target: &Path) -> anyhow::Result<Vec<Manifest>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(target) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(anyhow!(
                "cannot read the backup target {}: {e}",
                target.display()
            ))
        }
    };
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !valid_id(&name) {
            continue;
        }
        if let Ok(m) = read_manifest(&e.path()) {
            out.push(m);
        }
    }
    out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Ok(out)
}

fn read_limited(path: &Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("{} is missing", path.display()))?;
    if meta.len() > MAX_FILE_BYTES {
        bail!(
            "{} is larger than any file Strongroom writes",
            path.display()
        );
    }
    Ok(std::fs::read(path)?)
}

fn read_manifest(dir: &Path) -> anyhow::Result<Manifest> {
    let bytes = read_limited(&dir.join("manifest.json"))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| anyhow!("the manifest of {} is not valid JSON", dir.display()))?;
    let format = v.get("format").and_then(|f| f.as_u64()).unwrap_or(0);
    if format > u64::from(FORMAT) {
        bail!(
            "backup {} is in format {format}, newer than this Strongroom's {FORMAT}; restore it with a newer Strongroom",
            dir.display()
        );
    }
    serde_json::from_value(v)
        .map_err(|e| anyhow!("the manifest of {} is damaged: {e}", dir.display()))
}

/// What checking a backup found.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    pub manifest: Manifest,
    pub rows: BTreeMap<String, u64>,
    /// The public key (hex) that signed the manifest; None for a backup
    /// made before signatures.
    pub signed_by: Option<String>,
}

/// Opens the backup key and checks the manifest's MAC.
fn open_key(provider: &dyn KeyProvider, m: &Manifest) -> anyhow::Result<SecretKey> {
    let wrapped = B64
        .decode(&m.wrapped_key)
        .map_err(|_| anyhow!("the backup key in the manifest is damaged"))?;
    let raw = provider
        .unwrap(&m.wrap_key_id, &wrapped, &wrap_context(&m.id))
        .map_err(|_| {
            anyhow!(
                "the backup key does not open with this master key (key '{}'); use the master key the backup was made with",
                m.wrap_key_id
            )
        })?;
    let key = SecretKey::from_bytes(1, &raw)?;
    if mac_of(&key, m)? != m.mac {
        bail!(
            "the manifest of backup {} was altered (its MAC does not match)",
            m.id
        );
    }
    Ok(key)
}

/// Reads every chunk of a backup, checking each (checksum, decryption,
/// decompression, row shape), and hands the rows to `each` table by table
/// in file order. Nothing is trusted before its chunk checks out.
fn read_chunks<F>(dir: &Path, m: &Manifest, key: &SecretKey, mut each: F) -> anyhow::Result<()>
where
    F: FnMut(Line) -> anyhow::Result<()>,
{
    for i in 0..m.chunks.len() {
        for l in read_chunk(dir, m, key, i)? {
            each(l)?;
        }
    }
    Ok(())
}

/// The most a chunk may decompress to (a chunk holds about CHUNK_BYTES;
/// more is a forgery meant to exhaust memory).
const MAX_CHUNK_PLAIN: u64 = 64 << 20;

/// Reads and checks chunk `i` (checksum, decryption, bounded
/// decompression, row shape and count).
fn read_chunk(dir: &Path, m: &Manifest, key: &SecretKey, i: usize) -> anyhow::Result<Vec<Line>> {
    use std::io::Read;
    let c = &m.chunks[i];
    let name = chunk_name(m, c)?;
    let sealed = read_sealed(dir, m, c)?;
    let packed = open_raw(key, &chunk_aad(&m.id, i + 1), &sealed)
        .map_err(|_| anyhow!("chunk {name} of backup {} does not decrypt", m.id))?;
    let mut plain = Vec::new();
    zstd::stream::read::Decoder::new(packed.as_slice())
        .and_then(|d| d.take(MAX_CHUNK_PLAIN + 1).read_to_end(&mut plain))
        .map_err(|_| anyhow!("chunk {name} of backup {} does not decompress", m.id))?;
    if plain.len() as u64 > MAX_CHUNK_PLAIN {
        bail!(
            "chunk {name} of backup {} is larger than any chunk Strongroom writes",
            m.id
        );
    }
    let mut out = Vec::new();
    for line in plain.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let l: Line = serde_json::from_slice(line)
            .map_err(|_| anyhow!("chunk {name} of backup {} holds a damaged row", m.id))?;
        out.push(l);
    }
    if out.len() as u64 != c.rows {
        bail!(
            "chunk {name} of backup {} holds {} rows, not {}",
            m.id,
            out.len(),
            c.rows
        );
    }
    Ok(out)
}

/// Checks a backup completely without restoring it: manifest MAC, every
/// chunk's checksum, decryption and rows against the manifest's counts.
pub fn verify(provider: &dyn KeyProvider, target: &Path, id: &str) -> anyhow::Result<Checked> {
    check(provider, target, id).map(|(checked, _)| checked)
}

/// [`verify`], handing back the backup key it opened (for the restore).
fn check(
    provider: &dyn KeyProvider,
    target: &Path,
    id: &str,
) -> anyhow::Result<(Checked, SecretKey)> {
    let (dir, m) = open_manifest(target, id)?;
    let key = open_key(provider, &m)?;
    let signed_by = check_signature(&m, None)?;
    let mut rows: BTreeMap<String, u64> = BTreeMap::new();
    read_chunks(&dir, &m, &key, |l| {
        if !m.tables.iter().any(|t| t.name == l.t) {
            bail!("backup {} holds rows of an unknown table {}", m.id, l.t);
        }
        *rows.entry(l.t).or_default() += 1;
        Ok(())
    })?;
    for t in &m.tables {
        let got = rows.get(&t.name).copied().unwrap_or(0);
        if got != t.rows {
            bail!(
                "backup {} holds {got} rows of {}, the manifest says {}",
                m.id,
                t.name,
                t.rows
            );
        }
    }
    Ok((
        Checked {
            manifest: m,
            rows,
            signed_by,
        },
        key,
    ))
}

/// What can be checked of a backup without the master key, for an auditor
/// who holds only the installation's public key: the manifest's signature
/// (by the pinned key), every chunk's presence, size and SHA-256, and that
/// the chunks' row counts add up to the tables'. The content itself is not
/// decrypted (that takes the master key: [`verify`]).
pub fn verify_signature(target: &Path, id: &str, public_key: &str) -> anyhow::Result<Manifest> {
    let (dir, m) = open_manifest(target, id)?;
    check_signature(&m, Some(public_key))?;
    for c in &m.chunks {
        read_sealed(&dir, &m, c)?;
    }
    let in_chunks: u64 = m.chunks.iter().map(|c| c.rows).sum();
    if in_chunks != m.total_rows() {
        bail!(
            "backup {} lists {in_chunks} rows in its chunks and {} in its tables",
            m.id,
            m.total_rows()
        );
    }
    Ok(m)
}

/// The directory of backup `id` in `target` (after checking the id's
/// shape) and its manifest (refused when it names another backup).
fn open_manifest(target: &Path, id: &str) -> anyhow::Result<(PathBuf, Manifest)> {
    if !valid_id(id) {
        bail!("'{id}' is not a backup id; `strongroom backup list` shows them");
    }
    let dir = target.join(id);
    if !dir.is_dir() {
        bail!("there is no backup {id} in {}", target.display());
    }
    let m = read_manifest(&dir)?;
    if m.id != id {
        bail!("the manifest in {id} belongs to backup {}", m.id);
    }
    Ok((dir, m))
}

/// A chunk's sealed bytes, after checking them against the manifest's
/// checksum.
fn read_sealed(dir: &Path, m: &Manifest, c: &ChunkEntry) -> anyhow::Result<Vec<u8>> {
    let name = chunk_name(m, c)?;
    let sealed = read_limited(&dir.join(name))
        .with_context(|| format!("chunk {name} of backup {} is missing", m.id))?;
    if hex::encode(Sha256::digest(&sealed)) != c.sha256 {
        bail!(
            "chunk {name} of backup {} is damaged (checksum mismatch)",
            m.id
        );
    }
    Ok(sealed)
}

/// A chunk's file name, refused when it would leave the backup directory.
fn chunk_name<'a>(m: &Manifest, c: &'a ChunkEntry) -> anyhow::Result<&'a str> {
    let name = c.file.as_str();
    if name.contains('/') || name.contains('\\') || name.contains("..") {
        bail!(
            "the manifest of {} names a chunk outside the backup: {name}",
            m.id
        );
    }
    Ok(name)
}

/// How a restore commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Everything in one transaction: until it commits, the target keeps
    /// what it had (a standby's previous backup stays whole); interrupted,
    /// it leaves nothing.
    Once,
    /// Chunk by chunk, with its progress kept in the target: run again after
    /// an interruption (a kill, a full disk), it resumes after the last
    /// committed chunk. Until it completes, the server refuses the store.
    Resumable,
}

/// Restores a backup into `into`, which must be blank unless `force`
/// (then it is emptied first, in the same transaction as the first rows).
/// The backup is checked completely before the target is touched.
/// `progress` hears the rows loaded so far.
#[allow(clippy::too_many_arguments)]
pub async fn restore(
    provider: &dyn KeyProvider,
    target: &Path,
    id: &str,
    into: &Store,
    force: bool,
    commit: Commit,
    now: DateTime<Utc>,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> anyhow::Result<Checked> {
    let (checked, key) = check(provider, target, id)?;
    let m = &checked.manifest;
    if m.schema_version > SCHEMA_VERSION {
        bail!(
            "backup {id} was taken at schema version {}, newer than this Strongroom's {SCHEMA_VERSION}; restore it with a newer Strongroom",
            m.schema_version
        );
    }
    let chunks = m.chunks.len();
    // Forced, whatever the target holds is replaced (a leftover progress
    // too); otherwise an interrupted restore of this backup resumes.
    let pending = if force {
        None
    } else {
        into.restore_progress().await?
    };
    let resume_from = match pending {
        None => None,
        Some(p) if p.backup_id == id && commit == Commit::Resumable => {
            let done = usize::try_from(p.chunks_done)
                .ok()
                .filter(|d| *d <= chunks)
                .ok_or_else(|| {
                    anyhow!("the target's restore progress is damaged; restore again with --force")
                })?;
            Some(done)
        }
        Some(p) => bail!("the target holds {p}"),
    };
    if resume_from.is_none() {
        let found = into.schema_version().await.unwrap_or(0);
        if found > m.schema_version {
            if !force {
                bail!("the target store is at schema version {found}, past the backup's {}; restore into an empty store", m.schema_version);
            }
        } else {
            into.migrate_to(m.schema_version, now)
                .await
                .context("cannot prepare the target store's schema")?;
        }
        if !force && !into.is_blank().await? {
            bail!("the target store is not empty; restore into an empty one, or add --force to replace its contents");
        }
    }
    let dir = target.join(id);
    let total = m.total_rows();
    let start = resume_from.unwrap_or(0);
    let mut done: u64 = m.chunks[..start].iter().map(|c| c.rows).sum();
    let starting = "cannot start loading into the target store";
    let mut loader = into.begin_load().await.context(starting)?;
    if resume_from.is_none() && force {
        into.wipe(&mut loader).await.context(starting)?;
    }
    let mark = |n: usize| strongroom_store::RestoreProgress {
        backup_id: id.to_owned(),
        chunks_done: n as i64,
        chunks: chunks as i64,
    };
    if commit == Commit::Resumable {
        into.set_restore_progress(&mut loader, &mark(start))
            .await
            .context(starting)?;
    }
    // One chunk in memory at a time (it was checked above, and is checked
    // again as it is read).
    for n in start..chunks {
        let kept = done;
        let stopped = move || {
            format!(
                "the restore stopped at chunk {} of {chunks}{}",
                n + 1,
                if commit == Commit::Resumable {
                    format!(
                        " ({kept} of {total} rows are kept); run the same command again to resume"
                    )
                } else {
                    "; the target was left as it was".to_owned()
                }
            )
        };
        // Each run of one table's rows is loaded as a batch.
        let mut lines = read_chunk(&dir, m, &key, n)
            .with_context(stopped)?
            .into_iter()
            .peekable();
        while let Some(first) = lines.next() {
            let t = first.t;
            let mut rows = vec![first.r];
            while let Some(l) = lines.next_if(|l| l.t == t) {
                rows.push(l.r);
            }
            let table = m
                .tables
                .iter()
                .find(|x| x.name == t)
                .ok_or_else(|| anyhow!("unknown table {t}"))?;
            into.load_rows(&mut loader, &t, &table.columns, &rows)
                .await
                .with_context(stopped)?;
            done += rows.len() as u64;
            progress(done, total);
        }
        if commit == Commit::Resumable {
            into.set_restore_progress(&mut loader, &mark(n + 1))
                .await
                .with_context(stopped)?;
            into.commit_load(loader).await.with_context(stopped)?;
            loader = into.begin_load().await.with_context(stopped)?;
        }
    }
    into.finish_load(loader).await.context(
        "the restore could not complete (every row is loaded); run the same command again",
    )?;
    // Then up to this binary's schema.
    into.migrate(now).await?;
    into.analyze().await?;
    Ok(checked)
}

/// Which backups retention deletes: all but the newest `keep_last`, the
/// newest of each of the last `daily` days, `weekly` ISO weeks and
/// `monthly` months.
pub fn expired(
    backups: &[Manifest],
    keep_last: usize,
    daily: usize,
    weekly: usize,
    monthly: usize,
) -> Vec<String> {
    let mut newest_first: Vec<&Manifest> = backups.iter().collect();
    newest_first.sort_by_key(|m| std::cmp::Reverse(m.created_at));
    let mut keep: std::collections::HashSet<&str> = newest_first
        .iter()
        .take(keep_last)
        .map(|m| m.id.as_str())
        .collect();
    let mut bucket = |label: &dyn Fn(&Manifest) -> String, n: usize| {
        let mut seen = Vec::new();
        for m in &newest_first {
            let l = label(m);
            if seen.contains(&l) {
                continue;
            }
            if seen.len() >= n {
                break;
            }
            seen.push(l);
            keep.insert(m.id.as_str());
        }
    };
    use chrono::Datelike;
    bucket(&|m| m.created_at.format("%Y-%m-%d").to_string(), daily);
    bucket(
        &|m| {
            let w = m.created_at.iso_week();
            format!("{}-{}", w.year(), w.week())
        },
        weekly,
    );
    bucket(&|m| m.created_at.format("%Y-%m").to_string(), monthly);
    newest_first
        .iter()
        .filter(|m| !keep.contains(m.id.as_str()))
        .map(|m| m.id.clone())
        .collect()
}

/// Removes what interrupted backups and deletions left behind
/// (`.partial-*`, `.deleting-*`) when untouched for `age`, so a backup
/// still being written is left alone. Returns how many.
pub fn remove_leftovers(target: &Path, age: std::time::Duration) -> anyhow::Result<usize> {
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir(target) else {
        return Ok(0);
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(".partial-") || name.starts_with(".deleting-")) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|el| el >= age);
        if old {
            std::fs::remove_dir_all(e.path())?;
            n += 1;
        }
    }
    Ok(n)
}

/// Deletes one backup directory.
pub fn remove(target: &Path, id: &str) -> anyhow::Result<()> {
    if !valid_id(id) {
        bail!("'{id}' is not a backup id");
    }
    // Renamed first, so a half-deleted backup never looks complete.
    let dir = target.join(id);
    let doomed: PathBuf = target.join(format!(".deleting-{id}"));
    std::fs::rename(&dir, &doomed)?;
    std::fs::remove_dir_all(&doomed)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, at: &str) -> Manifest {
        Manifest {
            format: FORMAT,
            id: id.into(),
            created_at: at.parse().unwrap_or_default(),
            schema_version: 1,
            source: "sqlite".into(),
            tables: vec![],
            chunks: vec![],
            chain_heads: BTreeMap::new(),
            wrap_key_id: String::new(),
            wrapped_key: String::new(),
            signature: None,
            mac: String::new(),
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap_or_default()
    }

    #[test]
    fn cron_schedules_fire_at_local_times() {
        let nightly = Cadence::cron("0 3 * * *", "Europe/Paris").unwrap();
        // 03:00 in Paris is 02:00 UTC in winter and 01:00 UTC in summer.
        assert_eq!(
            nightly.next_after(at("2026-01-15T12:00:00Z")),
            Some(at("2026-01-16T02:00:00Z"))
        );
        assert_eq!(
            nightly.next_after(at("2026-07-01T12:00:00Z")),
            Some(at("2026-07-02T01:00:00Z"))
        );
        // Strictly after: a run at the very time does not repeat itself.
        assert_eq!(
            nightly.next_after(at("2026-01-16T02:00:00Z")),
            Some(at("2026-01-17T02:00:00Z"))
        );
        // Mondays at 04:30 UTC; 30 Nov 2026 is a Monday.
        let weekly = Cadence::cron("30 4 * * MON", "UTC").unwrap();
        assert_eq!(
            weekly.next_after(at("2026-11-30T05:00:00Z")),
            Some(at("2026-12-07T04:30:00Z"))
        );
        let monthly = Cadence::cron("@monthly", "UTC").unwrap();
        assert_eq!(
            monthly.next_after(at("2026-11-30T05:00:00Z")),
            Some(at("2026-12-01T00:00:00Z"))
        );
        let every = Cadence::Every(std::time::Duration::from_secs(90 * 60));
        assert_eq!(
            every.next_after(at("2026-11-30T05:00:00Z")),
            Some(at("2026-11-30T06:30:00Z"))
        );
    }

    #[test]
    fn bad_cron_expressions_are_refused_with_a_reason() {
        for (expr, tz, want) in [
            ("61 * * * *", "UTC", "not a cron expression"),
            ("0 3 * *", "UTC", "not a cron expression"),
            ("0 0 3 * * *", "UTC", "not a cron expression"),
            ("0 0 30 2 *", "UTC", "never fires"),
            ("0 3 * * *", "Mars/Olympus", "not an IANA time zone"),
        ] {
            let e = Cadence::cron(expr, tz).unwrap_err();
            assert!(format!("{e:#}").contains(want), "{expr} {tz}: {e:#}");
        }
    }

    #[test]
    fn retention_keeps_last_daily_weekly_monthly() {
        let all = vec![
            m("a", "2026-09-15T10:00:00Z"),
            m("b", "2026-10-20T10:00:00Z"),
            m("c", "2026-11-02T10:00:00Z"),
            m("d", "2026-11-28T01:00:00Z"),
            m("e", "2026-11-29T01:00:00Z"),
            m("f", "2026-11-30T01:00:00Z"),
            m("g", "2026-11-30T13:00:00Z"),
        ];
        // Last 2: g, f. Daily 2: g (30th), e (29th). Weekly 2 (ISO weeks
        // 49, 48): g, e. Monthly 3: g (Nov), b (Oct), a (Sep).
        let gone = expired(&all, 2, 2, 2, 3);
        assert_eq!(gone, vec!["d".to_owned(), "c".to_owned()], "{gone:?}");
        assert!(expired(&all, 10, 0, 0, 0).is_empty());
        assert_eq!(expired(&all, 1, 0, 0, 0).len(), 6);
    }

    #[test]
    fn ids_are_path_safe() {
        assert!(valid_id("20261130T021500Z-0a1b2c3d"));
        assert!(!valid_id("../etc"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
    }
}

/// What a restore drill checked, and how it went.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub backup_id: String,
    pub ok: bool,
    pub seconds: f64,
    /// Check name → passed, with a word on failures.
    pub checks: Vec<(String, bool, String)>,
}

/// Restores a backup (the newest when `id` is none) into a scratch store,
/// checks it, records the result in `store` as evidence, and on failure
/// opens an incident and alerts. The scratch store is removed afterwards.
pub async fn drill(
    store: &Store,
    provider: std::sync::Arc<dyn KeyProvider>,
    loc: &Location,
    id: Option<&str>,
    alerts: &crate::detection::AlertSettings,
    clock: &strongroom_core::clock::SharedClock,
) -> anyhow::Result<DrillReport> {
    drill_with_probe(store, provider, loc, id, alerts, clock, None).await
}

/// A probe account a drill signs in with: company, user, password.
pub type Probe = (String, String, secrecy::SecretString);

/// [`drill`], also signing in with a probe account on the restored store.
pub async fn drill_with_probe(
    store: &Store,
    provider: std::sync::Arc<dyn KeyProvider>,
    loc: &Location,
    id: Option<&str>,
    alerts: &crate::detection::AlertSettings,
    clock: &strongroom_core::clock::SharedClock,
    probe: Option<&Probe>,
) -> anyhow::Result<DrillReport> {
    let id = match id {
        Some(i) => i.to_owned(),
        None => list_at(loc)
            .await?
            .last()
            .map(|m| m.id.clone())
            .ok_or_else(|| anyhow!("there is no backup in {} to drill", loc.describe()))?,
    };
    let started = clock.now();
    let timer = std::time::Instant::now();
    let scratch = std::env::temp_dir().join(format!(
        "strongroom-drill-{}",
        hex::encode(strongroom_crypto::token::random_bytes::<6>()?)
    ));
    std::fs::create_dir_all(&scratch)?;
    let result = match local(loc, &id).await {
        Ok(l) => drill_into(&scratch, provider, &l.root, &id, clock, probe).await,
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&scratch);
    let checks = match result {
        Ok(c) => c,
        Err(e) => vec![("restore".to_owned(), false, format!("{e:#}"))],
    };
    let ok = checks.iter().all(|c| c.1);
    let report = DrillReport {
        backup_id: id.clone(),
        ok,
        seconds: timer.elapsed().as_secs_f64(),
        checks,
    };
    let finished = clock.now();
    store
        .record_backup_run(&strongroom_store::BackupRun {
            kind: "drill".into(),
            backup_id: id.clone(),
            started_at: started,
            finished_at: finished,
            ok,
            detail: serde_json::json!({
                "seconds": report.seconds,
                "checks": report.checks.iter().map(|(n, ok, why)| serde_json::json!({"check": n, "ok": ok, "detail": why})).collect::<Vec<_>>(),
            }),
        })
        .await?;
    if !ok {
        let failed: Vec<&str> = report
            .checks
            .iter()
            .filter(|c| !c.1)
            .map(|c| c.0.as_str())
            .collect();
        let summary = format!("restore drill of backup {id} failed: {}", failed.join(", "));
        let incident = store
            .open_incident(
                strongroom_core::audit::SERVER_CHAIN,
                "restore_drill",
                &format!("backup:{id}"),
                &summary,
                "alert",
                finished,
            )
            .await?;
        for channel in alerts.channels() {
            let payload = serde_json::json!({
                "type": "strongroom.incident", "incident": incident, "company": null,
                "detector": "restore_drill", "subject": format!("backup:{id}"),
                "summary": summary, "response": "alert", "at": finished, "channel": channel,
            });
            store.enqueue_alert(&payload.to_string(), finished).await?;
        }
    }
    Ok(report)
}

async fn drill_into(
    scratch: &Path,
    provider: std::sync::Arc<dyn KeyProvider>,
    target: &Path,
    id: &str,
    clock: &strongroom_core::clock::SharedClock,
    probe: Option<&Probe>,
) -> anyhow::Result<Vec<(String, bool, String)>> {
    let url = scratch.join("drill.db");
    let db = Store::connect(&url.to_string_lossy(), Default::default()).await?;
    let mut checks = Vec::new();
    let checked = restore(
        provider.as_ref(),
        target,
        id,
        &db,
        false,
        Commit::Once,
        clock.now(),
        &|_, _| {},
    )
    .await?;
    let m = &checked.manifest;
    checks.push(("restore".into(), true, format!("{} rows", m.total_rows())));
    let v = db.schema_version().await?;
    checks.push((
        "schema_version".into(),
        v == SCHEMA_VERSION,
        format!("{v} (backup {})", m.schema_version),
    ));
    let mut counts_ok = true;
    let mut why = String::new();
    for t in &m.tables {
        let n = db.count_rows(&t.name).await?;
        if n != t.rows as i64 {
            counts_ok = false;
            why = format!("{}: {n} rows, manifest {}", t.name, t.rows);
        }
    }
    checks.push(("row_counts".into(), counts_ok, why));
    let ring = crate::keys::KeyRing::new(provider.clone(), db.clone());
    let mut chains_ok = true;
    let mut why = String::new();
    for chain in db.audit_chains().await? {
        let company = db.company_code(strongroom_core::CompanyId(chain)).await?;
        let v = crate::audit::verify(&db, &ring, chain, company.is_some(), None)
            .await
            .map_err(|e| anyhow!(e.message))?;
        let head_ok = m
            .chain_heads
            .get(&chain)
            .is_none_or(|h| h.seq == v.events || v.events > h.seq);
        if v.problem.is_some() || !head_ok {
            chains_ok = false;
            why = format!(
                "chain {chain}: {}",
                v.problem
                    .unwrap_or_else(|| "head differs from the manifest".into())
            );
        }
    }
    checks.push(("audit_chains".into(), chains_ok, why));
    // A sample of encrypted values must open with the restored keys.
    let mut opened = 0;
    let mut open_ok = true;
    let mut why = String::new();
    for c in db.list_companies().await? {
        let Some((company, _)) = db.company_by_code(&c.code).await? else {
            continue;
        };
        for t in db.list_record_types(company).await? {
            let Some(rt) = db.record_type(company, &t.key).await? else {
                continue;
            };
            let sealer = crate::sealing::Sealer::new(&ring, company, &c.code, &rt.view).await;
            let sealer = match sealer {
                Ok(s) => s,
                Err(e) => {
                    open_ok = false;
                    why = e.message;
                    continue;
                }
            };
            let q = strongroom_store::RecordQuery {
                limit: 5,
                deleted: strongroom_proto::DeletedFilter::Include,
                ..Default::default()
            };
            for r in db.list_records(company, &rt, &q).await?.0 {
                match sealer.open(&ring, company, &r.view.id, &r.view.data).await {
                    Ok(_) => opened += 1,
                    Err(e) => {
                        open_ok = false;
                        why = format!("{}/{}: {}", t.key, r.view.id, e.message);
                    }
                }
            }
        }
    }
    checks.push((
        "decrypt_sample".into(),
        open_ok,
        if open_ok {
            format!("{opened} records opened")
        } else {
            why
        },
    ));
    if let Some((company, user, password)) = probe {
        use secrecy::ExposeSecret;
        let account = db.login_account(company, user).await?;
        let hasher = strongroom_crypto::password::PasswordHasher::new(Default::default())?;
        let ok = account.as_ref().is_some_and(|a| {
            a.view.status == strongroom_proto::UserStatus::Active
                && hasher.verify(password.expose_secret(), Some(&a.password_hash))
        });
        checks.push((
            "probe_sign_in".into(),
            ok,
            if ok {
                format!("{company}/{user} signs in")
            } else {
                format!("{company}/{user} cannot sign in on the restored store")
            },
        ));
    }
    db.close().await;
    Ok(checks)
}

/// When a scheduled job runs: every fixed interval, or at the times a cron
/// expression names, read in a time zone.
#[derive(Debug, Clone)]
pub enum Cadence {
    Every(std::time::Duration),
    Cron {
        cron: Box<croner::Cron>,
        tz: chrono_tz::Tz,
    },
}

impl Cadence {
    /// A five-field cron expression (minute, hour, day of month, month,
    /// day of week; `@daily` and the like too) in time zone `tz` (an IANA
    /// name such as `Europe/Paris`, or `UTC`).
    pub fn cron(expr: &str, tz: &str) -> anyhow::Result<Cadence> {
        let tz = strongroom_core::hours::parse_tz(tz.trim()).map_err(|e| anyhow!("{e}"))?;
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| {
                anyhow!("'{expr}' is not a cron expression of five fields (minute hour day-of-month month day-of-week, e.g. '30 2 * * *'): {e}")
            })?;
        // An expression that never fires (30 February) is a mistake.
        let c = Cadence::Cron {
            cron: Box::new(cron),
            tz,
        };
        // (With no year field, a pattern that fires at all fires within
        // years of any start.)
        if c.next_after(DateTime::<Utc>::UNIX_EPOCH).is_none() {
            bail!("the cron expression '{expr}' never fires");
        }
        Ok(c)
    }

    /// The next run strictly after `now` (None: never).
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Cadence::Every(d) => Some(now + chrono::Duration::from_std(*d).ok()?),
            Cadence::Cron { cron, tz } => cron
                .find_next_occurrence(&now.with_timezone(tz), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
        }
    }

    /// How long to wait from `now` until the next run.
    fn wait(&self, now: DateTime<Utc>) -> Option<std::time::Duration> {
        let next = self.next_after(now)?;
        Some((next - now).to_std().unwrap_or_default())
    }
}

/// The server's own schedule: backups (with retention applied after each)
/// and drills of the newest backup, each on its cadence. Failures are
/// logged and recorded; the next run comes all the same.
pub struct Schedule {
    pub target: Location,
    pub backups: Option<Cadence>,
    pub drills: Option<Cadence>,
    pub keep: (usize, usize, usize, usize),
    pub alerts: crate::detection::AlertSettings,
    pub probe: Option<Probe>,
}

pub fn spawn_schedule(
    store: Store,
    provider: std::sync::Arc<dyn KeyProvider>,
    clock: strongroom_core::clock::SharedClock,
    s: Schedule,
) {
    if let Some(cadence) = s.backups {
        let (store, provider, clock, target, keep) = (
            store.clone(),
            provider.clone(),
            clock.clone(),
            s.target.clone(),
            s.keep,
        );
        tokio::spawn(async move {
            while let Some(wait) = cadence.wait(clock.now()) {
                tokio::time::sleep(wait).await;
                let started = clock.now();
                let t = std::time::Instant::now();
                let run = match create_at(&store, provider.as_ref(), &target, started, &no_progress)
                    .await
                {
                    Ok(m) => {
                        tracing::info!(backup = %m.id, rows = m.total_rows(), "scheduled backup written");
                        if let Ok(all) = list_at(&target).await {
                            for id in expired(&all, keep.0, keep.1, keep.2, keep.3) {
                                if let Err(e) = remove_at(&target, &id).await {
                                    tracing::warn!(backup = %id, error = %e, "retention could not delete a backup");
                                }
                            }
                        }
                        strongroom_store::BackupRun {
                            kind: "backup".into(),
                            backup_id: m.id.clone(),
                            started_at: started,
                            finished_at: clock.now(),
                            ok: true,
                            detail: serde_json::json!({"rows": m.total_rows(), "seconds": t.elapsed().as_secs_f64()}),
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "scheduled backup failed");
                        strongroom_store::BackupRun {
                            kind: "backup".into(),
                            backup_id: String::new(),
                            started_at: started,
                            finished_at: clock.now(),
                            ok: false,
                            detail: serde_json::json!({"error": format!("{e:#}")}),
                        }
                    }
                };
                if let Err(e) = store.record_backup_run(&run).await {
                    tracing::error!(error = %e, "could not record a backup run");
                }
            }
        });
    }
    if let Some(cadence) = s.drills {
        // The drill runs on a blocking thread of its own (it is long, and
        // its future is not `Send` for every lifetime the compiler asks).
        let handle = tokio::runtime::Handle::current();
        std::thread::spawn(move || {
            while let Some(wait) = cadence.wait(clock.now()) {
                std::thread::sleep(wait);
                let run = drill_with_probe(
                    &store,
                    provider.clone(),
                    &s.target,
                    None,
                    &s.alerts,
                    &clock,
                    s.probe.as_ref(),
                );
                match handle.block_on(run) {
                    Ok(r) => {
                        tracing::info!(backup = %r.backup_id, ok = r.ok, "scheduled restore drill")
                    }
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "scheduled restore drill failed to run")
                    }
                }
            }
        });
    }
}

/// A standby's state, kept in `<data_dir>/standby.json`: which backup it
/// holds, and whether it was promoted.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StandbyState {
    pub source: String,
    pub restored: Option<String>,
    pub backup_created_at: Option<DateTime<Utc>>,
    pub restored_at: Option<DateTime<Utc>>,
    pub promoted: bool,
}

pub fn standby_file(data_dir: &Path) -> PathBuf {
    data_dir.join("standby.json")
}

pub fn read_standby(data_dir: &Path) -> anyhow::Result<Option<StandbyState>> {
    let p = standby_file(data_dir);
    match std::fs::read(&p) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
            format!(
                "{} is damaged; remove it only if this store is not a standby",
                p.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!("cannot read {}: {e}", p.display())),
    }
}

pub fn write_standby(data_dir: &Path, s: &StandbyState) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let p = standby_file(data_dir);
    let tmp = p.with_extension("json.tmp");
    write_synced(&tmp, &serde_json::to_vec_pretty(s)?)?;
    std::fs::rename(&tmp, &p)?;
    Ok(())
}

/// One step of a standby: restores the source's newest backup into the
/// standby's store if it is newer than what it holds. Returns the backup
/// restored, if any.
pub async fn standby_step(
    store: &Store,
    provider: &dyn KeyProvider,
    data_dir: &Path,
    source: &Location,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<Manifest>> {
    let mut state = read_standby(data_dir)?.unwrap_or_else(|| StandbyState {
        source: source.describe(),
        ..Default::default()
    });
    if state.promoted {
        bail!("this store was promoted to a primary; it no longer follows backups");
    }
    let Some(newest) = list_at(source).await?.pop() else {
        return Ok(None);
    };
    if state.restored.as_deref() == Some(newest.id.as_str()) {
        return Ok(None);
    }
    // The standby's store holds only what earlier steps restored, so it is
    // replaced in one transaction; until it commits, the previous backup
    // stays whole.
    let force = state.restored.is_some() || !store.is_blank().await.unwrap_or(true);
    if force && state.restored.is_none() {
        bail!("the standby's store is not empty and holds no restored backup; give the standby a store of its own");
    }
    let l = local(source, &newest.id).await?;
    restore(
        provider,
        &l.root,
        &newest.id,
        store,
        force,
        Commit::Once,
        now,
        &|_, _| {},
    )
    .await?;
    state.source = source.describe();
    state.restored = Some(newest.id.clone());
    state.backup_created_at = Some(newest.created_at);
    state.restored_at = Some(now);
    write_standby(data_dir, &state)?;
    Ok(Some(newest))
}

/// Makes a standby a primary: it stops following, and `serve` starts on it.
pub fn promote(data_dir: &Path) -> anyhow::Result<StandbyState> {
    let mut s = read_standby(data_dir)?.ok_or_else(|| {
        anyhow!(
            "this store is not a standby (no {})",
            standby_file(data_dir).display()
        )
    })?;
    if s.restored.is_none() {
        bail!("the standby has not restored any backup yet; there is nothing to serve");
    }
    s.promoted = true;
    write_standby(data_dir, &s)?;
    Ok(s)
}

/// Where backups live: a directory, or S3-compatible object storage
/// (`s3://bucket/prefix`; credentials, region and endpoint from the usual
/// `AWS_*` environment variables, e.g. `AWS_ENDPOINT` and `AWS_ALLOW_HTTP`
/// for a local server). On object storage a backup is staged locally and
/// uploaded chunks first, manifest last: the manifest's arrival is what
/// makes it a backup, so an interrupted upload never looks complete.
#[derive(Clone)]
pub enum Location {
    Dir(PathBuf),
    S3 {
        store: std::sync::Arc<dyn object_store::ObjectStore>,
        prefix: String,
        display: String,
    },
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Location {
    pub fn parse(target: &Path) -> anyhow::Result<Location> {
        let text = target.to_string_lossy();
        let Some(rest) = text.strip_prefix("s3://") else {
            return Ok(Location::Dir(target.to_owned()));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("backup_target: '{text}' names no bucket; use s3://bucket/prefix");
        }
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| anyhow!("backup_target {text}: {e}"))?;
        Ok(Location::S3 {
            store: std::sync::Arc::new(store),
            prefix: prefix.trim_matches('/').to_owned(),
            display: text.into_owned(),
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Location::Dir(p) => p.display().to_string(),
            Location::S3 { display, .. } => display.clone(),
        }
    }

    fn key(prefix: &str, rest: &str) -> object_store::path::Path {
        if prefix.is_empty() {
            object_store::path::Path::from(rest)
        } else {
            object_store::path::Path::from(format!("{prefix}/{rest}"))
        }
    }
}

/// A local directory that holds a backup for reading: the target itself,
/// or a scratch copy of an object-storage backup (removed when dropped).
pub struct Local {
    pub root: PathBuf,
    scratch: bool,
}

impl Drop for Local {
    fn drop(&mut self) {
        if self.scratch {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

fn scratch_dir(what: &str) -> anyhow::Result<PathBuf> {
    let p = std::env::temp_dir().join(format!(
        "strongroom-{what}-{}",
        hex::encode(strongroom_crypto::token::random_bytes::<6>()?)
    ));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}

/// Takes a backup into `loc`.
pub async fn create_at(
    store: &Store,
    provider: &dyn KeyProvider,
    loc: &Location,
    now: DateTime<Utc>,
    progress: Progress<'_>,
) -> anyhow::Result<Manifest> {
    match loc {
        Location::Dir(d) => create_with(store, provider, d, now, CHUNK_BYTES, progress).await,
        Location::S3 {
            store: os, prefix, ..
        } => {
            let stage = Local {
                root: scratch_dir("upload")?,
                scratch: true,
            };
            let m = create_with(store, provider, &stage.root, now, CHUNK_BYTES, progress).await?;
            let dir = stage.root.join(&m.id);
            for c in &m.chunks {
                let bytes = std::fs::read(dir.join(&c.file))?;
                os.put(
                    &Location::key(prefix, &format!("{}/{}", m.id, c.file)),
                    bytes.into(),
                )
                .await
                .map_err(|e| anyhow!("uploading {} failed: {e}", c.file))?;
            }
            let bytes = std::fs::read(dir.join("manifest.json"))?;
            os.put(
                &Location::key(prefix, &format!("{}/manifest.json", m.id)),
                bytes.into(),
            )
            .await
            .map_err(|e| anyhow!("uploading the manifest failed: {e}"))?;
            Ok(m)
        }
    }
}

/// The backups in `loc`, oldest first.
pub async fn list_at(loc: &Location) -> anyhow::Result<Vec<Manifest>> {
    match loc {
        Location::Dir(d) => list(d),
        Location::S3 {
            store: os, prefix, ..
        } => {
            let base =
                (!prefix.is_empty()).then(|| object_store::path::Path::from(prefix.as_str()));
            let listed = os
                .list_with_delimiter(base.as_ref())
                .await
                .map_err(|e| anyhow!("cannot list {}: {e}", loc.describe()))?;
            let mut out = Vec::new();
            for p in listed.common_prefixes {
                let Some(id) = p.filename().map(str::to_owned) else {
                    continue;
                };
                if !valid_id(&id) {
                    continue;
                }
                let key = Location::key(prefix, &format!("{id}/manifest.json"));
                let Ok(got) = os.get(&key).await else {
                    continue; // no manifest yet: not a backup
                };
                let bytes = got.bytes().await?;
                if let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) {
                    out.push(m);
                }
            }
            out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
            Ok(out)
        }
    }
}

/// A local view of backup `id` for verify, restore and drills.
pub async fn local(loc: &Location, id: &str) -> anyhow::Result<Local> {
    if !valid_id(id) {
        bail!("'{id}' is not a backup id; `strongroom backup list` shows them");
    }
    match loc {
        Location::Dir(d) => Ok(Local {
            root: d.clone(),
            scratch: false,
        }),
        Location::S3 {
            store: os, prefix, ..
        } => {
            let l = Local {
                root: scratch_dir("download")?,
                scratch: true,
            };
            let dir = l.root.join(id);
            std::fs::create_dir_all(&dir)?;
            let manifest_key = Location::key(prefix, &format!("{id}/manifest.json"));
            let got = os
                .get(&manifest_key)
                .await
                .map_err(|_| anyhow!("there is no backup {id} in {}", loc.describe()))?;
            let manifest = got.bytes().await?;
            std::fs::write(dir.join("manifest.json"), &manifest)?;
            // The chunks the manifest names (whatever else lies there is
            // not part of the backup).
            if let Ok(m) = serde_json::from_slice::<Manifest>(&manifest) {
                for c in &m.chunks {
                    if !valid_chunk_name(&c.file) {
                        bail!("the manifest names a chunk outside the backup: {}", c.file);
                    }
                    // A chunk that is not there is reported as missing by
                    // the checks that follow.
                    if let Ok(g) = os
                        .get(&Location::key(prefix, &format!("{id}/{}", c.file)))
                        .await
                    {
                        std::fs::write(dir.join(&c.file), g.bytes().await?)?;
                    }
                }
            }
            Ok(l)
        }
    }
}

fn valid_chunk_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.contains("..")
}

/// Deletes backup `id` from `loc` (the manifest first, so a half-deleted
/// backup is never listed).
pub async fn remove_at(loc: &Location, id: &str) -> anyhow::Result<()> {
    match loc {
        Location::Dir(d) => remove(d, id),
        Location::S3 {
            store: os, prefix, ..
        } => {
            if !valid_id(id) {
                bail!("'{id}' is not a backup id");
            }
            os.delete(&Location::key(prefix, &format!("{id}/manifest.json")))
                .await
                .map_err(|e| anyhow!("cannot delete backup {id}: {e}"))?;
            use futures_util::TryStreamExt;
            let all: Vec<_> = os
                .list(Some(&Location::key(prefix, id)))
                .try_collect()
                .await
                .map_err(|e| anyhow!("cannot list backup {id}: {e}"))?;
            for o in all {
                os.delete(&o.location)
                    .await
                    .map_err(|e| anyhow!("cannot delete {}: {e}", o.location))?;
            }
            Ok(())
        }
    }
}
