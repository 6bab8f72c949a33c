//! Errors, and the one place they become HTTP responses (RFC 6749 §5.2, RFC 7009 §2.2.1).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// A request the server refuses, named after the OAuth error code it answers with.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The request is missing a parameter or is otherwise malformed (the client's fault).
    #[error("invalid_request: {0}")]
    InvalidRequest(&'static str),
    /// Client authentication failed. `basic` says whether the client tried HTTP Basic, in
    /// which case RFC 6749 §5.2 asks for a `WWW-Authenticate` challenge.
    #[error("invalid_client")]
    InvalidClient { basic: bool },
    /// RFC 7009 §2.1: the token was not issued to the client asking to revoke it.
    #[error("unauthorized_client: {0}")]
    UnauthorizedClient(&'static str),
    /// The client authenticated but may not use this endpoint (a non-admin on `/admin`).
    #[error("access_denied")]
    AccessDenied,
    /// A console call without a live session: none, expired, ended, or its client changed
    /// (401, `login_required`).
    #[error("login_required: {0}")]
    LoginRequired(&'static str),
    /// An admin or console call refused for where it comes from or a missing or wrong CSRF
    /// token (403, `access_denied` with the reason).
    #[error("access_denied: {0}")]
    Refused(&'static str),
    /// Too many failed authentications from this source (429).
    #[error("too many failed attempts")]
    TooManyFailures { retry_after: u64 },
    /// Every client-authentication slot is busy: the server is being flooded (503).
    #[error("busy")]
    Busy,
    /// Only `client_credentials` is supported.
    #[error("unsupported_grant_type")]
    UnsupportedGrantType,
    /// RFC 8707: the requested `resource` is not one the client may get tokens for.
    #[error("invalid_target")]
    InvalidTarget,
    /// An admin request names a client that does not exist (404), or one that cannot be
    /// changed at run time.
    #[error("not_found")]
    NotFound(&'static str),
    /// The client id is already taken (409).
    #[error("conflict")]
    Conflict(&'static str),
    /// A requested scope is not allowed for the client.
    #[error("invalid_scope")]
    InvalidScope,
    /// RFC 7009 §2.2.1: the server cannot revoke this type of token.
    #[error("unsupported_token_type")]
    UnsupportedTokenType,
    /// The request cannot be served now; it changed nothing the client could rely on
    /// (503 with `Retry-After`): see [`DATABASE_UNREACHABLE`], [`NOT_PUBLISHED`].
    #[error("temporarily_unavailable: {0}")]
    Unavailable(&'static str),
    /// Our fault: logged with its cause, answered with no detail.
    #[error("server_error: {0}")]
    Internal(String),
}

/// Why a request that needs the database is refused while it is out of reach.
pub const DATABASE_UNREACHABLE: &str =
    "the database is unreachable, busy or takes no writes; retry later";

/// Why a revocation request is refused when its revocation is committed but not published
/// within `publish_wait_ms`: gateways may not enforce it yet. It stays committed and is
/// published as soon as NATS takes it; the same request then answers 200.
pub const NOT_PUBLISHED: &str = "the revocation is committed but not yet published, so gateways may not enforce it yet; retry: it is answered 200 once published";

impl OAuthError {
    /// Wraps an internal failure; the cause is logged, never sent.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        OAuthError::Internal(cause.to_string())
    }

    /// A failed statement: 503 if it says the database is out of reach (and `store` takes
    /// note), else an internal error.
    pub fn database(store: &crate::store::Store, err: sqlx::Error) -> Self {
        if store.note(&err) {
            OAuthError::Unavailable(DATABASE_UNREACHABLE)
        } else {
            OAuthError::internal(err)
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, Option<&'static str>) {
        match self {
            OAuthError::InvalidRequest(d) => (StatusCode::BAD_REQUEST, "invalid_request", Some(d)),
            OAuthError::InvalidClient { .. } => (
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                Some("client authentication failed"),
            ),
            OAuthError::UnauthorizedClient(d) => {
                (StatusCode::BAD_REQUEST, "unauthorized_client", Some(d))
            }
            OAuthError::AccessDenied => (
                StatusCode::FORBIDDEN,
                "access_denied",
                Some("this client may not use the admin API"),
            ),
            OAuthError::LoginRequired(d) => (StatusCode::UNAUTHORIZED, "login_required", Some(d)),
            OAuthError::Refused(d) => (StatusCode::FORBIDDEN, "access_denied", Some(d)),
            OAuthError::TooManyFailures { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                Some("too many failed client authentications; retry later"),
            ),
            OAuthError::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                Some("the server is busy; retry later"),
            ),
            OAuthError::UnsupportedGrantType => (
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                Some("only client_credentials is supported"),
            ),
            OAuthError::InvalidTarget => (
                StatusCode::BAD_REQUEST,
                "invalid_target",
                Some("the resource is not an audience this client may use"),
            ),
            OAuthError::NotFound(d) => (StatusCode::NOT_FOUND, "not_found", Some(d)),
            OAuthError::Conflict(d) => (StatusCode::CONFLICT, "conflict", Some(d)),
            OAuthError::InvalidScope => (
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                Some("a requested scope is not allowed for this client"),
            ),
            OAuthError::UnsupportedTokenType => (
                StatusCode::BAD_REQUEST,
                "unsupported_token_type",
                Some("only access tokens can be revoked"),
            ),
            OAuthError::Unavailable(d) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                Some(d),
            ),
            OAuthError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        if let OAuthError::Internal(cause) = &self {
            tracing::error!(%cause, "internal error");
        }
        let (status, code, description) = self.parts();
        let body = match description {
            Some(d) => serde_json::json!({ "error": code, "error_description": d }),
            None => serde_json::json!({ "error": code }),
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let OAuthError::TooManyFailures { retry_after } = self {
            if let Ok(value) = HeaderValue::from_str(&retry_after.to_string()) {
                headers.insert(header::RETRY_AFTER, value);
            }
        }
        if let OAuthError::Busy | OAuthError::Unavailable(_) = self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let OAuthError::InvalidClient { basic: true } = self {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"authz-server\""),
            );
        }
        response
    }
}

/// Why the server could not start; `main` prints it and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("signing key: {0}")]
    Key(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("NATS: {0}")]
    Nats(String),
    /// The system's random number generator failed (keys of in-memory caches come from it).
    #[error("random number generator: {0}")]
    Random(&'static str),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}
