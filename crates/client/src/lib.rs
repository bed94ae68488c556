//! A typed HTTP client for the Strongroom API, used by the CLI and the tests.

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use strongroom_proto::*;

/// What a sign-in answered.
#[derive(Debug)]
pub enum LoginStep {
    SignedIn(Client, Box<LoginResponse>),
    /// The password was right; answer with [`Client::second_factor`].
    SecondFactor(SecondFactorChallenge),
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error body.
    #[error("{status}: {} ({})", body.message, body.code)]
    Api { status: u16, body: ErrorBody },
    /// The server answered with something that is not ours.
    #[error("unexpected answer ({status}): {text}")]
    Unexpected { status: u16, text: String },
    #[error("cannot reach the server: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{0}")]
    Setup(String),
}

impl ClientError {
    /// The error code, when the server sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { body, .. } => Some(body.code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Unexpected { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

pub type ClientResult<T> = Result<T, ClientError>;

/// A raw answer, for tests of malformed input.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    forwarded_for: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("signed_in", &self.token.is_some())
            .finish()
    }
}

impl Client {
    /// A client for `base` (e.g. `https://127.0.0.1:8443`) that trusts the
    /// given PEM certificate (the server's self-signed one) besides none
    /// other: the default server certificate is not signed by a public CA.
    pub fn new(base: &str, ca_pem: Option<&[u8]>) -> ClientResult<Client> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(true)
            .timeout(std::time::Duration::from_secs(60));
        if let Some(pem) = ca_pem {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|e| ClientError::Setup(format!("CA certificate is not PEM: {e}")))?;
            b = b.add_root_certificate(cert);
        }
        Ok(Client {
            http: b.build()?,
            base: base.trim_end_matches('/').to_owned(),
            token: None,
            forwarded_for: None,
        })
    }

    /// The same client, sending `token` as a bearer token.
    pub fn with_token(&self, token: &str) -> Client {
        Client {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    /// The same client, sending `X-Forwarded-For: <address>` (believed only
    /// when the server trusts the connecting address as a proxy).
    pub fn forwarded_for(&self, address: &str) -> Client {
        Client {
            forwarded_for: Some(address.to_owned()),
            ..self.clone()
        }
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(ip) = &self.forwarded_for {
            rb = rb.header("x-forwarded-for", ip);
        }
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    async fn send<T: DeserializeOwned>(&self, rb: reqwest::RequestBuilder) -> ClientResult<T> {
        let resp = rb.send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if status.is_success() {
            let bytes = if status == StatusCode::NO_CONTENT || bytes.is_empty() {
                &b"null"[..]
            } else {
                &bytes[..]
            };
            serde_json::from_slice(bytes).map_err(|e| ClientError::Unexpected {
                status: status.as_u16(),
                text: e.to_string(),
            })
        } else {
            Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => ClientError::Api {
                    status: status.as_u16(),
                    body,
                },
                Err(_) => ClientError::Unexpected {
                    status: status.as_u16(),
                    text: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
                },
            })
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> ClientResult<T> {
        self.send(self.request(Method::GET, path)).await
    }

    async fn body<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> ClientResult<T> {
        self.send(self.request(method, path).json(body)).await
    }

    async fn no_content(&self, method: Method, path: &str) -> ClientResult<()> {
        self.send::<serde_json::Value>(self.request(method, path))
            .await
            .map(|_| ())
    }

    /// Sends anything, for tests of bad input.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> ClientResult<RawResponse> {
        let mut rb = self.request(method, path).body(body);
        if let Some(ct) = content_type {
            rb = rb.header(reqwest::header::CONTENT_TYPE, ct);
        }
        let resp = rb.send().await?;
        Ok(RawResponse {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.bytes().await?.to_vec(),
        })
    }

    /// A GET with no body, for tests that look at status and headers.
    pub async fn raw_get(&self, path: &str) -> ClientResult<RawResponse> {
        self.raw(Method::GET, path, None, Vec::new()).await
    }

    // ----- operations --------------------------------------------------

    pub async fn health(&self) -> ClientResult<Health> {
        self.get("/healthz").await
    }

    pub async fn openapi(&self) -> ClientResult<serde_json::Value> {
        self.get("/api/v1/openapi.json").await
    }

    // ----- sessions ----------------------------------------------------

    /// Signs in and returns a client that uses the new session.
    pub async fn login(
        &self,
        company: &str,
        user: &str,
        password: &str,
    ) -> ClientResult<(Client, LoginResponse)> {
        match self.begin_login(company, user, password).await? {
            LoginStep::SignedIn(c, r) => Ok((c, *r)),
            LoginStep::SecondFactor(_) => Err(ClientError::Unexpected {
                status: 202,
                text: "a second factor is needed: use begin_login and second_factor".into(),
            }),
        }
    }

    /// Signs in; when a second factor applies, answers with its challenge.
    pub async fn begin_login(
        &self,
        company: &str,
        user: &str,
        password: &str,
    ) -> ClientResult<LoginStep> {
        let req = LoginRequest {
            company: company.into(),
            user: user.into(),
            password: password.into(),
        };
        let v: serde_json::Value = self.body(Method::POST, "/api/v1/auth/login", &req).await?;
        self.login_step(v)
    }

    fn login_step(&self, v: serde_json::Value) -> ClientResult<LoginStep> {
        let bad = |e: serde_json::Error| ClientError::Unexpected {
            status: 200,
            text: e.to_string(),
        };
        if v.get("challenge").is_some() {
            return Ok(LoginStep::SecondFactor(
                serde_json::from_value(v).map_err(bad)?,
            ));
        }
        let resp: LoginResponse = serde_json::from_value(v).map_err(bad)?;
        Ok(LoginStep::SignedIn(
            self.with_token(&resp.token),
            Box::new(resp),
        ))
    }

    /// The second sign-in step.
    pub async fn second_factor(
        &self,
        answer: &SecondFactorAnswer,
    ) -> ClientResult<(Client, LoginResponse)> {
        let resp: LoginResponse = self
            .body(Method::POST, "/api/v1/auth/login/second-factor", answer)
            .await?;
        Ok((self.with_token(&resp.token), resp))
    }

    /// Starts setting up an authenticator app.
    pub async fn totp_begin(&self) -> ClientResult<TotpEnrolment> {
        self.body(
            Method::POST,
            "/api/v1/auth/second-factor/totp",
            &serde_json::json!({}),
        )
        .await
    }

    /// Confirms the authenticator app; returns the recovery codes.
    pub async fn totp_confirm(&self, code: &str) -> ClientResult<RecoveryCodes> {
        self.body(
            Method::POST,
            "/api/v1/auth/second-factor/totp/confirm",
            &TotpCode { code: code.into() },
        )
        .await
    }

    pub async fn second_factor_status(&self) -> ClientResult<SecondFactorStatus> {
        self.get("/api/v1/auth/second-factor").await
    }

    /// Makes an API key for a user (administrators).
    pub async fn create_api_key(
        &self,
        user_id: &str,
        req: &NewApiKeyRequest,
    ) -> ClientResult<ApiKeyCreated> {
        self.body(
            Method::POST,
            &format!("/api/v1/users/{}/api-keys", enc(user_id)),
            req,
        )
        .await
    }

    /// Sets the company's sign-in policy (administrators).
    pub async fn set_sign_in_policy(&self, p: &SignInPolicyView) -> ClientResult<SignInPolicyView> {
        self.body(Method::PUT, "/api/v1/security/sign-in-policy", p)
            .await
    }

    pub async fn sign_in_policy(&self) -> ClientResult<SignInPolicyView> {
        self.get("/api/v1/security/sign-in-policy").await
    }

    /// Sets a user's sign-in settings (administrators).
    pub async fn set_user_sign_in(
        &self,
        user_id: &str,
        s: &UserSignInSettings,
    ) -> ClientResult<()> {
        let _: serde_json::Value = self
            .body(
                Method::PUT,
                &format!("/api/v1/users/{}/sign-in", enc(user_id)),
                s,
            )
            .await?;
        Ok(())
    }

    pub async fn logout(&self) -> ClientResult<()> {
        self.no_content(Method::POST, "/api/v1/auth/logout").await
    }

    pub async fn session(&self) -> ClientResult<SessionView> {
        self.get("/api/v1/auth/session").await
    }

    pub async fn company(&self) -> ClientResult<CompanyView> {
        self.get("/api/v1/company").await
    }

    // ----- departments -------------------------------------------------

    pub async fn departments(&self) -> ClientResult<Vec<DepartmentView>> {
        self.get("/api/v1/departments").await
    }

    pub async fn create_department(&self, code: &str, name: &str) -> ClientResult<DepartmentView> {
        let req = CreateDepartment {
            code: code.into(),
            name: name.into(),
        };
        self.body(Method::POST, "/api/v1/departments", &req).await
    }

    pub async fn rename_department(&self, code: &str, name: &str) -> ClientResult<DepartmentView> {
        let req = UpdateDepartment { name: name.into() };
        self.body(
            Method::PATCH,
            &format!("/api/v1/departments/{}", enc(code)),
            &req,
        )
        .await
    }

    pub async fn delete_department(&self, code: &str) -> ClientResult<()> {
        self.no_content(
            Method::DELETE,
            &format!("/api/v1/departments/{}", enc(code)),
        )
        .await
    }

    // ----- users -------------------------------------------------------

    pub async fn users(&self) -> ClientResult<Vec<UserView>> {
        self.get("/api/v1/users").await
    }

    pub async fn user(&self, user_id: &str) -> ClientResult<UserView> {
        self.get(&format!("/api/v1/users/{}", enc(user_id))).await
    }

    pub async fn create_user(&self, req: &CreateUser) -> ClientResult<UserView> {
        self.body(Method::POST, "/api/v1/users", req).await
    }

    pub async fn update_user(&self, user_id: &str, req: &UpdateUser) -> ClientResult<UserView> {
        self.body(
            Method::PATCH,
            &format!("/api/v1/users/{}", enc(user_id)),
            req,
        )
        .await
    }

    /// Sets a user's password (administrators); the user must change it at
    /// next sign-in.
    pub async fn set_password(&self, user_id: &str, password: &str) -> ClientResult<()> {
        self.set_password_with(user_id, password, true).await
    }

    /// Sets a user's password, saying whether the user must change it.
    pub async fn set_password_with(
        &self,
        user_id: &str,
        password: &str,
        must_change: bool,
    ) -> ClientResult<()> {
        let req = SetPassword {
            password: password.into(),
            must_change,
        };
        let _: serde_json::Value = self
            .body(
                Method::POST,
                &format!("/api/v1/users/{}/password", enc(user_id)),
                &req,
            )
            .await?;
        Ok(())
    }

    pub async fn delete_user(&self, user_id: &str) -> ClientResult<()> {
        self.no_content(Method::DELETE, &format!("/api/v1/users/{}", enc(user_id)))
            .await
    }

    // ----- record types ------------------------------------------------

    pub async fn record_types(&self) -> ClientResult<Vec<RecordTypeView>> {
        self.get("/api/v1/record-types").await
    }

    pub async fn record_type(&self, key: &str) -> ClientResult<RecordTypeView> {
        self.get(&format!("/api/v1/record-types/{}", enc(key)))
            .await
    }

    pub async fn create_record_type(&self, req: &CreateRecordType) -> ClientResult<RecordTypeView> {
        self.body(Method::POST, "/api/v1/record-types", req).await
    }

    pub async fn add_fields(&self, key: &str, req: &AddFields) -> ClientResult<RecordTypeView> {
        self.body(
            Method::POST,
            &format!("/api/v1/record-types/{}/fields", enc(key)),
            req,
        )
        .await
    }

    // ----- records -----------------------------------------------------

    pub async fn create_record(
        &self,
        record_type: &str,
        req: &CreateRecord,
    ) -> ClientResult<RecordView> {
        self.body(
            Method::POST,
            &format!("/api/v1/records/{}", enc(record_type)),
            req,
        )
        .await
    }

    pub async fn record(&self, record_type: &str, id: &str) -> ClientResult<RecordView> {
        self.get(&format!("/api/v1/records/{}/{}", enc(record_type), enc(id)))
            .await
    }

    pub async fn update_record(
        &self,
        record_type: &str,
        id: &str,
        req: &UpdateRecord,
    ) -> ClientResult<RecordView> {
        self.body(
            Method::PATCH,
            &format!("/api/v1/records/{}/{}", enc(record_type), enc(id)),
            req,
        )
        .await
    }

    pub async fn delete_record(&self, record_type: &str, id: &str) -> ClientResult<RecordView> {
        self.send(self.request(
            Method::DELETE,
            &format!("/api/v1/records/{}/{}", enc(record_type), enc(id)),
        ))
        .await
    }

    pub async fn restore_record(
        &self,
        record_type: &str,
        id: &str,
        version: Option<i64>,
    ) -> ClientResult<RecordView> {
        self.body(
            Method::POST,
            &format!("/api/v1/records/{}/{}/restore", enc(record_type), enc(id)),
            &RestoreRecord { version },
        )
        .await
    }

    pub async fn record_history(
        &self,
        record_type: &str,
        id: &str,
    ) -> ClientResult<Vec<RecordVersionView>> {
        self.get(&format!(
            "/api/v1/records/{}/{}/history",
            enc(record_type),
            enc(id)
        ))
        .await
    }

    /// One page of records. `query` holds extra parameters such as
    /// `("f.email", "a@b.co")`, `("limit", "10")`, `("cursor", ...)`.
    pub async fn list_records(
        &self,
        record_type: &str,
        query: &[(&str, &str)],
    ) -> ClientResult<Page<RecordView>> {
        self.send(
            self.request(
                Method::GET,
                &format!("/api/v1/records/{}", enc(record_type)),
            )
            .query(query),
        )
        .await
    }
}

/// Percent-encodes a path segment.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(super::enc("a b/../c"), "a%20b%2F..%2Fc");
    }
}
