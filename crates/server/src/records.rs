//! Record types and records: create, read, update, soft delete, restore,
//! list with filters and pagination, history.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;
use strongroom_core::catalogue::RecordTypeDef;
use strongroom_core::pii::is_protected;
use strongroom_core::policy::{Action, Denial, FieldAccess, Profile, RecordFacts};
use strongroom_core::record::{self, apply_patch, normalise_value};
use strongroom_core::{ident, CompanyId};
use strongroom_proto::{
    AddFields, ChangeKind, CreateRecord, CreateRecordType, DeletedFilter, ErrorBody, ErrorCode,
    FieldType, Page, RecordData, RecordTypeView, RecordVersionView, RecordView, RestoreRecord,
    UpdateRecord,
};
use strongroom_store::{RecordQuery, RecordWrite, StoredRecord, StoredRecordType};

use crate::access::{denied, profile};
use crate::admin::department_id;
use crate::audit;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ClientInfo, OptionalJson};
use crate::sealing::{Reveal, Sealer};
use crate::state::AppState;

pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 500;
const MAX_FILTERS: usize = 8;

async fn record_type(
    state: &AppState,
    company: CompanyId,
    key: &str,
    epoch: Option<i64>,
) -> ApiResult<StoredRecordType> {
    let key = ident::key("record type", key).map_err(|_| ApiError::not_found("record type"))?;
    state
        .policy
        .record_types
        .get_or_load(
            (company.0, key.clone()),
            epoch,
            state.store.record_type(company, &key),
        )
        .await?
        .ok_or_else(|| ApiError::not_found("record type"))
}

async fn find_record(
    state: &AppState,
    company: CompanyId,
    rt: &StoredRecordType,
    id: &str,
) -> ApiResult<StoredRecord> {
    // Ids are UUIDs; anything else cannot exist, and is not worth a query.
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(ApiError::not_found("record"));
    }
    state
        .store
        .record(company, rt, id)
        .await?
        .ok_or_else(|| ApiError::not_found("record"))
}

// ----- record types ------------------------------------------------------

/// All record types of the company, with their fields.
#[utoipa::path(get, path = "/api/v1/record-types", tag = "record types",
    responses((status = 200, body = [RecordTypeView]), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_types(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<RecordTypeView>>> {
    let prof = profile(&state, &caller).await?;
    // Security administrators see every type (to manage them); others the
    // types they may view.
    let all = prof
        .has_power(strongroom_core::policy::Power::Security)
        .is_ok();
    Ok(Json(
        state
            .store
            .list_record_types(caller.principal.company)
            .await?
            .into_iter()
            .filter(|t| {
                all || prof
                    .decide_type(&t.key, t.classification, Action::View)
                    .is_ok()
            })
            .collect(),
    ))
}

/// One record type.
#[utoipa::path(get, path = "/api/v1/record-types/{type}", tag = "record types",
    params(("type" = String, Path, description = "Record type key, e.g. customer")),
    responses((status = 200, body = RecordTypeView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_type(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> ApiResult<Json<RecordTypeView>> {
    let prof = profile(&state, &caller).await?;
    let rt = record_type(&state, caller.principal.company, &key, caller.epoch).await?;
    let all = prof
        .has_power(strongroom_core::policy::Power::Security)
        .is_ok();
    if !all
        && prof
            .decide_type(&rt.view.key, rt.view.classification, Action::View)
            .is_err()
    {
        return Err(ApiError::not_found("record type"));
    }
    Ok(Json(rt.view))
}

/// Define a new record type (administrators).
#[utoipa::path(post, path = "/api/v1/record-types", tag = "record types",
    request_body = CreateRecordType,
    responses((status = 201, body = RecordTypeView), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_type(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    ApiJson(req): ApiJson<CreateRecordType>,
) -> ApiResult<(StatusCode, Json<RecordTypeView>)> {
    let what = format!(
        "record_type/{}",
        req.key.chars().take(64).collect::<String>()
    );
    let auth = audit::require_admin(&state, &caller, &client, "record_type.create", &what).await?;
    let def = RecordTypeDef {
        key: req.key.trim().to_owned(),
        name: req.name.trim().to_owned(),
        classification: req.classification,
        fields: req.fields,
    };
    record::check_type_def(&def)?;
    state
        .store
        .create_record_type(auth.company(), &def, state.clock.now())
        .await?;
    let rt = record_type(&state, auth.company(), &def.key, None).await?;
    audit::record(
        &state,
        &caller,
        &client,
        "record_type.create",
        &format!("record_type/{}", rt.view.key),
        serde_json::json!({ "fields": rt.view.fields.iter().map(|f| &f.key).collect::<Vec<_>>() }),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(rt.view)))
}

/// Add fields to a record type (administrators). Existing fields are never
/// changed, so stored records stay valid; new fields cannot be required.
#[utoipa::path(post, path = "/api/v1/record-types/{type}/fields", tag = "record types",
    params(("type" = String, Path)),
    request_body = AddFields,
    responses((status = 200, body = RecordTypeView), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn add_fields(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(key): Path<String>,
    ApiJson(req): ApiJson<AddFields>,
) -> ApiResult<Json<RecordTypeView>> {
    let what = format!("record_type/{}", key.chars().take(64).collect::<String>());
    let auth =
        audit::require_admin(&state, &caller, &client, "record_type.add_fields", &what).await?;
    let rt = record_type(&state, auth.company(), &key, None).await?;
    if let Some(f) = req.fields.iter().find(|f| f.required) {
        return Err(ApiError::new(
            ErrorCode::ValidationFailed,
            format!(
                "new field '{}' cannot be required: existing records have no value for it",
                f.key
            ),
        ));
    }
    record::check_new_fields(&rt.view.fields, &req.fields)?;
    state
        .store
        .add_fields(auth.company(), &rt, &req.fields)
        .await?;
    audit::record(
        &state,
        &caller,
        &client,
        "record_type.add_fields",
        &format!("record_type/{}", rt.view.key),
        serde_json::json!({ "fields": req.fields.iter().map(|f| &f.key).collect::<Vec<_>>() }),
    )
    .await?;
    Ok(Json(
        record_type(&state, auth.company(), &key, None).await?.view,
    ))
}

// ----- records -------------------------------------------------------------

/// Query string of a record list. Filters are `f.<field>=<value>` (exact
/// match), at most 8.
#[derive(Debug, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Records per page, 1 to 500 (default 50).
    #[allow(dead_code)]
    limit: Option<u32>,
    /// `next_cursor` from the previous page.
    #[allow(dead_code)]
    cursor: Option<String>,
    /// `exclude` (default), `include` or `only`.
    #[allow(dead_code)]
    deleted: Option<DeletedFilter>,
}

/// Exact values that protected-field filters must match after opening.
type ExactMatches = Vec<(String, Value)>;

fn parse_list_query(
    rt: &StoredRecordType,
    sealer: &Sealer<'_>,
    pairs: Vec<(String, String)>,
) -> ApiResult<(RecordQuery, ExactMatches)> {
    let mut exact = ExactMatches::new();
    let mut q = RecordQuery {
        limit: DEFAULT_PAGE,
        ..Default::default()
    };
    for (k, v) in pairs {
        match k.as_str() {
            "limit" => {
                q.limit = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit must be a number from 1 to {MAX_PAGE}"
                        ))
                    })?;
            }
            "cursor" => q.after = Some(decode_cursor(&v)?),
            "deleted" => {
                q.deleted = match v.as_str() {
                    "exclude" => DeletedFilter::Exclude,
                    "include" => DeletedFilter::Include,
                    "only" => DeletedFilter::Only,
                    _ => {
                        return Err(ApiError::bad_request(
                            "deleted must be exclude, include or only",
                        ))
                    }
                }
            }
            _ => {
                let Some(field_key) = k.strip_prefix("f.") else {
                    return Err(ApiError::bad_request(format!(
                        "unknown query parameter '{}'; use limit, cursor, deleted or f.<field>=<value>",
                        k.chars().take(64).collect::<String>()
                    )));
                };
                let field = rt
                    .view
                    .fields
                    .iter()
                    .find(|f| f.key == field_key)
                    .ok_or_else(|| {
                        ApiError::new(
                            ErrorCode::UnknownField,
                            format!(
                                "record type '{}' has no field '{}'",
                                rt.view.key,
                                field_key.chars().take(64).collect::<String>()
                            ),
                        )
                    })?;
                let raw = match field.field_type {
                    FieldType::Integer => v
                        .parse::<i64>()
                        .map(Value::from)
                        .unwrap_or(Value::String(v.clone())),
                    FieldType::Boolean => v
                        .parse::<bool>()
                        .map(Value::Bool)
                        .unwrap_or(Value::String(v.clone())),
                    _ => Value::String(v.clone()),
                };
                // Filter values are normalised exactly as stored values are.
                let value = normalise_value(field, &raw)?;
                let text = sealer.index_value(field, &value).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "filter value for '{}' is too long to match",
                        field.key
                    ))
                })?;
                if is_protected(field) {
                    exact.push((field.key.clone(), value));
                }
                q.equals.push((field.key.clone(), text));
                if q.equals.len() > MAX_FILTERS {
                    return Err(ApiError::bad_request(format!(
                        "at most {MAX_FILTERS} filters at once"
                    )));
                }
            }
        }
    }
    Ok((q, exact))
}

fn encode_cursor(id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("r{id}"))
}

fn decode_cursor(s: &str) -> ApiResult<i64> {
    let bad = || {
        ApiError::bad_request("cursor is not one this server gave out; start from the first page")
    };
    let bytes = URL_SAFE_NO_PAD.decode(s.as_bytes()).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    text.strip_prefix('r')
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|n| *n >= 0)
        .ok_or_else(bad)
}

/// The record `id` of the caller's company, or a recorded refusal: ids
/// that do not exist (or belong to another company) are what probing looks
/// like, so they reach the audit log and the detectors.
async fn found(
    state: &AppState,
    caller: &Caller,
    client: &ClientInfo,
    action: &str,
    rt: &StoredRecordType,
    id: &str,
) -> ApiResult<StoredRecord> {
    match find_record(state, caller.principal.company, rt, id).await {
        Ok(r) => Ok(r),
        Err(e) => {
            let target = format!(
                "{}/{}",
                rt.view.key,
                id.chars().take(64).collect::<String>()
            );
            Err(audit::refused(state, caller, client, action, &target, e).await)
        }
    }
}

/// The facts about a record that scope decisions look at.
fn facts(rec: &StoredRecord) -> RecordFacts {
    RecordFacts {
        department: rec.department_id,
        owner: rec.owner,
    }
}

/// Asks the policy whether the caller may do `action` on this record; a
/// refusal is recorded with its reason. A record outside the caller's
/// scope answers 404, as if it did not exist.
#[allow(clippy::too_many_arguments)]
async fn decide(
    state: &AppState,
    caller: &Caller,
    client: &ClientInfo,
    prof: &Profile,
    rt: &StoredRecordType,
    action: Action,
    audit_action: &str,
    rec: &StoredRecord,
) -> ApiResult<()> {
    match prof.decide_record(&rt.view.key, rt.view.classification, action, facts(rec)) {
        Ok(()) => Ok(()),
        Err(why) => {
            let target = format!("{}/{}", rt.view.key, rec.view.id);
            let e = denied(state, caller, client, audit_action, &target, why).await;
            Err(
                if why == Denial::OutOfScope && e.code == ErrorCode::Forbidden {
                    ApiError::not_found("record")
                } else {
                    e
                },
            )
        }
    }
}

/// Type-level check (may the caller do `action` on some record of this
/// type), recorded when refused.
async fn decide_type(
    state: &AppState,
    caller: &Caller,
    client: &ClientInfo,
    prof: &Profile,
    rt: &StoredRecordType,
    action: Action,
    audit_action: &str,
) -> ApiResult<()> {
    match prof.decide_type(&rt.view.key, rt.view.classification, action) {
        Ok(()) => Ok(()),
        Err(why) => Err(denied(state, caller, client, audit_action, &rt.view.key, why).await),
    }
}

/// A write may not touch a field the writer cannot see.
#[allow(clippy::too_many_arguments)]
async fn check_writable(
    state: &AppState,
    caller: &Caller,
    client: &ClientInfo,
    prof: &Profile,
    rt: &StoredRecordType,
    audit_action: &str,
    fields: impl Iterator<Item = &String>,
    record: RecordFacts,
) -> ApiResult<()> {
    for k in fields {
        if let Some(f) = rt.view.fields.iter().find(|f| &f.key == k) {
            if prof.field_access(&rt.view.key, f, record, false) == FieldAccess::Withheld {
                return Err(denied(
                    state,
                    caller,
                    client,
                    audit_action,
                    &format!("{}/{}", rt.view.key, f.key),
                    Denial::AboveClearance,
                )
                .await);
            }
        }
    }
    Ok(())
}

/// Opens a stored record and shapes it for the caller.
async fn shown(
    state: &AppState,
    sealer: &Sealer<'_>,
    company: CompanyId,
    prof: &Profile,
    rec: &StoredRecord,
    reveal: &Reveal,
) -> ApiResult<RecordView> {
    let plain = sealer
        .open(&state.keys, company, &rec.view.id, &rec.view.data)
        .await?;
    let p = sealer.present(plain, reveal, prof, facts(rec));
    Ok(RecordView {
        data: p.data,
        masked: p.masked,
        revealed: p.revealed,
        withheld: p.withheld,
        ..rec.view.clone()
    })
}

/// List records of a type, in creation order, a page at a time. Protected
/// fields come masked; filters on them go through blind indexes.
#[utoipa::path(get, path = "/api/v1/records/{type}", tag = "records",
    params(("type" = String, Path), ListParams,
        ("f.<field>" = Option<String>, Query, description = "Exact-match filter on a field, e.g. f.email=a@b.co or f.national_id=079201001234")),
    responses((status = 200, body = Page<RecordView>), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(type_key): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Page<RecordView>>> {
    let p = &caller.principal;
    let rt = record_type(&state, p.company, &type_key, caller.epoch).await?;
    let prof = profile(&state, &caller).await?;
    let action = if pairs.iter().any(|(k, _)| k.starts_with("f.")) {
        "record.search"
    } else {
        "record.list"
    };
    let scope = match prof.list_scope(&rt.view.key, rt.view.classification, Action::View) {
        Ok(s) => s,
        Err(why) => return Err(denied(&state, &caller, &client, action, &rt.view.key, why).await),
    };
    let sealer = Sealer::for_request(&state, &caller, &rt.view).await?;
    let (mut q, exact) = parse_list_query(&rt, &sealer, pairs)?;
    // Searching by a field one may not see would tell its values.
    let filtered: Vec<String> = q.equals.iter().map(|(f, _)| f.clone()).collect();
    let anyone = RecordFacts {
        department: None,
        owner: p.user,
    };
    check_writable(
        &state,
        &caller,
        &client,
        &prof,
        &rt,
        action,
        filtered.iter(),
        anyone,
    )
    .await?;
    q.only = scope.as_filter();
    let (stored, next) = state.store.list_records(p.company, &rt, &q).await?;
    let mut items = Vec::with_capacity(stored.len());
    'records: for rec in stored {
        // The store filtered by scope; the policy has the last word on
        // every record all the same.
        if prof
            .decide_record(
                &rt.view.key,
                rt.view.classification,
                Action::View,
                facts(&rec),
            )
            .is_err()
        {
            continue;
        }
        let plain = sealer
            .open(&state.keys, p.company, &rec.view.id, &rec.view.data)
            .await?;
        // A blind index is short on purpose, so it can match a few other
        // values: compare the opened values exactly.
        for (field, want) in &exact {
            if plain.get(field) != Some(want) {
                continue 'records;
            }
        }
        let shaped = sealer.present(plain, &Reveal::None, &prof, facts(&rec));
        items.push(RecordView {
            data: shaped.data,
            masked: shaped.masked,
            revealed: shaped.revealed,
            withheld: shaped.withheld,
            ..rec.view
        });
    }
    audit::record(
        &state,
        &caller,
        &client,
        action,
        &rt.view.key,
        serde_json::json!({
            "records": items.iter().map(|r| &r.id).collect::<Vec<_>>(),
            "filters": q.equals.iter().map(|(f, _)| f).collect::<Vec<_>>(),
            "masked": items.first().map(|r| r.masked.clone()).unwrap_or_default(),
        }),
    )
    .await?;
    Ok(Json(Page {
        items,
        next_cursor: next.map(encode_cursor),
    }))
}

/// The most records one export returns.
pub const MAX_EXPORT: usize = 100_000;

/// Export every record of a type that the caller may export, as JSON Lines
/// (one record per line, shaped like a read: masked, withheld). Needs the
/// `export` action; audited with the count.
#[utoipa::path(get, path = "/api/v1/records/{type}/export", tag = "records",
    params(("type" = String, Path)),
    responses((status = 200, description = "JSON Lines, one RecordView per line", content_type = "application/x-ndjson"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, description = "More records than one export returns", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn export(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(type_key): Path<String>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let p = &caller.principal;
    let rt = record_type(&state, p.company, &type_key, caller.epoch).await?;
    let prof = profile(&state, &caller).await?;
    let scope = match prof.list_scope(&rt.view.key, rt.view.classification, Action::Export) {
        Ok(s) => s,
        Err(why) => {
            return Err(denied(&state, &caller, &client, "record.export", &rt.view.key, why).await)
        }
    };
    let sealer = Sealer::for_request(&state, &caller, &rt.view).await?;
    let mut q = RecordQuery {
        limit: MAX_PAGE,
        only: scope.as_filter(),
        ..Default::default()
    };
    let mut body = Vec::new();
    let mut count = 0usize;
    loop {
        let (page, next) = state.store.list_records(p.company, &rt, &q).await?;
        for rec in page {
            if prof
                .decide_record(
                    &rt.view.key,
                    rt.view.classification,
                    Action::Export,
                    facts(&rec),
                )
                .is_err()
            {
                continue;
            }
            count += 1;
            if count > MAX_EXPORT {
                return Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("more than {MAX_EXPORT} records; export a narrower set by listing with filters"),
                ));
            }
            let view = shown(&state, &sealer, p.company, &prof, &rec, &Reveal::None).await?;
            serde_json::to_writer(&mut body, &view).map_err(ApiError::internal)?;
            body.push(b'\n');
        }
        match next {
            Some(n) => q.after = Some(n),
            None => break,
        }
    }
    // The export is recorded before any of it leaves the server.
    audit::record(
        &state,
        &caller,
        &client,
        "record.export",
        &rt.view.key,
        serde_json::json!({ "records": count }),
    )
    .await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        body,
    )
        .into_response())
}

/// Create a record. National ID, bank account and card numbers (and every
/// restricted field) are checked, normalised and encrypted before storage.
#[utoipa::path(post, path = "/api/v1/records/{type}", tag = "records",
    params(("type" = String, Path)),
    request_body = CreateRecord,
    responses((status = 201, body = RecordView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path(type_key): Path<String>,
    ApiJson(req): ApiJson<CreateRecord>,
) -> ApiResult<(StatusCode, Json<RecordView>)> {
    let p = &caller.principal;
    let rt = record_type(&state, p.company, &type_key, caller.epoch).await?;
    let prof = profile(&state, &caller).await?;
    decide_type(
        &state,
        &caller,
        &client,
        &prof,
        &rt,
        Action::Create,
        "record.create",
    )
    .await?;
    let department = match &req.department {
        Some(code) => Some(department_id(&state, p.company, code).await?),
        None => prof.department,
    };
    // The new record must fall inside the creator's scope (a department
    // grant creates in one's own department only).
    let new_facts = RecordFacts {
        department,
        owner: p.user,
    };
    if let Err(why) = prof.decide_record(
        &rt.view.key,
        rt.view.classification,
        Action::Create,
        new_facts,
    ) {
        return Err(denied(&state, &caller, &client, "record.create", &rt.view.key, why).await);
    }
    check_writable(
        &state,
        &caller,
        &client,
        &prof,
        &rt,
        "record.create",
        req.data.keys(),
        new_facts,
    )
    .await?;
    let plain = apply_patch(&rt.view.fields, &RecordData::new(), &req.data)?;
    let sealer = Sealer::for_request(&state, &caller, &rt.view).await?;
    let id = uuid::Uuid::new_v4().to_string();
    let (stored, index) = sealer.seal(&id, &plain)?;
    let event = audit::event(
        &state,
        &caller,
        &client,
        "record.create",
        &format!("{}/{id}", rt.view.key),
        serde_json::json!({ "fields": plain.keys().collect::<Vec<_>>() }),
    );
    let rec = state
        .store
        .insert_record(
            p.company,
            &rt,
            &id,
            department,
            &stored,
            &index,
            p.user,
            std::slice::from_ref(&event),
            state.clock.now(),
        )
        .await?;
    state.detection.feed(vec![event]);
    let view = shown(&state, &sealer, p.company, &prof, &rec, &Reveal::None).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Read one record. Protected fields come masked; `?reveal=national_id,card_number`
/// (or `reveal=all`) shows them in full to administrators, and is audited.
/// A soft-deleted record answers 404 unless `?deleted=include`.
#[utoipa::path(get, path = "/api/v1/records/{type}/{id}", tag = "records",
    params(("type" = String, Path), ("id" = String, Path),
        ("deleted" = Option<String>, Query, description = "`include` to read a soft-deleted record"),
        ("reveal" = Option<String>, Query, description = "Protected fields to show in full, comma-separated, or `all` (administrators; audited)")),
    responses((status = 200, body = RecordView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path((type_key, id)): Path<(String, String)>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<RecordView>> {
    let mut include_deleted = false;
    let mut reveal = Reveal::None;
    for (k, v) in &pairs {
        match (k.as_str(), v.as_str()) {
            ("deleted", "include") => include_deleted = true,
            ("deleted", "exclude") => {}
            ("reveal", fields) => reveal = Reveal::parse(fields),
            _ => {
                return Err(ApiError::bad_request(
                    "the query parameters here are deleted=include and reveal=<fields>",
                ))
            }
        }
    }
    let p = &caller.principal;
    let rt = record_type(&state, p.company, &type_key, caller.epoch).await?;
    let rec = found(&state, &caller, &client, "record.read", &rt, &id).await?;
    if rec.view.deleted_at.is_some() && !include_deleted {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "record is deleted; read it with ?deleted=include or restore it with POST .../restore",
        ));
    }
    let target = format!("{}/{}", rt.view.key, rec.view.id);
    let prof = profile(&state, &caller).await?;
    decide(
        &state,
        &caller,
        &client,
        &prof,
        &rt,
        Action::View,
        "record.read",
        &rec,
    )
    .await?;
    if !reveal.is_none() && !prof.may_reveal(&rt.view.key, facts(&rec)) {
        let e = ApiError::new(
            ErrorCode::Forbidden,
            "you may not reveal protected fields; ask without ?reveal to see them masked",
        );
        return Err(audit::refused(&state, &caller, &client, "record.reveal", &target, e).await);
    }
    let sealer = Sealer::for_request(&state, &caller, &rt.view).await?;
    let view = shown(&state, &sealer, p.company, &prof, &rec, &reveal).await?;
    // The read (and any reveal) is recorded before the values leave the server.
    audit::record(
        &state,
        &caller,
        &client,
        if view.revealed.is_empty() {
            "record.read"
        } else {
            "record.reveal"
        },
        &target,
        serde_json::json!({
            "returned": view.data.keys().collect::<Vec<_>>(),
            "masked": view.masked,
            "revealed": view.revealed,
            "withheld": view.withheld,
        }),
    )
    .await?;
    Ok(Json(view))
}

/// Change a record (merge patch). Every change keeps the earlier version.
#[utoipa::path(patch, path = "/api/v1/records/{type}/{id}", tag = "records",
    params(("type" = String, Path), ("id" = String, Path)),
    request_body = UpdateRecord,
    responses((status = 200, body = RecordView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path((type_key, id)): Path<(String, String)>,
    ApiJson(req): ApiJson<UpdateRecord>,
) -> ApiResult<Json<RecordView>> {
    let p = &caller.principal;
    let rt = record_type(&state, p.company, &type_key, caller.epoch).await?;
    let rec = found(&state, &caller, &client, "record.update", &rt, &id).await?;
    let prof = profile(&state, &caller).await?;
    decide(
        &state,
        &caller,
        &client,
        &prof,
        &rt,
        Action::Edit,
        "record.update",
        &rec,
    )
    .await?;
    check_writable(
        &state,
        &caller,
        &client,
        &prof,
        &rt,
        "record.update",
        req.data.keys(),
        facts(&rec),
    )
    .await?;
    if rec.view.deleted_at.is_some() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "record is deleted; restore it first (POST .../restore)",
        ));
    }
    if let Some(v) = req.expected_version {
        if v != rec.view.version {
            return Err(ApiError::new(
                ErrorCode::VersionConflict,
                format!(
                    "the record is at version {}, not {v}; read it again and reapply your change",
                    rec.view.version
                ),
            ));
        }
    }
    let sealer = Sealer::for_request(&state, &caller, &rt.view).await?;
    let current = sealer
        .open(&state.keys, p.company, &rec.view.id, &rec.view.data)
        .await?;
    let data = apply_patch(&rt.view.fields, &current, &req.data)?;
    let changed: Vec<&String> = req.data.keys().collect();
    write(
        &state,
        &caller,
        &client,
        &prof,
        serde_json::json!({ "fields": changed }),
        &rt,
        &sealer,
        &rec,
        &data,
        None,
        ChangeKind::Update,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn write(
    state: &AppState,
    caller: &Caller,
    client: &ClientInfo,
    prof: &Profile,
    detail: serde_json::Value,
    rt: &StoredRecordType,
    sealer: &Sealer<'_>,
    rec: &StoredRecord,
    plain: &RecordData,
    deleted_at: Option<chrono::DateTime<chrono::Utc>>,
    kind: ChangeKind,
) -> ApiResult<Json<RecordView>> {
    let p = &caller.principal;
    let (stored, index) = sealer.seal(&rec.view.id, plain)?;
    let event = audit::event(
        state,
        caller,
        client,
        &format!("record.{}", kind.as_str()),
        &format!("{}/{}", rt.view.key, rec.view.id),
        detail,
    );
    let after = state
        .store
        .write_record(
            p.company,
            rt,
            rec,
            rec.view.version,
            RecordWrite {
                data: &stored,
                audit: std::slice::from_ref(&event),
                index: &index,
                deleted_at,
                kind,
                actor: p.user,
                now: state.clock.now(),
            },
        )
        .await?;
    state.detection.feed(vec![event]);
    Ok(Json(
        shown(state, sealer, p.company, prof, &after, &Reveal::None).await?,
    ))
}

/// Soft-delete a record. It stays in history and can be restored.
#[utoipa::path(delete, path = "/api/v1/records/{type}/{id}", tag = "records",
    params(("type" = String, Path), ("id" = String, Path)),
    responses((status = 200, description = "The deleted record", body = RecordView),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path((type_key, id)): Path<(String, String)>,
) -> ApiResult<Json<RecordView>> {
    let p = &caller.principal;
    let rt = record_type(&state, p.company, &type_key, caller.epoch).await?;
    let rec = found(&state, &caller, &client, "record.delete", &rt, &id).await?;
    let prof = profile(&state, &caller).await?;
    decide(
        &state,
        &caller,
        &client,
        &prof,
        &rt,
        Action::Delete,
        "record.delete",
        &rec,
    )
    .await?;
    if rec.view.deleted_at.is_some() {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "record is already deleted",
        ));
    }
    let sealer = Sealer::for_request(&state, &caller, &rt.view).await?;
    let plain = sealer
        .open(&state.keys, p.company, &rec.view.id, &rec.view.data)
        .await?;
    let now = state.clock.now();
    write(
        &state,
        &caller,
        &client,
        &prof,
        serde_json::json!({}),
        &rt,
        &sealer,
        &rec,
        &plain,
        Some(now),
        ChangeKind::Delete,
    )
    .await
}

/// Every version of a record, oldest first (protected fields masked).
#[utoipa::path(get, path = "/api/v1/records/{type}/{id}/history", tag = "records",
    params(("type" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = [RecordVersionView]), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path((type_key, id)): Path<(String, String)>,
) -> ApiResult<Json<Vec<RecordVersionView>>> {
    let p = &caller.principal;
    let rt = record_type(&state, p.company, &type_key, caller.epoch).await?;
    let rec = found(&state, &caller, &client, "record.history", &rt, &id).await?;
    let prof = profile(&state, &caller).await?;
    decide(
        &state,
        &caller,
        &client,
        &prof,
        &rt,
        Action::View,
        "record.history",
        &rec,
    )
    .await?;
    let sealer = Sealer::for_request(&state, &caller, &rt.view).await?;
    let mut out = Vec::new();
    for mut v in state.store.record_history(p.company, &rec).await? {
        let plain = sealer
            .open(&state.keys, p.company, &rec.view.id, &v.data)
            .await?;
        let shaped = sealer.present(plain, &Reveal::None, &prof, facts(&rec));
        v.data = shaped.data;
        v.masked = shaped.masked;
        v.revealed = shaped.revealed;
        v.withheld = shaped.withheld;
        out.push(v);
    }
    audit::record(
        &state,
        &caller,
        &client,
        "record.history",
        &format!("{}/{}", rt.view.key, rec.view.id),
        serde_json::json!({ "versions": out.len() }),
    )
    .await?;
    Ok(Json(out))
}

/// Undo: bring back a soft-deleted record, or (with `version`) set a record
/// back to an earlier version. Either way a new version is written.
#[utoipa::path(post, path = "/api/v1/records/{type}/{id}/restore", tag = "records",
    params(("type" = String, Path), ("id" = String, Path)),
    request_body(content = RestoreRecord, description = "Optional; empty body undeletes"),
    responses((status = 200, body = RecordView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn restore(
    State(state): State<AppState>,
    caller: Caller,
    client: ClientInfo,
    Path((type_key, id)): Path<(String, String)>,
    OptionalJson(req): OptionalJson<RestoreRecord>,
) -> ApiResult<Json<RecordView>> {
    let p = &caller.principal;
    let rt = record_type(&state, p.company, &type_key, caller.epoch).await?;
    let rec = found(&state, &caller, &client, "record.restore", &rt, &id).await?;
    let prof = profile(&state, &caller).await?;
    // Undeleting needs the right to delete; going back to a version, the
    // right to edit (and to see every field it sets).
    let action = if req.version.is_none() {
        Action::Delete
    } else {
        Action::Edit
    };
    decide(
        &state,
        &caller,
        &client,
        &prof,
        &rt,
        action,
        "record.restore",
        &rec,
    )
    .await?;
    if req.version.is_some() {
        let every: Vec<String> = rt.view.fields.iter().map(|f| f.key.clone()).collect();
        check_writable(
            &state,
            &caller,
            &client,
            &prof,
            &rt,
            "record.restore",
            every.iter(),
            facts(&rec),
        )
        .await?;
    }
    let sealer = Sealer::for_request(&state, &caller, &rt.view).await?;
    match req.version {
        None => {
            if rec.view.deleted_at.is_none() {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    "record is not deleted; to go back to an earlier version send {\"version\": N}",
                ));
            }
            let plain = sealer
                .open(&state.keys, p.company, &rec.view.id, &rec.view.data)
                .await?;
            write(
                &state,
                &caller,
                &client,
                &prof,
                serde_json::json!({}),
                &rt,
                &sealer,
                &rec,
                &plain,
                None,
                ChangeKind::Restore,
            )
            .await
        }
        Some(v) => {
            let versions = state.store.record_history(p.company, &rec).await?;
            let old = versions
                .into_iter()
                .find(|x| x.version == v)
                .ok_or_else(|| ApiError::not_found("version"))?;
            let old_plain = sealer
                .open(&state.keys, p.company, &rec.view.id, &old.data)
                .await?;
            // The type may have gained fields since; the old data must still
            // satisfy today's rules.
            let data =
                apply_patch(&rt.view.fields, &RecordData::new(), &old_plain).map_err(|e| {
                    ApiError::new(
                        ErrorCode::Conflict,
                        format!("version {v} no longer fits the record type: {e}"),
                    )
                })?;
            write(
                &state,
                &caller,
                &client,
                &prof,
                serde_json::json!({ "to_version": v }),
                &rt,
                &sealer,
                &rec,
                &data,
                None,
                ChangeKind::Revert,
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        assert_eq!(decode_cursor(&encode_cursor(42)).unwrap(), 42);
        assert!(decode_cursor("!!").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("r-5")).is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("x5")).is_err());
    }
}
