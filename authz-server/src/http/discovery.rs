//! Discovery: the RFC 8414 metadata document and the JWK Set.

use super::*;

/// RFC 8414 metadata: exactly what this server supports.
pub(super) async fn well_known_metadata_get(State(state): State<Arc<AppState>>) -> Response {
    let body = state.metadata();
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// The RFC 8414 metadata document, built from the clients' scopes and the keys' algorithms;
/// kept by [`AppState::refresh_metadata`] rather than built per request.
pub(crate) async fn build_metadata(state: &AppState) -> Result<Bytes, OAuthError> {
    let issuer = state.config.issuer.trim_end_matches('/');
    let registered = state.clients.list().await?;
    let mut scopes: Vec<&str> = registered
        .iter()
        .flat_map(|(c, _)| c.scopes.iter().map(String::as_str))
        .collect();
    scopes.sort_unstable();
    scopes.dedup();
    let auth_methods = ["client_secret_basic", "client_secret_post"];
    let document = serde_json::json!({
        "issuer": state.config.issuer,
        "token_endpoint": format!("{issuer}/oauth2/token"),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "revocation_endpoint": format!("{issuer}/oauth2/revoke"),
        "introspection_endpoint": format!("{issuer}/oauth2/introspect"),
        "grant_types_supported": ["client_credentials"],
        // No authorization endpoint: client_credentials needs none.
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "scopes_supported": scopes,
        "token_signing_alg_values_supported": signing_algs(state),
    });
    Ok(Bytes::from(document.to_string()))
}

pub(super) async fn jwks_get(State(state): State<Arc<AppState>>) -> Response {
    let mut response = Json(state.keys.jwks(crate::clock::unix_now())).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    response
}
