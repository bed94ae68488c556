//! The `file` key provider: the master key (key-encryption key) lives in a
//! file in its own directory, apart from the data, readable by the server's
//! user only. Start-up refuses anything looser.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::CryptoError;

pub const MASTER_KEY_FILE: &str = "master.key";
const HEADER: &str = "strongroom-master-key-v1";

/// A master key with its public id.
type NamedKey = (String, Zeroizing<[u8; 32]>);

/// The master key (key-encryption key) from the key file, with any older
/// keys still listed there during a master-key rotation. Lives only in
/// memory, zeroed when dropped, never printed.
pub struct FileKeyProvider {
    path: PathBuf,
    /// Current key first.
    keys: std::sync::RwLock<Vec<NamedKey>>,
}

impl std::fmt::Debug for FileKeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileKeyProvider")
            .field("path", &self.path)
            .field("key_ids", &self.key_ids())
            .finish()
    }
}

/// A short public name for a master key: a hash of it, never the key.
fn key_id(key: &[u8; 32]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"strongroom/kek-id/v1");
    h.update(key);
    format!("file:{}", &hex::encode(h.finalize())[..16])
}

impl FileKeyProvider {
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<NamedKey>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<NamedKey>> {
        self.keys.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn key_ids(&self) -> Vec<String> {
        self.read().iter().map(|k| k.0.clone()).collect()
    }

    fn with_key<R>(
        &self,
        key_id: &str,
        f: impl FnOnce(&crate::envelope::SecretKey) -> Result<R, CryptoError>,
    ) -> Option<Result<R, CryptoError>> {
        let keys = self.read();
        let (_, key) = keys.iter().find(|k| k.0 == key_id)?;
        Some(crate::envelope::SecretKey::from_bytes(0, key.as_ref()).and_then(|k| f(&k)))
    }
}

impl crate::provider::KeyProvider for FileKeyProvider {
    fn describe(&self) -> String {
        format!("key file {}", self.path.display())
    }

    fn current_key_id(&self) -> String {
        self.read().first().map(|k| k.0.clone()).unwrap_or_default()
    }

    fn wrap(&self, secret: &[u8], context: &str) -> Result<Vec<u8>, CryptoError> {
        let id = self.current_key_id();
        self.with_key(&id, |k| {
            crate::envelope::seal_raw(k, &crate::provider::wrap_aad(context), secret)
        })
        .unwrap_or_else(|| Err(err("the key file holds no key".into())))
    }

    fn unwrap(
        &self,
        key_id: &str,
        wrapped: &[u8],
        context: &str,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let open = |k: &crate::envelope::SecretKey| {
            crate::envelope::open_raw(k, &crate::provider::wrap_aad(context), wrapped)
        };
        if let Some(r) = self.with_key(key_id, open) {
            return r;
        }
        // The master key may have been rotated by another process: read the
        // file again before giving up.
        if let Ok(keys) = read_keys(&self.path) {
            *self.write() = keys;
        }
        self.with_key(key_id, open).unwrap_or_else(|| {
            Err(err(format!(
                "the master key {key_id} that wrapped a stored key is not in {}; restore the key file from your key backup",
                self.path.display()
            )))
        })
    }

    fn add_master_key(&self) -> Result<String, CryptoError> {
        let key = Zeroizing::new(crate::token::random_bytes::<32>()?);
        let id = key_id(&key);
        let mut keys = self.write();
        keys.insert(0, (id.clone(), key));
        write_keys(&self.path, &keys)?;
        Ok(id)
    }

    fn drop_old_master_keys(&self) -> Result<usize, CryptoError> {
        let mut keys = self.write();
        let n = keys.len().saturating_sub(1);
        keys.truncate(1);
        write_keys(&self.path, &keys)?;
        Ok(n)
    }
}

/// Opens the key directory and its master key file. With `may_create`
/// (a store that holds no wrapped keys yet) a missing directory (0700) and
/// key file (0600) are created; otherwise a missing key file is an error,
/// never silently replaced. `data_dir` is where the database lives; the key
/// directory must not be inside it, or a copy of the data would carry the key.
pub fn open(
    key_dir: &Path,
    data_dir: &Path,
    may_create: bool,
) -> Result<(FileKeyProvider, bool), CryptoError> {
    if !key_dir.exists() {
        if !may_create {
            return Err(missing(key_dir));
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(key_dir)
            .map_err(|e| {
                err(format!(
                    "cannot create key directory {}: {e}",
                    key_dir.display()
                ))
            })?;
    }
    let key_dir_abs = canonical(key_dir)?;
    if data_dir.exists() {
        let data_abs = canonical(data_dir)?;
        if key_dir_abs.starts_with(&data_abs) || data_abs.starts_with(&key_dir_abs) {
            return Err(err(format!(
                "the key directory {} and the data directory {} must be apart (neither inside the other), \
                 so that a copy of the data never carries the key; set key_dir to another path",
                key_dir_abs.display(),
                data_abs.display()
            )));
        }
    }
    check_private(&key_dir_abs, true)?;
    let path = key_dir_abs.join(MASTER_KEY_FILE);
    if path.exists() {
        let keys = read_keys(&path)?;
        Ok((
            FileKeyProvider {
                path,
                keys: std::sync::RwLock::new(keys),
            },
            false,
        ))
    } else if may_create {
        let key = Zeroizing::new(crate::token::random_bytes::<32>()?);
        let keys = vec![(key_id(&key), key)];
        create_keys(&path, &keys)?;
        Ok((
            FileKeyProvider {
                path,
                keys: std::sync::RwLock::new(keys),
            },
            true,
        ))
    } else {
        Err(missing(&key_dir_abs))
    }
}

fn missing(key_dir: &Path) -> CryptoError {
    err(format!(
        "the master key file {} is missing, but the store holds keys wrapped by it; \
         restore the key file from your key backup (a new key cannot read existing data)",
        key_dir.join(MASTER_KEY_FILE).display()
    ))
}

fn err(msg: String) -> CryptoError {
    CryptoError::KeyStore(msg)
}

fn canonical(p: &Path) -> Result<PathBuf, CryptoError> {
    fs::canonicalize(p).map_err(|e| err(format!("cannot resolve {}: {e}", p.display())))
}

/// Refuses a file or directory that anyone but its owner may read or write,
/// and a key file that is a symbolic link.
fn check_private(path: &Path, is_dir: bool) -> Result<(), CryptoError> {
    let meta = fs::symlink_metadata(path)
        .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    if meta.file_type().is_symlink() {
        return Err(err(format!(
            "{} is a symbolic link; point key_dir at the real file's directory",
            path.display()
        )));
    }
    if meta.is_dir() != is_dir {
        return Err(err(format!(
            "{} should be a {}",
            path.display(),
            if is_dir { "directory" } else { "file" }
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        let want = if is_dir { "700" } else { "600" };
        return Err(err(format!(
            "{} has mode {mode:o}, which lets other users at the key; run: chmod {want} {}",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

fn encode_keys(keys: &[NamedKey]) -> Zeroizing<String> {
    let mut text = Zeroizing::new(format!("{HEADER}\n"));
    for (_, k) in keys {
        text.push_str(&hex::encode(k.as_ref()));
        text.push('\n');
    }
    text
}

fn create_keys(path: &Path, keys: &[NamedKey]) -> Result<(), CryptoError> {
    let text = encode_keys(keys);
    // create_new: never overwrite a key that appeared meanwhile.
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| err(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| err(format!("cannot write {}: {e}", path.display())))
}

/// Replaces the key file atomically: a new file (0600) renamed over the old.
fn write_keys(path: &Path, keys: &[NamedKey]) -> Result<(), CryptoError> {
    let tmp = path.with_extension("key.new");
    let _ = fs::remove_file(&tmp);
    create_keys(&tmp, keys)?;
    fs::rename(&tmp, path).map_err(|e| err(format!("cannot replace {}: {e}", path.display())))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn read_keys(path: &Path) -> Result<Vec<NamedKey>, CryptoError> {
    check_private(path, false)?;
    let text = Zeroizing::new(
        fs::read_to_string(path)
            .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?,
    );
    let bad = || {
        err(format!(
            "{} is not a Strongroom master key file; restore it from your key backup",
            path.display()
        ))
    };
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(bad());
    }
    let mut keys = Vec::new();
    for line in lines.map(str::trim).filter(|l| !l.is_empty()) {
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(line, key.as_mut()).map_err(|_| bad())?;
        keys.push((key_id(&key), key));
    }
    if keys.is_empty() {
        return Err(bad());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::KeyProvider;

    fn tmp() -> PathBuf {
        let n = hex::encode(crate::token::random_bytes::<8>().unwrap());
        std::env::temp_dir().join(format!("sr-keytest-{n}"))
    }

    #[test]
    fn creates_private_key_and_reads_it_back() {
        let root = tmp();
        let keys = root.join("keys");
        let data = root.join("data");
        fs::create_dir_all(&data).unwrap();
        assert!(
            open(&keys, &data, false).is_err(),
            "no key file and no permission to create one"
        );
        let (k1, created) = open(&keys, &data, true).unwrap();
        assert!(created);
        let mode = fs::metadata(keys.join(MASTER_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            fs::metadata(&keys).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let (k2, created) = open(&keys, &data, false).unwrap();
        assert!(!created);
        assert_eq!(k1.key_ids(), k2.key_ids());
        let wrapped = k1.wrap(b"0123456789abcdef0123456789abcdef", "ctx").unwrap();
        assert_eq!(
            k2.unwrap(&k1.current_key_id(), &wrapped, "ctx")
                .unwrap()
                .as_slice(),
            b"0123456789abcdef0123456789abcdef"
        );
        assert!(k2
            .unwrap(&k1.current_key_id(), &wrapped, "other ctx")
            .is_err());
        assert!(!format!("{k1:?}").contains(&hex::encode(&k1.read()[0].1[..4])));

        fs::set_permissions(
            keys.join(MASTER_KEY_FILE),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let e = open(&keys, &data, false).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn master_key_rotation_keeps_old_keys_until_dropped() {
        let root = tmp();
        let (p, _) = open(&root.join("keys"), &root.join("data"), true).unwrap();
        let old = p.current_key_id();
        let w = p.wrap(&[7u8; 32], "c").unwrap();
        let new = p.add_master_key().unwrap();
        assert_ne!(old, new);
        let (reopened, _) = open(&root.join("keys"), &root.join("data"), false).unwrap();
        assert_eq!(reopened.current_key_id(), new);
        assert_eq!(
            reopened.unwrap(&old, &w, "c").unwrap().as_slice(),
            &[7u8; 32]
        );
        p.drop_old_master_keys().unwrap();
        let (reopened, _) = open(&root.join("keys"), &root.join("data"), false).unwrap();
        assert!(reopened.unwrap(&old, &w, "c").is_err());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn refuses_key_dir_inside_data_dir() {
        let root = tmp();
        let data = root.join("data");
        fs::create_dir_all(&data).unwrap();
        let e = open(&data.join("keys"), &data, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be apart"), "{e}");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn refuses_garbage_key_file() {
        let root = tmp();
        let keys = root.join("keys");
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&keys)
            .unwrap();
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(keys.join(MASTER_KEY_FILE))
            .unwrap()
            .write_all(b"hello")
            .unwrap();
        assert!(open(&keys, &root.join("data"), true).is_err());
        fs::remove_dir_all(root).unwrap();
    }
}
