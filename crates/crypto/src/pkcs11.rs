//! The `pkcs11` key provider: the master key is a non-extractable AES-256
//! key inside a PKCS#11 token (a hardware security module; SoftHSM2 in
//! tests). Wrapping and unwrapping are AES-GCM operations performed by the
//! token; the master key's bytes never leave it.
//!
//! Master keys are token objects labelled `<key_label>.v<N>`; the highest
//! N is current. Rotation adds the next version; retiring destroys the
//! older objects once nothing is wrapped by them.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::provider::KeyProvider;
use crate::CryptoError;

const IV_LEN: usize = 12;

/// Where the token is and how to log in.
pub struct Pkcs11Settings {
    /// The PKCS#11 module (shared library), e.g. /usr/lib/softhsm/libsofthsm2.so.
    pub module: PathBuf,
    /// Label of the token to use.
    pub token_label: String,
    /// The user PIN.
    pub pin: SecretString,
    /// Base label of the master key objects.
    pub key_label: String,
}

impl std::fmt::Debug for Pkcs11Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Settings")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("key_label", &self.key_label)
            .finish_non_exhaustive()
    }
}

pub struct Pkcs11KeyProvider {
    // Kept alive for the session's sake; dropped last.
    session: Mutex<Session>,
    token_label: String,
    key_label: String,
    module: PathBuf,
    /// (version, handle), highest version first.
    keys: Mutex<Vec<(u32, ObjectHandle)>>,
    _ctx: Pkcs11,
}

impl std::fmt::Debug for Pkcs11KeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11KeyProvider")
            .field("token", &self.token_label)
            .field("key_label", &self.key_label)
            .finish_non_exhaustive()
    }
}

fn err(msg: impl Into<String>) -> CryptoError {
    CryptoError::KeyStore(msg.into())
}

fn p11(what: &str) -> impl Fn(cryptoki::error::Error) -> CryptoError + '_ {
    move |e| err(format!("PKCS#11 {what}: {e}"))
}

/// One initialised context per module for the whole process: a PKCS#11
/// library is initialised once, and is never finalised while keys are in use.
fn context(module: &Path) -> Result<Pkcs11, CryptoError> {
    static CONTEXTS: Mutex<Vec<(PathBuf, Pkcs11)>> = Mutex::new(Vec::new());
    let mut all = CONTEXTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, c)) = all.iter().find(|(p, _)| p == module) {
        return Ok(c.clone());
    }
    let ctx = Pkcs11::new(module).map_err(p11("loading the module"))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(
            cryptoki::error::RvError::CryptokiAlreadyInitialized,
            _,
        )) => {}
        Err(e) => return Err(p11("initialising")(e)),
    }
    all.push((module.to_owned(), ctx.clone()));
    Ok(ctx)
}

impl Pkcs11KeyProvider {
    /// Logs in to the token and finds the master key. With `may_create`
    /// (a store holding no wrapped keys yet) a missing key is generated in
    /// the token; otherwise a missing key is an error.
    pub fn open(settings: &Pkcs11Settings, may_create: bool) -> Result<(Self, bool), CryptoError> {
        if !settings.module.exists() {
            return Err(err(format!(
                "pkcs11_module {} does not exist; install the token's PKCS#11 library (for SoftHSM2: apt-get install softhsm2)",
                settings.module.display()
            )));
        }
        let ctx = context(&settings.module)?;
        let mut slot = None;
        for s in ctx.get_slots_with_token().map_err(p11("listing slots"))? {
            let info = ctx.get_token_info(s).map_err(p11("reading token info"))?;
            if info.label().trim() == settings.token_label {
                slot = Some(s);
                break;
            }
        }
        let slot = slot.ok_or_else(|| {
            err(format!(
                "no PKCS#11 token labelled '{}' in {}; check pkcs11_token",
                settings.token_label,
                settings.module.display()
            ))
        })?;
        let session = ctx
            .open_rw_session(slot)
            .map_err(p11("opening a session"))?;
        let pin: AuthPin = settings.pin.clone();
        match session.login(UserType::User, Some(&pin)) {
            // Login state is per process and token: another session of ours
            // may have logged in already.
            Ok(())
            | Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::UserAlreadyLoggedIn,
                _,
            )) => {}
            Err(e) => {
                return Err(err(format!(
                    "PKCS#11 login to token '{}' failed ({e}); check pkcs11_pin",
                    settings.token_label
                )))
            }
        }
        let me = Pkcs11KeyProvider {
            session: Mutex::new(session),
            token_label: settings.token_label.clone(),
            key_label: settings.key_label.clone(),
            module: settings.module.clone(),
            keys: Mutex::new(Vec::new()),
            _ctx: ctx,
        };
        me.reload()?;
        let mut created = false;
        if me.lock_keys().is_empty() {
            if !may_create {
                return Err(err(format!(
                    "the master key '{}' is not in token '{}', but the store holds keys wrapped by it; \
                     connect the right token (a new key cannot read existing data)",
                    settings.key_label, settings.token_label
                )));
            }
            me.generate_next()?;
            created = true;
        }
        Ok((me, created))
    }

    fn lock_session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_keys(&self) -> std::sync::MutexGuard<'_, Vec<(u32, ObjectHandle)>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn label(&self, version: u32) -> String {
        format!("{}.v{version}", self.key_label)
    }

    /// Finds the master key objects in the token.
    fn reload(&self) -> Result<(), CryptoError> {
        let session = self.lock_session();
        let handles = session
            .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
            .map_err(p11("searching keys"))?;
        let mut found = Vec::new();
        let prefix = format!("{}.v", self.key_label);
        for h in handles {
            let attrs = session
                .get_attributes(h, &[AttributeType::Label])
                .map_err(p11("reading a key label"))?;
            for a in attrs {
                if let Attribute::Label(l) = a {
                    let l = String::from_utf8_lossy(&l).into_owned();
                    if let Some(v) = l.strip_prefix(&prefix).and_then(|v| v.parse::<u32>().ok()) {
                        found.push((v, h));
                    }
                }
            }
        }
        found.sort_by_key(|k| std::cmp::Reverse(k.0));
        drop(session);
        *self.lock_keys() = found;
        Ok(())
    }

    /// Generates the next master key version inside the token: AES-256,
    /// sensitive, never extractable.
    fn generate_next(&self) -> Result<String, CryptoError> {
        let next = self.lock_keys().first().map(|k| k.0 + 1).unwrap_or(1);
        let label = self.label(next);
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Label(label.clone().into_bytes()),
        ];
        self.lock_session()
            .generate_key(&Mechanism::AesKeyGen, &template)
            .map_err(p11("generating the master key"))?;
        self.reload()?;
        Ok(self.key_id_of(next))
    }

    /// Destroys every master key object but the current one.
    fn destroy_old(&self) -> Result<usize, CryptoError> {
        let old: Vec<ObjectHandle> = self.lock_keys().iter().skip(1).map(|k| k.1).collect();
        let session = self.lock_session();
        for h in &old {
            session
                .destroy_object(*h)
                .map_err(p11("destroying an old key"))?;
        }
        drop(session);
        self.reload()?;
        Ok(old.len())
    }

    fn key_id_of(&self, version: u32) -> String {
        format!("pkcs11:{}/{}", self.token_label, self.label(version))
    }

    fn handle_for(&self, key_id: &str) -> Option<ObjectHandle> {
        self.lock_keys()
            .iter()
            .find(|(v, _)| self.key_id_of(*v) == key_id)
            .map(|k| k.1)
    }

    /// (sensitive, extractable) of the current master key, as the token says.
    pub fn current_key_flags(&self) -> Result<(bool, bool), CryptoError> {
        let h = self
            .lock_keys()
            .first()
            .map(|k| k.1)
            .ok_or_else(|| err("no master key"))?;
        let attrs = self
            .lock_session()
            .get_attributes(h, &[AttributeType::Sensitive, AttributeType::Extractable])
            .map_err(p11("reading key attributes"))?;
        let (mut sensitive, mut extractable) = (false, true);
        for a in attrs {
            match a {
                Attribute::Sensitive(b) => sensitive = b,
                Attribute::Extractable(b) => extractable = b,
                _ => {}
            }
        }
        Ok((sensitive, extractable))
    }

    pub fn module(&self) -> &Path {
        &self.module
    }
}

impl KeyProvider for Pkcs11KeyProvider {
    fn describe(&self) -> String {
        format!(
            "PKCS#11 token '{}' ({}), key '{}'",
            self.token_label,
            self.module.display(),
            self.key_label
        )
    }

    fn current_key_id(&self) -> String {
        let v = self.lock_keys().first().map(|k| k.0).unwrap_or(0);
        self.key_id_of(v)
    }

    fn wrap(&self, secret: &[u8], context: &str) -> Result<Vec<u8>, CryptoError> {
        let key = self
            .lock_keys()
            .first()
            .map(|k| k.1)
            .ok_or_else(|| err("no master key in the token"))?;
        let mut iv = crate::token::random_bytes::<IV_LEN>()?;
        let aad = crate::provider::wrap_aad(context);
        let params = GcmParams::new(&mut iv, &aad, 128.into()).map_err(p11("GCM parameters"))?;
        let ct = self
            .lock_session()
            .encrypt(&Mechanism::AesGcm(params), key, secret)
            .map_err(p11("wrapping"))?;
        let mut out = iv.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    fn unwrap(
        &self,
        key_id: &str,
        wrapped: &[u8],
        context: &str,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let key = match self.handle_for(key_id) {
            Some(h) => h,
            None => {
                // Rotated by another process meanwhile: look again.
                self.reload()?;
                self.handle_for(key_id).ok_or_else(|| {
                    err(format!(
                        "the master key {key_id} that wrapped a stored key is not in the token; connect the right token"
                    ))
                })?
            }
        };
        if wrapped.len() < IV_LEN + 16 {
            return Err(CryptoError::Tampered);
        }
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&wrapped[..IV_LEN]);
        let aad = crate::provider::wrap_aad(context);
        let params = GcmParams::new(&mut iv, &aad, 128.into()).map_err(p11("GCM parameters"))?;
        self.lock_session()
            .decrypt(&Mechanism::AesGcm(params), key, &wrapped[IV_LEN..])
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Tampered)
    }

    fn add_master_key(&self) -> Result<String, CryptoError> {
        self.generate_next()
    }

    fn drop_old_master_keys(&self) -> Result<usize, CryptoError> {
        self.destroy_old()
    }
}
