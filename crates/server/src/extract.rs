//! Extractors. They gather facts (body, client address, session) and turn
//! malformed input into clear 4xx errors; they decide nothing.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use std::net::{IpAddr, SocketAddr};
use strongroom_core::ip_policy::canonical;
use strongroom_proto::ErrorCode;

use crate::error::ApiError;

/// A JSON body: `application/json` only, size-limited by the router,
/// unknown fields refused.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "send the body as JSON with the header Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    "the request body is larger than the server accepts (max_body_bytes)",
                )
            } else {
                ApiError::bad_request("the request body could not be read")
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Like [`ApiJson`], but an empty body stands for the type's default.
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let has_body = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .map(|v| v != "0")
            .unwrap_or(req.headers().contains_key(CONTENT_TYPE));
        if !has_body {
            return Ok(OptionalJson(T::default()));
        }
        ApiJson::<T>::from_request(req, state)
            .await
            .map(|ApiJson(v)| OptionalJson(v))
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().eq_ignore_ascii_case("application/json"))
        .unwrap_or(false)
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let msg: String = e.to_string().chars().take(300).collect();
        if msg.starts_with("unknown field") {
            ApiError::new(ErrorCode::UnknownField, format!("request body: {msg}"))
        } else if e.is_data() {
            ApiError::new(
                ErrorCode::InvalidJson,
                format!("request body does not have the expected shape: {msg}"),
            )
        } else {
            ApiError::new(
                ErrorCode::InvalidJson,
                format!("request body is not valid JSON: {msg}"),
            )
        }
    })
}

/// The socket peer, put into each request by the connection loop.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Which proxies may tell us the client's address.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl TrustedProxies {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client's address: the socket peer, unless the peer is a trusted
    /// proxy, in which case the right-most `X-Forwarded-For` hop that is not
    /// itself a trusted proxy. A header from anyone else is ignored.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let mut hops: Vec<IpAddr> = Vec::new();
        for v in headers.get_all("x-forwarded-for") {
            let Ok(s) = v.to_str() else { return peer };
            for part in s.split(',') {
                match part.trim().parse::<IpAddr>() {
                    Ok(ip) => hops.push(canonical(ip)),
                    // A malformed chain cannot be trusted past this proxy.
                    Err(_) => return peer,
                }
            }
        }
        hops.into_iter()
            .rev()
            .find(|ip| !self.trusts(*ip))
            .unwrap_or(peer)
    }
}

/// The client's address and user agent, as far as we can believe them.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub ip: IpAddr,
    pub user_agent: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for ClientInfo {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<PeerAddr>()
            .map(|p| p.0.ip())
            .ok_or_else(|| ApiError::internal("no peer address on request"))?;
        let proxies = parts
            .extensions
            .get::<TrustedProxies>()
            .cloned()
            .unwrap_or_default();
        let ip = proxies.client_ip(peer, &parts.headers);
        let user_agent = parts
            .headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(256).collect());
        Ok(ClientInfo { ip, user_agent })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(xff).unwrap());
        h
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let proxies = TrustedProxies(vec!["10.0.0.0/8".parse().unwrap()]);
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        // A spoofed header from an untrusted peer changes nothing.
        assert_eq!(proxies.client_ip(stranger, &headers("1.2.3.4")), stranger);
        // From a trusted proxy, the right-most untrusted hop counts.
        assert_eq!(
            proxies.client_ip(proxy, &headers("1.2.3.4, 198.51.100.7, 10.9.9.9")),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // Garbage in the chain: fall back to the proxy itself.
        assert_eq!(
            proxies.client_ip(proxy, &headers("1.2.3.4, nonsense")),
            proxy
        );
        // No header: the proxy.
        assert_eq!(proxies.client_ip(proxy, &HeaderMap::new()), proxy);
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        let p = TrustedProxies::default();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(
            p.client_ip(mapped, &HeaderMap::new()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    proptest! {
        /// A peer that is not a trusted proxy is always the client, whatever
        /// X-Forwarded-For it sends.
        #[test]
        fn untrusted_peers_cannot_choose_their_address(a in any::<[u8; 4]>(), xff in "[0-9a-f.:, ]{0,60}") {
            let peer = IpAddr::from(a);
            let proxies = TrustedProxies(vec!["10.0.0.0/8".parse().unwrap()]);
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&xff) {
                h.insert("x-forwarded-for", v);
            }
            let got = proxies.client_ip(peer, &h);
            if !proxies.0[0].contains(&peer) {
                prop_assert_eq!(got, peer);
            } else {
                // Through a trusted proxy the answer is never another trusted hop,
                // unless nothing better is known (the proxy itself).
                prop_assert!(!proxies.0[0].contains(&got) || got == peer);
            }
        }
    }
}
