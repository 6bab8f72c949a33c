//! The receivers of other identity providers' revocation signals, on the public listener
//! (the providers call them):
//!
//! - `POST /oidc/backchannel-logout`: OpenID Connect Back-Channel Logout 1.0 (a form with
//!   `logout_token`). 200 once the session's (or the subject's) rule is committed and
//!   published; 400 `invalid_request` for a token that does not verify (§2.8).
//! - `POST /ssf/events`: Shared Signals push delivery (RFC 8935) of one Security Event Token
//!   (`application/secevent+jwt`). 202 once every rule it asks for is committed and
//!   published, events not acted on included (counted); 400 with an RFC 8935 §2.3 error
//!   otherwise.
//!
//! Either way a database or NATS outage answers 503 (nothing acknowledged: the sender retries),
//! and a `jti` seen before is refused. What is checked: `crate::signals`.

use super::*;
use crate::signals::{logout_rule, set_actions, EventAction, Kind, Refused, Verified};

/// `POST /oidc/backchannel-logout`.
pub(super) async fn backchannel_logout_post(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let kind = Kind::Logout;
    let form = content_type(&headers, "application/x-www-form-urlencoded")
        .then(|| url::form_urlencoded::parse(&body).collect::<Vec<_>>());
    let token = match form.as_deref() {
        Some([(name, token)]) if name == "logout_token" => token.to_string(),
        _ => {
            return refuse_logout(
                &state,
                Refused::Malformed,
                "a form with exactly one logout_token is required",
            )
        }
    };
    let now = crate::clock::unix_now();
    let verified = match verify(&state, kind, &token, now).await {
        Ok(Ok(v)) => v,
        Ok(Err(why)) => return refuse_logout(&state, why, &why.to_string()),
        Err(unavailable) => return unavailable,
    };
    let rule = match logout_rule(&verified.claims, now + 1) {
        Ok(rule) => rule,
        Err(why) => return refuse_logout(&state, why, &why.to_string()),
    };
    if let Err(response) = commit(&state, kind, &verified, vec![rule], now).await {
        return response;
    }
    state.metrics.signal(kind.as_str(), "revoked");
    let mut response = StatusCode::OK.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `POST /ssf/events`.
pub(super) async fn ssf_events_post(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let kind = Kind::Set;
    if !content_type(&headers, "application/secevent+jwt") {
        return refuse_set(
            &state,
            Refused::Malformed,
            "the body must be one SET, of type application/secevent+jwt",
        );
    }
    let Ok(token) = std::str::from_utf8(&body) else {
        return refuse_set(&state, Refused::Malformed, "the SET is not text");
    };
    let now = crate::clock::unix_now();
    let verified = match verify(&state, kind, token.trim(), now).await {
        Ok(Ok(v)) => v,
        Ok(Err(why)) => return refuse_set(&state, why, &why.to_string()),
        Err(unavailable) => return unavailable,
    };
    let actions = match set_actions(&verified.claims, &verified.issuer, now + 1) {
        Ok(actions) => actions,
        Err(why) => return refuse_set(&state, why, &why.to_string()),
    };
    let mut rules = Vec::new();
    for action in actions {
        match action {
            EventAction::Revoke(rule) => rules.push(rule),
            EventAction::Ignored(why) => {
                tracing::info!(issuer = %verified.issuer, why, "SET event acknowledged, not acted on");
                state.metrics.signal(kind.as_str(), "acknowledged");
            }
        }
    }
    let acted = !rules.is_empty();
    if let Err(response) = commit(&state, kind, &verified, rules, now).await {
        return response;
    }
    if acted {
        state.metrics.signal(kind.as_str(), "revoked");
    }
    StatusCode::ACCEPTED.into_response()
}

/// Whether the request's media type is `want` (parameters ignored).
fn content_type(headers: &axum::http::HeaderMap, want: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

/// The signal verified and not seen before; a replay, or the answer to send when the
/// database cannot say (503: nothing was acknowledged, the sender may retry).
async fn verify(
    state: &AppState,
    kind: Kind,
    token: &str,
    now: u64,
) -> Result<Result<Verified, Refused>, Response> {
    let verified = match state.signals.verify(kind, token, now).await {
        Ok(v) => v,
        Err(why) => return Ok(Err(why)),
    };
    if !state.store.reachable() {
        return Err(OAuthError::Unavailable(crate::error::DATABASE_UNREACHABLE).into_response());
    }
    match state
        .store
        .signal_seen(&verified.issuer, &verified.jti)
        .await
    {
        Ok(false) => Ok(Ok(verified)),
        Ok(true) => Ok(Err(Refused::Replayed)),
        Err(err) => Err(OAuthError::database(&state.store, err).into_response()),
    }
}

/// Commits every rule for the signal's issuer, all at once (each durable in the outbox before
/// any wait), answered once every one is published, then remembers the signal's `jti`. On
/// failure, the answer to send (503 while the database or NATS is out of reach): the `jti` is
/// not remembered, so the sender may retry, and a retry commits the rules again (the same
/// rules, a cut-off a moment later: never less revoked). Two identical signals arriving at
/// once may both pass the replay check; they commit the same rules.
async fn commit(
    state: &AppState,
    kind: Kind,
    signal: &Verified,
    rules: Vec<revocation::Rule>,
    now: u64,
) -> Result<(), Response> {
    let requested_by = kind.as_str();
    let commits = rules.into_iter().map(|rule| {
        let expires_at = rule.not_before().unwrap_or(now) + state.config.max_ttl_s;
        let reason = Some(format!("{requested_by} from {}", signal.issuer));
        commit_revocation(
            state,
            signal.issuer.clone(),
            rule,
            expires_at,
            reason,
            requested_by,
        )
    });
    for committed in futures::future::join_all(commits).await {
        committed.map_err(IntoResponse::into_response)?;
    }
    if let Err(err) = state
        .store
        .remember_signal(&signal.issuer, &signal.jti, signal.remember_until, now)
        .await
    {
        // The rules are committed: a replay could only add the same rules again.
        tracing::warn!(error = %err, "signal committed but its jti not remembered");
    }
    Ok(())
}

/// Back-Channel Logout 1.0 §2.8: 400, with an OAuth-style error body; never cached.
fn refuse_logout(state: &AppState, why: Refused, description: &str) -> Response {
    tracing::info!(reason = why.as_str(), "back-channel logout refused");
    state.metrics.signal(Kind::Logout.as_str(), why.as_str());
    let mut response = (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({"error": "invalid_request", "error_description": description})),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// RFC 8935 §2.3: 400 with `{"err": code, "description": text}`.
fn refuse_set(state: &AppState, why: Refused, description: &str) -> Response {
    tracing::info!(reason = why.as_str(), "SET refused");
    state.metrics.signal(Kind::Set.as_str(), why.as_str());
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({"err": why.set_error(), "description": description})),
    )
        .into_response()
}
