//! The router: routes, the OpenAPI document, and the layers every request
//! passes (request id, metrics, security headers, body limit, panics).

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use strongroom_proto::{ErrorCode, Health};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ApiError, REQUEST_ID};
use crate::extract::{ClientInfo, TrustedProxies};
use crate::metrics::RequestLabels;
use crate::state::AppState;
use crate::{
    access, admin, api_keys, audit, auth, hours, ip_rules, lockout, passkeys, passwords, records,
    second_factor, security, session_admin,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Strongroom API",
        description = "Secure records server for business applications. Errors carry a stable `code`, a `message` and a `request_id`.",
    ),
    paths(
        health, live,
        auth::login, auth::logout, auth::current_session,
        admin::company,
        admin::list_departments, admin::create_department, admin::update_department, admin::delete_department,
        admin::list_users, admin::create_user, admin::get_user, admin::update_user, admin::set_password, admin::delete_user,
        records::list_types, records::get_type, records::create_type, records::add_fields,
        records::list, records::create, records::get, records::update, records::delete,
        records::history, records::restore, records::export,
        audit::list_events,
        security::incidents, security::update_incident, security::detectors, security::set_detector,
        security::blocks, security::unblock, security::unlock,
        ip_rules::company_rules, ip_rules::set_company_rules, ip_rules::user_rules, ip_rules::set_user_rules,
        hours::company_hours, hours::set_company_hours, hours::set_user_hours,
        session_admin::own, session_admin::end_own, session_admin::of_user, session_admin::end_of_user,
        session_admin::policy, session_admin::set_policy,
        passwords::change_own, passwords::rules, passwords::set_rules,
        passwords::user_rules, passwords::set_user_rules, passwords::clear_user_rules,
        second_factor::answer, second_factor::status, second_factor::totp_begin,
        second_factor::totp_confirm, second_factor::renew_codes, second_factor::reset,
        second_factor::user_settings,
        passkeys::register_begin, passkeys::register_finish,
        lockout::get_policy, lockout::set_policy,
        api_keys::create, api_keys::list, api_keys::revoke,
        access::list_roles, access::put_role, access::delete_role,
        access::user_access, access::set_user_access, access::set_department_roles,
        access::my_access, access::get_pledge, access::publish_pledge, access::accept_pledge,
        access::training_policy, access::set_training_policy, access::set_training,
        access::training_due, access::set_classification,
    ),
    components(schemas(strongroom_proto::ErrorCode, strongroom_proto::ErrorBody)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The token from POST /api/v1/auth/login (or the __Host-strongroom_session cookie)",
                    ))
                    .build(),
            ),
        );
    }
}

pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

pub fn router(state: AppState, trusted: TrustedProxies, max_body_bytes: usize) -> Router {
    let limits = state.limits.clone();
    let api = Router::new()
        .route("/healthz", get(health))
        .route("/livez", get(live))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/auth/login", post(auth::login))
        .route("/api/v1/auth/logout", post(auth::logout))
        .route("/api/v1/auth/session", get(auth::current_session))
        .route("/api/v1/company", get(admin::company))
        .route(
            "/api/v1/departments",
            get(admin::list_departments).post(admin::create_department),
        )
        .route(
            "/api/v1/departments/{code}",
            axum::routing::patch(admin::update_department).delete(admin::delete_department),
        )
        .route(
            "/api/v1/users",
            get(admin::list_users).post(admin::create_user),
        )
        .route(
            "/api/v1/users/{user_id}",
            get(admin::get_user)
                .patch(admin::update_user)
                .delete(admin::delete_user),
        )
        .route(
            "/api/v1/users/{user_id}/password",
            post(admin::set_password),
        )
        .route(
            "/api/v1/record-types",
            get(records::list_types).post(records::create_type),
        )
        .route("/api/v1/record-types/{type}", get(records::get_type))
        .route(
            "/api/v1/record-types/{type}/fields",
            post(records::add_fields),
        )
        .route(
            "/api/v1/records/{type}",
            get(records::list).post(records::create),
        )
        .route(
            "/api/v1/records/{type}/{id}",
            get(records::get)
                .patch(records::update)
                .delete(records::delete),
        )
        .route("/api/v1/records/{type}/{id}/history", get(records::history))
        .route(
            "/api/v1/records/{type}/{id}/restore",
            post(records::restore),
        )
        .route("/api/v1/audit/events", get(audit::list_events))
        .route("/api/v1/auth/sessions", get(session_admin::own))
        .route("/api/v1/auth/password", post(passwords::change_own))
        .route(
            "/api/v1/security/password-rules",
            get(passwords::rules).put(passwords::set_rules),
        )
        .route(
            "/api/v1/auth/sessions/{id}",
            axum::routing::delete(session_admin::end_own),
        )
        .route(
            "/api/v1/users/{user_id}/sessions",
            get(session_admin::of_user).delete(session_admin::end_of_user),
        )
        .route(
            "/api/v1/security/session-policy",
            get(session_admin::policy).put(session_admin::set_policy),
        )
        .route(
            "/api/v1/security/access-hours",
            get(hours::company_hours).put(hours::set_company_hours),
        )
        .route(
            "/api/v1/users/{user_id}/access-hours",
            axum::routing::put(hours::set_user_hours),
        )
        .route("/api/v1/security/incidents", get(security::incidents))
        .route(
            "/api/v1/security/ip-rules",
            get(ip_rules::company_rules).put(ip_rules::set_company_rules),
        )
        .route(
            "/api/v1/users/{user_id}/ip-rules",
            get(ip_rules::user_rules).put(ip_rules::set_user_rules),
        )
        .route(
            "/api/v1/security/incidents/{id}",
            axum::routing::patch(security::update_incident),
        )
        .route("/api/v1/security/detectors", get(security::detectors))
        .route(
            "/api/v1/security/detectors/{detector}",
            axum::routing::put(security::set_detector),
        )
        .route("/api/v1/security/blocks", get(security::blocks))
        .route(
            "/api/v1/security/blocks/{address}",
            axum::routing::delete(security::unblock),
        )
        .route("/api/v1/users/{user_id}/unlock", post(security::unlock))
        .route(
            "/api/v1/auth/login/second-factor",
            post(second_factor::answer),
        )
        .route("/api/v1/auth/second-factor", get(second_factor::status))
        .route(
            "/api/v1/auth/second-factor/totp",
            post(second_factor::totp_begin),
        )
        .route(
            "/api/v1/auth/second-factor/totp/confirm",
            post(second_factor::totp_confirm),
        )
        .route(
            "/api/v1/auth/second-factor/recovery-codes",
            post(second_factor::renew_codes),
        )
        .route(
            "/api/v1/auth/second-factor/passkeys/begin",
            post(passkeys::register_begin),
        )
        .route(
            "/api/v1/auth/second-factor/passkeys/finish",
            post(passkeys::register_finish),
        )
        .route(
            "/api/v1/users/{user_id}/second-factor",
            axum::routing::delete(second_factor::reset),
        )
        .route(
            "/api/v1/users/{user_id}/sign-in",
            axum::routing::put(second_factor::user_settings),
        )
        .route(
            "/api/v1/users/{user_id}/password-rules",
            get(passwords::user_rules)
                .put(passwords::set_user_rules)
                .delete(passwords::clear_user_rules),
        )
        .route(
            "/api/v1/security/sign-in-policy",
            get(lockout::get_policy).put(lockout::set_policy),
        )
        .route("/api/v1/users/{user_id}/api-keys", post(api_keys::create))
        .route("/api/v1/security/api-keys", get(api_keys::list))
        .route(
            "/api/v1/security/api-keys/{id}",
            axum::routing::delete(api_keys::revoke),
        )
        .route("/api/v1/records/{type}/export", get(records::export))
        .route("/api/v1/roles", get(access::list_roles))
        .route(
            "/api/v1/roles/{name}",
            axum::routing::put(access::put_role).delete(access::delete_role),
        )
        .route(
            "/api/v1/users/{user_id}/access",
            get(access::user_access).put(access::set_user_access),
        )
        .route(
            "/api/v1/departments/{code}/roles",
            axum::routing::put(access::set_department_roles),
        )
        .route("/api/v1/auth/access", get(access::my_access))
        .route(
            "/api/v1/pledge",
            get(access::get_pledge).post(access::publish_pledge),
        )
        .route("/api/v1/pledge/accept", post(access::accept_pledge))
        .route(
            "/api/v1/security/training-policy",
            get(access::training_policy).put(access::set_training_policy),
        )
        .route(
            "/api/v1/users/{user_id}/training",
            axum::routing::put(access::set_training),
        )
        .route("/api/v1/security/training-due", get(access::training_due))
        .route(
            "/api/v1/record-types/{type}/classification",
            axum::routing::put(access::set_classification),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state);
    api.layer(tower_http::catch_panic::CatchPanicLayer::custom(
        panic_response,
    ))
    .layer(middleware::from_fn_with_state(
        limits,
        crate::limits::flood_guard,
    ))
    .layer(middleware::from_fn(request_id))
    .layer(Extension(trusted))
}

/// Gives every request an id (in the `x-request-id` response header and in
/// every error body), makes it available to the code that serves it, and
/// sets the security headers.
async fn request_id(req: Request, next: Next) -> Response {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut resp = REQUEST_ID.scope(id.clone(), next.run(req)).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    // Headers every response carries, refusals by the flood guard included.
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    resp
}

/// Metrics and a log line per request.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let resp = next.run(req).await;
    let elapsed = start.elapsed();
    let status = resp.status().as_u16();
    let labels = RequestLabels {
        method: method.clone(),
        route: route.clone(),
        status,
    };
    state.metrics.requests.get_or_create(&labels).inc();
    state
        .metrics
        .latency
        .get_or_create(&labels)
        .observe(elapsed.as_secs_f64());
    tracing::info!(
        request_id = %crate::error::current_request_id(),
        %method, %route, status, micros = elapsed.as_micros() as u64,
        "request"
    );
    resp
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    // The panic message stays out of the response; the log has the backtrace.
    tracing::error!(request_id = %crate::error::current_request_id(), "handler panicked");
    ApiError::internal("handler panicked").into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such endpoint; see /api/v1/openapi.json",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this endpoint does not take that HTTP method; see /api/v1/openapi.json",
    )
}

/// Liveness only: answers without touching anything (no store, no
/// authentication). Also the benchmarks' bare endpoint.
#[utoipa::path(get, path = "/livez", tag = "operations", responses((status = 200, description = "alive")))]
async fn live() -> &'static str {
    "ok"
}

/// Liveness and store reachability. No authentication.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = strongroom_proto::ErrorBody)))]
async fn health(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state.store.ping().await.map_err(|e| {
        tracing::error!(error = %e, "health check: store unreachable");
        ApiError::busy("the store is not reachable", 5)
    })?;
    Ok(Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }))
}

/// Prometheus metrics, for the addresses in `metrics_allow` only.
async fn metrics(State(state): State<AppState>, client: ClientInfo) -> Response {
    if !state.metrics_allow.iter().any(|n| n.contains(&client.ip)) {
        return ApiError::new(
            ErrorCode::Forbidden,
            "metrics are served only to the addresses in metrics_allow",
        )
        .into_response();
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}
