//! Recording audit events. This is the first form of the audit trail: every
//! event is stored before the response that depends on it is sent (fail
//! closed). Hash chaining and signed checkpoints come with the audit issue.

use strongroom_store::AuditRecord;

use crate::auth::Caller;
use crate::error::{current_request_id, ApiError, ApiResult};
use crate::extract::ClientInfo;
use crate::state::AppState;

/// Stores one event about what `caller` did. `detail` must never carry a
/// sensitive value: field names yes, values no.
pub async fn record(
    state: &AppState,
    caller: &Caller,
    client: &ClientInfo,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> ApiResult<()> {
    let p = &caller.principal;
    state
        .store
        .append_audit(&AuditRecord {
            company: Some(p.company),
            at: state.clock.now(),
            actor: p.user_id.clone(),
            action: action.to_owned(),
            target: target.to_owned(),
            outcome: "success".into(),
            detail: detail.to_string(),
            request_id: Some(current_request_id()),
            client_ip: Some(client.ip.to_string()),
        })
        .await
        .map_err(|e| {
            // No audit record, no answer.
            ApiError::internal(format!("audit write failed: {e}"))
        })
}
