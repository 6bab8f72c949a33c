//! The OAuth 2.0 endpoints: the token (RFC 6749 §4.4), revocation (RFC 7009) and
//! introspection (RFC 7662) endpoints.

use super::*;

/// RFC 6749 §4.4.2: a token request without `grant_type` is malformed, whoever sends it.
pub(super) struct GrantTypeGiven;

impl Precheck for GrantTypeGiven {
    fn check(form: &FormParams) -> Result<(), OAuthError> {
        match form.get("grant_type") {
            Some(_) => Ok(()),
            None => Err(OAuthError::InvalidRequest("grant_type is required")),
        }
    }
}

pub(super) async fn oauth2_token_post(
    State(state): State<Arc<AppState>>,
    AuthenticatedForm { client, form, .. }: AuthenticatedForm<GrantTypeGiven>,
) -> Result<Response, OAuthError> {
    if form.get("grant_type") != Some("client_credentials") {
        return Err(OAuthError::UnsupportedGrantType);
    }
    let scope = match form.get("scope") {
        None => client.scopes.join(" "),
        Some(requested) => {
            let mut granted: Vec<&str> = Vec::new();
            for s in requested.split(' ').filter(|s| !s.is_empty()) {
                if !client.scopes.iter().any(|allowed| allowed == s) {
                    return Err(OAuthError::InvalidScope);
                }
                if !granted.contains(&s) {
                    granted.push(s);
                }
            }
            granted.join(" ")
        }
    };
    // RFC 8707: `resource` picks one of the client's audiences; the first is the default.
    let audience = match form.get("resource") {
        None => client.audiences.first().ok_or(OAuthError::InvalidTarget)?,
        Some(resource) => client
            .audiences
            .iter()
            .find(|a| *a == resource)
            .ok_or(OAuthError::InvalidTarget)?,
    };
    let config = &state.config;
    let claims = AccessClaims::new(
        &config.issuer,
        &client.id,
        audience,
        scope,
        crate::clock::unix_now(),
        config.token_ttl_s,
    );
    let key = state
        .keys
        .signing_key(claims.iat)
        .ok_or_else(|| OAuthError::internal("no signing key"))?;
    let token = key.key.sign(&claims).map_err(OAuthError::internal)?;
    state.metrics.tokens_issued.inc();
    tracing::info!(client_id = %client.id, jti = %claims.jti, "token issued");
    Ok(no_store(serde_json::json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": config.token_ttl_s,
        "scope": claims.scope,
    })))
}

pub(super) async fn oauth2_revoke_post(
    State(state): State<Arc<AppState>>,
    AuthenticatedForm { client, form, .. }: AuthenticatedForm,
) -> Result<Response, OAuthError> {
    let token = form
        .get("token")
        .ok_or(OAuthError::InvalidRequest("token is required"))?;
    if form.get("token_type_hint") == Some("refresh_token") {
        // RFC 7009 §2.2.1: this server issues no refresh tokens.
        return Err(OAuthError::UnsupportedTokenType);
    }
    // RFC 7009 §2.2: an invalid or unknown token is answered with 200 all the same.
    let Some(claims) = verify_own(&state.keys, &state.config.issuer, token) else {
        tracing::info!(client_id = %client.id, "revocation of an unknown token ignored");
        return Ok(StatusCode::OK.into_response());
    };
    if claims.client_id != client.id {
        return Err(OAuthError::UnauthorizedClient(
            "the token was not issued to this client",
        ));
    }
    revoke_token(&state, &claims.jti, claims.exp, &client.id).await?;
    Ok(StatusCode::OK.into_response())
}

/// Commits a token revocation for RFC 7009.
pub(super) async fn revoke_token(
    state: &AppState,
    jti: &str,
    exp: u64,
    requested_by: &str,
) -> Result<RevocationEvent, OAuthError> {
    let rule = Rule::Token {
        jti: jti.to_string(),
    };
    let iss = state.config.issuer.clone();
    commit_revocation(state, iss, rule, exp, None, requested_by).await
}

/// RFC 7662 for authenticated clients: `active: false` for anything not a live, unrevoked
/// token of this server, without saying why.
pub(super) async fn oauth2_introspect_post(
    State(state): State<Arc<AppState>>,
    AuthenticatedForm { client, form, .. }: AuthenticatedForm,
) -> Result<Response, OAuthError> {
    let token = form
        .get("token")
        .ok_or(OAuthError::InvalidRequest("token is required"))?;
    let inactive = || no_store(serde_json::json!({ "active": false }));
    let Some(claims) = verify_own(&state.keys, &state.config.issuer, token) else {
        return Ok(inactive());
    };
    let now = crate::clock::unix_now();
    if now >= claims.exp || claims.nbf > now {
        return Ok(inactive());
    }
    let revoked = state
        .store
        .is_revoked(
            &claims.iss,
            &claims.jti,
            &claims.sub,
            &claims.client_id,
            claims.iat,
        )
        .await
        .map_err(|e| OAuthError::database(&state.store, e))?;
    if revoked {
        return Ok(inactive());
    }
    tracing::debug!(client_id = %client.id, jti = %claims.jti, "token introspected");
    Ok(no_store(serde_json::json!({
        "active": true,
        "scope": claims.scope,
        "client_id": claims.client_id,
        "token_type": "Bearer",
        "exp": claims.exp,
        "iat": claims.iat,
        "nbf": claims.nbf,
        "sub": claims.sub,
        "aud": claims.aud,
        "iss": claims.iss,
        "jti": claims.jti,
    })))
}
