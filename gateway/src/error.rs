//! Errors of the request path, each saying whose fault it was, and the one place they become
//! HTTP responses (RFC 6750 §3 for authentication failures).

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};

use crate::auth::jwt::TokenError;

/// Why a request was not proxied.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The client sent no credentials (or another scheme than Bearer).
    #[error("no bearer credentials")]
    NoCredentials,
    /// The client's credentials are malformed (RFC 6750 `invalid_request`).
    #[error("invalid_request: {0}")]
    InvalidRequest(&'static str),
    /// The client's request is malformed or ambiguous as HTTP: framing, host, path.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The client's request body broke off or was malformed (a bad chunk) while it streamed.
    #[error("malformed request body")]
    BadBody,
    /// The client's request body sent nothing for the listener's idle timeout.
    #[error("request body timed out")]
    BodyTimeout,
    /// The route does not allow the method; the value is the `Allow` header.
    #[error("method not allowed")]
    MethodNotAllowed(HeaderValue),
    /// A transfer coding other than `chunked`, which the gateway does not decode.
    #[error("transfer coding not implemented")]
    UnsupportedTransferCoding,
    /// The client's token failed a check; the reason is logged, never sent (no oracle).
    #[error("invalid_token: {0}")]
    InvalidToken(TokenError),
    /// The client's token lacks a scope the route requires.
    #[error("insufficient_scope")]
    InsufficientScope(String),
    /// No route matches the path.
    #[error("no route")]
    NoRoute,
    /// The client's body is larger than the limit.
    #[error("request body too large")]
    PayloadTooLarge,
    /// Too many requests in flight; the client may retry (our capacity, not its fault).
    #[error("overloaded")]
    Overloaded,
    /// The gateway cannot vouch for its revocation set or keys yet (our side, temporary).
    #[error("not ready: {0}")]
    NotReady(&'static str),
    /// The upstream refused or broke the connection.
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    /// The upstream did not answer in time.
    #[error("upstream timeout")]
    UpstreamTimeout,
}

impl GatewayError {
    /// Label for metrics and access logs.
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::NoCredentials => "no_credentials",
            GatewayError::InvalidRequest(_) => "invalid_request",
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::BadBody => "bad_body",
            GatewayError::BodyTimeout => "body_timeout",
            GatewayError::MethodNotAllowed(_) => "method_not_allowed",
            GatewayError::UnsupportedTransferCoding => "not_implemented",
            GatewayError::InvalidToken(_) => "invalid_token",
            GatewayError::InsufficientScope(_) => "insufficient_scope",
            GatewayError::NoRoute => "no_route",
            GatewayError::PayloadTooLarge => "payload_too_large",
            GatewayError::Overloaded => "overloaded",
            GatewayError::NotReady(_) => "not_ready",
            GatewayError::UpstreamUnavailable(_) => "upstream_unavailable",
            GatewayError::UpstreamTimeout => "upstream_timeout",
        }
    }

    /// The response, with `realm` in the challenge.
    ///
    /// Long on purpose: one arm per variant, so that every status, error code and challenge
    /// the gateway can answer is in this one place (RFC 6750 §3).
    pub fn into_response_with_realm(self, realm: &str) -> Response {
        let challenge = |extra: &str| {
            let value = format!("Bearer realm=\"{realm}\"{extra}");
            HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("Bearer"))
        };
        let (status, code, description, www) = match &self {
            GatewayError::NoCredentials => (
                StatusCode::UNAUTHORIZED,
                None,
                "authentication required",
                Some(challenge("")),
            ),
            GatewayError::InvalidRequest(d) => (
                StatusCode::BAD_REQUEST,
                Some("invalid_request"),
                *d,
                Some(challenge(", error=\"invalid_request\"")),
            ),
            GatewayError::BadRequest(d) => {
                (StatusCode::BAD_REQUEST, Some("invalid_request"), *d, None)
            }
            GatewayError::BadBody => (
                StatusCode::BAD_REQUEST,
                Some("invalid_request"),
                "the request body is malformed",
                None,
            ),
            GatewayError::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                Some("request_timeout"),
                "the request body stopped arriving",
                None,
            ),
            GatewayError::MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                Some("method_not_allowed"),
                "the route does not allow this method",
                None,
            ),
            GatewayError::UnsupportedTransferCoding => (
                StatusCode::NOT_IMPLEMENTED,
                Some("not_implemented"),
                "only the chunked transfer coding is supported",
                None,
            ),
            GatewayError::InvalidToken(_) => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "the access token is invalid",
                Some(challenge(
                    ", error=\"invalid_token\", error_description=\"the access token is invalid\"",
                )),
            ),
            GatewayError::InsufficientScope(scope) => (
                StatusCode::FORBIDDEN,
                Some("insufficient_scope"),
                "the access token lacks a required scope",
                Some(challenge(&format!(
                    ", error=\"insufficient_scope\", scope=\"{scope}\""
                ))),
            ),
            GatewayError::NoRoute => (StatusCode::NOT_FOUND, Some("not_found"), "no route", None),
            GatewayError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Some("payload_too_large"),
                "the request body is too large",
                None,
            ),
            GatewayError::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("overloaded"),
                "the gateway is at its concurrency limit",
                None,
            ),
            GatewayError::NotReady(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("temporarily_unavailable"),
                "the gateway cannot check tokens yet",
                None,
            ),
            GatewayError::UpstreamUnavailable(_) => (
                StatusCode::BAD_GATEWAY,
                Some("bad_gateway"),
                "the upstream service is unavailable",
                None,
            ),
            GatewayError::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                Some("gateway_timeout"),
                "the upstream service did not answer in time",
                None,
            ),
        };
        let body = match code {
            Some(code) => serde_json::json!({ "error": code, "error_description": description }),
            None => serde_json::json!({ "error_description": description }),
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(www) = www {
            headers.insert(header::WWW_AUTHENTICATE, www);
        }
        if matches!(self, GatewayError::NotReady(_) | GatewayError::Overloaded) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let GatewayError::MethodNotAllowed(allow) = self {
            headers.insert(header::ALLOW, allow);
        }
        response
    }
}
