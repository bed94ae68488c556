//! TLS: the configured certificate, or a self-signed one generated on first
//! start and kept in `<data_dir>/tls`.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(String);

/// Where the certificate came from, for the start-up message.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub generated: bool,
}

/// Uses the configured pair, or generates (once) a self-signed certificate
/// for `localhost`, `127.0.0.1` and `::1`.
pub fn ensure_files(
    cert: Option<&Path>,
    key: Option<&Path>,
    data_dir: &Path,
) -> Result<TlsFiles, TlsError> {
    if let (Some(c), Some(k)) = (cert, key) {
        return Ok(TlsFiles {
            cert: c.into(),
            key: k.into(),
            generated: false,
        });
    }
    let dir = data_dir.join("tls");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok(TlsFiles {
            cert,
            key,
            generated: false,
        });
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| TlsError(format!("cannot create {}: {e}", dir.display())))?;
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| TlsError(format!("cannot generate a certificate: {e}")))?;
    write_file(&key, ck.key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert, ck.cert.pem().as_bytes(), 0o644)?;
    Ok(TlsFiles {
        cert,
        key,
        generated: true,
    })
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| TlsError(format!("cannot write {}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| TlsError(format!("cannot write {}: {e}", path.display())))
}

pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_pem = fs::read(&files.cert).map_err(|e| {
        TlsError(format!(
            "cannot read tls_cert {}: {e}",
            files.cert.display()
        ))
    })?;
    let key_pem = fs::read(&files.key)
        .map_err(|e| TlsError(format!("cannot read tls_key {}: {e}", files.key.display())))?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError(format!("tls_cert {} is not PEM: {e}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "tls_cert {} holds no certificate",
            files.cert.display()
        )));
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| TlsError(format!("tls_key {} is not PEM: {e}", files.key.display())))?
        .ok_or_else(|| {
            TlsError(format!(
                "tls_key {} holds no private key",
                files.key.display()
            ))
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError(format!("certificate and key do not fit together: {e}")))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
