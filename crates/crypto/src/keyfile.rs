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

/// The master key. Lives only in memory, zeroed when dropped, never printed.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl MasterKey {
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

fn err(msg: String) -> CryptoError {
    CryptoError::KeyStore(msg)
}

/// Opens the key directory, creating it (0700) and the master key file
/// (0600) on first use. `data_dir` is where the database lives; the key
/// directory must not be inside it, or a copy of the data would carry the key.
pub fn open_or_create(key_dir: &Path, data_dir: &Path) -> Result<(MasterKey, bool), CryptoError> {
    if !key_dir.exists() {
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
        Ok((read_key(&path)?, false))
    } else {
        Ok((create_key(&path)?, true))
    }
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

fn create_key(path: &Path) -> Result<MasterKey, CryptoError> {
    let key = crate::token::random_bytes::<32>()?;
    let key = Zeroizing::new(key);
    let text = Zeroizing::new(format!("{HEADER}\n{}\n", hex::encode(key.as_ref())));
    // create_new: never overwrite a key that appeared meanwhile.
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| err(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| err(format!("cannot write {}: {e}", path.display())))?;
    Ok(MasterKey(key))
}

fn read_key(path: &Path) -> Result<MasterKey, CryptoError> {
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
    let hex_key = lines.next().ok_or_else(bad)?.trim();
    let mut key = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_key, key.as_mut()).map_err(|_| bad())?;
    Ok(MasterKey(key))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (k1, created) = open_or_create(&keys, &data).unwrap();
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
        let (k2, created) = open_or_create(&keys, &data).unwrap();
        assert!(!created);
        assert_eq!(k1.expose(), k2.expose());
        assert_eq!(format!("{k1:?}"), "MasterKey(<redacted>)");

        fs::set_permissions(
            keys.join(MASTER_KEY_FILE),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let e = open_or_create(&keys, &data).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn refuses_key_dir_inside_data_dir() {
        let root = tmp();
        let data = root.join("data");
        fs::create_dir_all(&data).unwrap();
        let e = open_or_create(&data.join("keys"), &data)
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
        assert!(open_or_create(&keys, &root.join("data")).is_err());
        fs::remove_dir_all(root).unwrap();
    }
}
