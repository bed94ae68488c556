//! Between plain record data and its stored form: protected fields are
//! sealed under the company's data key and indexed by blind index; on the
//! way out they are opened and shown masked unless revealed.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::Value;
use strongroom_core::pii::{is_protected, mask};
use strongroom_core::policy::{FieldAccess, Profile, RecordFacts};
use strongroom_core::record::index_text;
use strongroom_core::CompanyId;
use strongroom_crypto::envelope::{self, FieldContext, SecretKey};
use strongroom_crypto::CryptoError;
use strongroom_proto::{ErrorCode, FieldDef, RecordData, RecordTypeView};
use strongroom_store::{IndexEntries, KeyPurpose};

use crate::error::ApiError;
use crate::keys::{KeyError, KeyRing};

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Crypto(CryptoError::Tampered) => tampered("a company key"),
            other => ApiError::internal(other),
        }
    }
}

fn tampered(what: &str) -> ApiError {
    tracing::error!(
        request_id = %crate::error::current_request_id(),
        what, "INTEGRITY: a stored value failed its integrity check (changed or moved in the database)"
    );
    ApiError::new(
        ErrorCode::IntegrityError,
        "a stored value failed its integrity check and is not shown; the operator has been alerted",
    )
}

/// Which protected fields the caller asked to see in full.
#[derive(Debug, Clone, Default)]
pub enum Reveal {
    #[default]
    None,
    All,
    Fields(BTreeSet<String>),
}

impl Reveal {
    pub fn parse(s: &str) -> Reveal {
        if s == "*" || s == "all" {
            return Reveal::All;
        }
        Reveal::Fields(
            s.split(',')
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    fn wants(&self, field: &str) -> bool {
        match self {
            Reveal::None => false,
            Reveal::All => true,
            Reveal::Fields(f) => f.contains(field),
        }
    }

    pub fn is_none(&self) -> bool {
        match self {
            Reveal::None => true,
            Reveal::Fields(f) => f.is_empty(),
            Reveal::All => false,
        }
    }
}

/// The keys one request works with, fetched (and unwrapped) up front.
pub struct Sealer<'a> {
    company_code: &'a str,
    record_type: &'a RecordTypeView,
    data_key: Arc<SecretKey>,
    index_key: Arc<SecretKey>,
}

impl<'a> Sealer<'a> {
    /// The keys a request's caller works with: the current key versions
    /// come from the policy cache under the caller's epoch (a rotation
    /// moves the epoch), the keys themselves from the key ring's cache.
    pub async fn for_request(
        state: &crate::state::AppState,
        caller: &'a crate::auth::Caller,
        record_type: &'a RecordTypeView,
    ) -> Result<Sealer<'a>, ApiError> {
        let company = caller.principal.company;
        let (d, i) = state
            .policy
            .key_versions
            .get_or_load(
                company.0,
                caller.epoch,
                state.store.current_data_and_index_versions(company),
            )
            .await?;
        Ok(Sealer {
            company_code: &caller.principal.company_code,
            record_type,
            data_key: state.keys.key(company, KeyPurpose::Data, d).await?,
            index_key: state.keys.key(company, KeyPurpose::Index, i).await?,
        })
    }

    pub async fn new(
        keys: &KeyRing,
        company: CompanyId,
        company_code: &'a str,
        record_type: &'a RecordTypeView,
    ) -> Result<Sealer<'a>, ApiError> {
        let (data_key, index_key) = keys.current_data_and_index(company).await?;
        Ok(Sealer {
            company_code,
            record_type,
            data_key,
            index_key,
        })
    }

    fn ctx<'b>(&'b self, record_id: &'b str, field: &'b str) -> FieldContext<'b> {
        FieldContext {
            company: self.company_code,
            record_type: &self.record_type.key,
            record_id,
            field,
        }
    }

    /// The index value of a plain value: itself for ordinary fields, a
    /// blind index for protected ones.
    pub fn index_value(&self, field: &FieldDef, plain: &Value) -> Option<String> {
        let text = index_text(plain)?;
        Some(if is_protected(field) {
            envelope::blind_index(&self.index_key, &self.record_type.key, &field.key, &text)
        } else {
            text
        })
    }

    /// Plain data → stored data and its index entries.
    pub fn seal(
        &self,
        record_id: &str,
        plain: &RecordData,
    ) -> Result<(RecordData, IndexEntries), ApiError> {
        let mut stored = RecordData::new();
        let mut index = IndexEntries::new();
        for field in &self.record_type.fields {
            let Some(v) = plain.get(&field.key) else {
                continue;
            };
            if let Some(ix) = self.index_value(field, v) {
                index.push((field.key.clone(), ix));
            }
            if is_protected(field) {
                // The JSON text is sealed, so the value comes back with its type.
                let text = zeroize::Zeroizing::new(v.to_string());
                let sealed =
                    envelope::encrypt_field(&self.data_key, self.ctx(record_id, &field.key), &text)
                        .map_err(ApiError::internal)?;
                stored.insert(field.key.clone(), Value::String(sealed));
            } else {
                stored.insert(field.key.clone(), v.clone());
            }
        }
        Ok((stored, index))
    }

    /// Stored data → plain data. Every protected value must open; one that
    /// does not is reported as tampering, never returned.
    pub async fn open(
        &self,
        keys: &KeyRing,
        company: CompanyId,
        record_id: &str,
        stored: &RecordData,
    ) -> Result<RecordData, ApiError> {
        let mut plain = RecordData::new();
        for (k, v) in stored {
            let field = self.record_type.fields.iter().find(|f| &f.key == k);
            match field {
                Some(f) if is_protected(f) => {
                    let s = v.as_str().ok_or_else(|| tampered("a protected field"))?;
                    let version =
                        envelope::stored_version(s).ok_or_else(|| tampered("a protected field"))?;
                    let key = if version == self.data_key.version() {
                        self.data_key.clone()
                    } else {
                        keys.key(company, KeyPurpose::Data, version).await?
                    };
                    let text = envelope::decrypt_field(&key, self.ctx(record_id, k), s)
                        .map_err(|_| tampered("a protected field"))?;
                    let value: Value =
                        serde_json::from_str(&text).map_err(|_| tampered("a protected field"))?;
                    plain.insert(k.clone(), value);
                }
                _ => {
                    plain.insert(k.clone(), v.clone());
                }
            }
        }
        Ok(plain)
    }

    /// Plain data → what this reader sees, as the access policy decides
    /// field by field: fields above the reader's level withheld (and named
    /// as such), protected values masked unless revealed by someone who
    /// may.
    pub fn present(
        &self,
        plain: RecordData,
        reveal: &Reveal,
        profile: &Profile,
        record: RecordFacts,
    ) -> Presented {
        let mut p = Presented::default();
        for f in &self.record_type.fields {
            if profile.field_access(&self.record_type.key, f, record, false)
                == FieldAccess::Withheld
            {
                p.withheld.push(f.key.clone());
            }
        }
        for (k, v) in plain {
            let Some(f) = self.record_type.fields.iter().find(|f| f.key == k) else {
                p.data.insert(k, v);
                continue;
            };
            match profile.field_access(&self.record_type.key, f, record, reveal.wants(&k)) {
                FieldAccess::Withheld => {}
                FieldAccess::Visible => {
                    if is_protected(f) {
                        p.revealed.push(k.clone());
                    }
                    p.data.insert(k, v);
                }
                FieldAccess::Masked => {
                    let text = index_text(&v).unwrap_or_default();
                    p.masked.push(k.clone());
                    p.data.insert(k, Value::String(mask(f, &text)));
                }
            }
        }
        p
    }
}

/// A record's data as one reader sees it.
#[derive(Debug, Default)]
pub struct Presented {
    pub data: RecordData,
    pub masked: Vec<String>,
    pub revealed: Vec<String>,
    pub withheld: Vec<String>,
}
