//! `POST /admin/revocations` and `GET /admin/revocations`: revoke a token, a subject or a
//! client, and list the rules in force.

use super::*;

/// Body of `POST /admin/revocations`: one token (by `jti` and `exp`, or the token itself),
/// every token of a subject, or every token of a client issued before `before`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminRevocation {
    jti: Option<String>,
    exp: Option<u64>,
    token: Option<String>,
    subject: Option<String>,
    client_id: Option<String>,
    /// Unix seconds; tokens whose `iat` is earlier are revoked. Default: every token issued
    /// up to and including the current second.
    before: Option<u64>,
    reason: Option<String>,
}

pub(super) const ADMIN_BODY_HELP: &str = "body must be one of {\"jti\",\"exp\"}, {\"token\"}, {\"subject\"[,\"before\"]} or {\"client_id\"[,\"before\"]}, with an optional \"reason\"";

pub(super) fn identifier(value: String, what: &'static str) -> Result<String, OAuthError> {
    if value.is_empty() || value.len() > 256 {
        return Err(OAuthError::InvalidRequest(what));
    }
    Ok(value)
}

pub(super) async fn admin_revocations_post(
    State(state): State<Arc<AppState>>,
    AdminBody {
        admin,
        headers,
        body,
    }: AdminBody,
) -> Result<Response, OAuthError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return Err(OAuthError::InvalidRequest(
            "content type must be application/json",
        ));
    }
    let request: AdminRevocation =
        serde_json::from_slice(&body).map_err(|_| OAuthError::InvalidRequest(ADMIN_BODY_HELP))?;
    if request.reason.as_ref().is_some_and(|r| r.len() > 512) {
        return Err(OAuthError::InvalidRequest(
            "reason is longer than 512 bytes",
        ));
    }
    let config = &state.config;
    let now = crate::clock::unix_now();
    let cutoff = |before: Option<u64>| -> Result<(u64, u64), OAuthError> {
        // iat has one-second resolution: "now" must cover a token issued earlier this second.
        let not_before = before.unwrap_or(now + 1);
        if not_before > now + 1 + config.leeway {
            return Err(OAuthError::InvalidRequest(
                "before must not be in the future",
            ));
        }
        // No token issued before the cut-off can outlive it by more than max_ttl.
        Ok((not_before, not_before + config.max_ttl))
    };
    let r = request;
    let (rule, expires_at) = match (r.jti, r.exp, r.token, r.subject, r.client_id, r.before) {
        (Some(jti), Some(exp), None, None, None, None) => {
            if exp > now + config.max_ttl + config.leeway {
                return Err(OAuthError::InvalidRequest(
                    "exp is later than any token this server issues can live",
                ));
            }
            let jti = identifier(jti, "jti must be 1 to 256 bytes")?;
            (Rule::Token { jti }, exp)
        }
        (None, None, Some(token), None, None, None) => {
            let claims = verify_own(&state.keys, &config.issuer, &token).ok_or(
                OAuthError::InvalidRequest("token was not issued by this server"),
            )?;
            (Rule::Token { jti: claims.jti }, claims.exp)
        }
        (None, None, None, Some(sub), None, before) => {
            let sub = identifier(sub, "subject must be 1 to 256 bytes")?;
            let (not_before, expires_at) = cutoff(before)?;
            (Rule::Subject { sub, not_before }, expires_at)
        }
        (None, None, None, None, Some(client_id), before) => {
            let client_id = identifier(client_id, "client_id must be 1 to 256 bytes")?;
            let (not_before, expires_at) = cutoff(before)?;
            (
                Rule::Client {
                    client_id,
                    not_before,
                },
                expires_at,
            )
        }
        _ => return Err(OAuthError::InvalidRequest(ADMIN_BODY_HELP)),
    };
    let event = commit_revocation(&state, rule, expires_at, r.reason, &admin.id).await?;
    Ok(Json(event).into_response())
}

/// `GET /admin/revocations?limit=N&after=SEQ`: the rules still in force, oldest first.
pub(super) async fn admin_revocations_get(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    AdminClient(_): AdminClient,
) -> Result<Response, OAuthError> {
    let number = |name: &str, default: i64| -> Result<i64, OAuthError> {
        match query.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or(OAuthError::InvalidRequest(
                    "limit and after must be non-negative integers",
                )),
        }
    };
    let limit = number("limit", 100)?.clamp(1, 1000);
    let after = number("after", 0)?;
    let rows = state
        .store
        .active(crate::clock::unix_now(), state.config.leeway, after, limit)
        .await
        .map_err(|e| OAuthError::database(&state.store, e))?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.seq))
        .flatten();
    let items: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|row| {
            let mut item = serde_json::to_value(&row.event).unwrap_or_default();
            item["seq"] = row.seq.into();
            item["requested_by"] = row.requested_by.into();
            item["published"] = row.published.into();
            item
        })
        .collect();
    Ok(Json(serde_json::json!({ "revocations": items, "next_after": next })).into_response())
}
