//! Re-encryption after a data-key rotation: moves every stored protected
//! value (records and their history) to the newest data key. Resumable: the
//! progress is in the store. Safe beside live writes: each record is
//! replaced only if unchanged since it was read, and retried otherwise.

use std::collections::HashMap;

use anyhow::Context;
use serde_json::Value;
use strongroom_core::pii::is_protected;
use strongroom_core::CompanyId;
use strongroom_crypto::envelope::stored_version;
use strongroom_proto::{RecordData, RecordTypeView};
use strongroom_store::{KeyPurpose, Rotation, Store};

use crate::keys::KeyRing;
use crate::sealing::Sealer;

const BATCH: i64 = 200;

/// Progress of one company's re-encryption, for reports.
#[derive(Debug, Clone)]
pub struct Progress {
    pub company: String,
    pub to_version: i64,
    pub records_done: i64,
    pub records_total: i64,
}

/// True when some protected value in `data` is not sealed under `version`
/// (older key, or stored in the clear by an older Strongroom).
fn needs_work(rt: &RecordTypeView, data: &RecordData, version: i64) -> bool {
    data.iter().any(|(k, v)| {
        rt.fields.iter().any(|f| &f.key == k && is_protected(f))
            && v.as_str().and_then(stored_version) != Some(version)
    })
}

/// Opens stored data that may hold values in the clear (legacy) as well as
/// sealed ones.
async fn open_lenient(
    sealer: &Sealer<'_>,
    keys: &KeyRing,
    company: CompanyId,
    record_id: &str,
    data: &RecordData,
) -> anyhow::Result<RecordData> {
    let mut sealed = RecordData::new();
    let mut plain = RecordData::new();
    for (k, v) in data {
        if v.as_str().and_then(stored_version).is_some() {
            sealed.insert(k.clone(), v.clone());
        } else {
            plain.insert(k.clone(), v.clone());
        }
    }
    let opened = sealer
        .open(keys, company, record_id, &sealed)
        .await
        .map_err(|e| anyhow::anyhow!("record {record_id}: {}", e.message))?;
    plain.extend(opened);
    Ok(plain)
}

fn parse(text: &str) -> anyhow::Result<RecordData> {
    match serde_json::from_str::<Value>(text)? {
        Value::Object(m) => Ok(m),
        _ => anyhow::bail!("record data is not an object"),
    }
}

/// Runs every unfinished re-encryption to its end. `report` is called after
/// each batch.
pub async fn run_pending(
    store: &Store,
    keys: &KeyRing,
    now: impl Fn() -> chrono::DateTime<chrono::Utc>,
    mut report: impl FnMut(&Progress),
) -> anyhow::Result<usize> {
    let mut finished = 0;
    for rot in store.open_rotations().await? {
        run_one(store, keys, &rot, &mut report).await?;
        store
            .finish_rotation(rot.company, rot.to_version, now())
            .await?;
        finished += 1;
    }
    Ok(finished)
}

async fn run_one(
    store: &Store,
    keys: &KeyRing,
    rot: &Rotation,
    report: &mut impl FnMut(&Progress),
) -> anyhow::Result<()> {
    let company = rot.company;
    let code = store
        .company_code(company)
        .await?
        .context("company of a key rotation no longer exists")?;
    let total = store.count_records(company).await?;
    let mut types: HashMap<String, strongroom_store::StoredRecordType> = HashMap::new();
    let mut after = rot.after_record;
    let mut done = rot.records_done;
    // Passes repeat until one finds nothing to do: a write that began before
    // the rotation may have sealed a value under the old key behind us.
    let mut first_pass = true;
    loop {
        let mut changed_this_pass = 0;
        loop {
            let batch = store
                .records_for_reencryption(company, after, BATCH)
                .await?;
            let Some(last) = batch.last().map(|b| b.0) else {
                break;
            };
            let mut n = 0;
            for (id, type_key, public_id, _) in &batch {
                if !types.contains_key(type_key) {
                    let rt = store
                        .record_type(company, type_key)
                        .await?
                        .context("record type vanished")?;
                    types.insert(type_key.clone(), rt);
                }
                let rt = &types[type_key];
                if reencrypt_record(store, keys, company, &code, &rt.view, *id, public_id).await? {
                    changed_this_pass += 1;
                }
                n += 1;
            }
            after = last;
            if first_pass {
                done += n;
                store
                    .record_rotation_progress(company, rot.to_version, after, n)
                    .await?;
            }
            report(&Progress {
                company: code.clone(),
                to_version: rot.to_version,
                records_done: done.min(total),
                records_total: total,
            });
        }
        if !first_pass && changed_this_pass == 0 {
            return reseal_user_secrets(store, keys, company, &code).await;
        }
        first_pass = false;
        after = 0;
    }
}

/// Moves users' sealed secrets (TOTP secrets, passkeys) to the current
/// data key, so an older key version is truly unused when it is retired.
async fn reseal_user_secrets(
    store: &Store,
    keys: &KeyRing,
    company: CompanyId,
    code: &str,
) -> anyhow::Result<()> {
    use strongroom_crypto::envelope;
    use strongroom_store::KeyPurpose;
    let current = keys.current(company, KeyPurpose::Data).await?;
    for (kind, id, user, sealed) in store.sealed_user_secrets(company).await? {
        let Some(v) = envelope::stored_version(&sealed) else {
            anyhow::bail!("a sealed {kind} secret of user #{} is damaged", user.0);
        };
        if v == current.version() {
            continue;
        }
        let field = if kind == "totp" {
            "totp_secret"
        } else {
            "passkey"
        };
        let user_ref = user.0.to_string();
        let ctx = crate::second_factor::ctx(code, &user_ref, field);
        let old = keys.key(company, KeyPurpose::Data, v).await?;
        let plain = envelope::decrypt_field(&old, ctx, &sealed).map_err(|_| {
            anyhow::anyhow!("a sealed {kind} secret of user #{} does not open", user.0)
        })?;
        let fresh = envelope::encrypt_field(&current, ctx, &plain)?;
        store
            .reseal_user_secret(company, &kind, id, &sealed, &fresh)
            .await?;
    }
    Ok(())
}

/// Re-encrypts one record and its history. Returns whether anything changed.
async fn reencrypt_record(
    store: &Store,
    keys: &KeyRing,
    company: CompanyId,
    code: &str,
    rt: &RecordTypeView,
    id: i64,
    public_id: &str,
) -> anyhow::Result<bool> {
    for _attempt in 0..8 {
        let sealer = Sealer::new(keys, company, code, rt)
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
        let target = keys.current(company, KeyPurpose::Data).await?.version();
        let Some((_, _, _, text)) = store
            .records_for_reencryption(company, id - 1, 1)
            .await?
            .into_iter()
            .find(|r| r.0 == id)
        else {
            return Ok(false);
        };
        let data = parse(&text)?;
        let mut history = Vec::new();
        for (version, old) in store.versions_for_reencryption(company, id).await? {
            let vdata = parse(&old)?;
            if needs_work(rt, &vdata, target) {
                let plain = open_lenient(&sealer, keys, company, public_id, &vdata).await?;
                let (sealed, _) = sealer
                    .seal(public_id, &plain)
                    .map_err(|e| anyhow::anyhow!(e.message))?;
                history.push((version, old, serde_json::to_string(&sealed)?));
            }
        }
        if !needs_work(rt, &data, target) && history.is_empty() {
            return Ok(false);
        }
        let plain = open_lenient(&sealer, keys, company, public_id, &data).await?;
        let (sealed, index) = sealer
            .seal(public_id, &plain)
            .map_err(|e| anyhow::anyhow!(e.message))?;
        let new_text = serde_json::to_string(&sealed)?;
        if store
            .replace_sealed_data(company, id, &text, &new_text, &index, &history)
            .await?
        {
            return Ok(true);
        }
        // Changed under us by a live write: read again.
    }
    anyhow::bail!("record {public_id} kept changing during re-encryption; it will be retried")
}
