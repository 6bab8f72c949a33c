//! `POST /admin/revocations` and `GET /admin/revocations`: revoke a token, a subject, a
//! client or a session, of this server's tokens or another configured issuer's, and list the
//! rules in force.

use super::*;
use crate::store::StoredRevocation;

/// Body of `POST /admin/revocations`: one token (by `jti` and `exp`, or the token itself),
/// or every token of a subject, a client or a session issued before `before`; of the issuer
/// `iss` (this server when absent).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminRevocation {
    iss: Option<String>,
    jti: Option<String>,
    exp: Option<u64>,
    token: Option<String>,
    subject: Option<String>,
    client_id: Option<String>,
    session: Option<String>,
    /// Unix seconds; tokens whose `iat` is earlier are revoked. Default: every token issued
    /// up to and including the current second.
    before: Option<u64>,
    reason: Option<String>,
}

/// The query parameters of `GET /admin/revocations`.
const LIST_PARAMETERS: [&str; 7] = [
    "limit",
    "after",
    "subject",
    "client_id",
    "session",
    "jti",
    "iss",
];

pub(super) const ADMIN_BODY_HELP: &str = "body must be one of {\"jti\",\"exp\"}, {\"token\"}, {\"subject\"[,\"before\"]}, {\"client_id\"[,\"before\"]} or {\"session\"[,\"before\"]}, with an optional \"iss\" and \"reason\"";

/// What a `POST /admin/revocations` body asks to revoke: exactly one of the five forms.
enum Requested {
    /// One token by its `jti`; it lives until `exp`.
    Jti { jti: String, exp: u64 },
    /// One token, given whole.
    Token(String),
    /// Every token of a subject issued before the cut-off.
    Subject { sub: String, before: Option<u64> },
    /// Every token of a client issued before the cut-off.
    Client {
        client_id: String,
        before: Option<u64>,
    },
    /// Every token of an OpenID session (`sid`) issued before the cut-off.
    Session { sid: String, before: Option<u64> },
}

/// A body of `POST /admin/revocations` whose shape is checked; [`Requested::rule`] checks
/// the rest against the clock, the token lifetimes and the keys.
struct RevocationRequest {
    /// The issuer whose tokens are meant; `None`: this server.
    iss: Option<String>,
    what: Requested,
    reason: Option<String>,
}

impl TryFrom<AdminRevocation> for RevocationRequest {
    type Error = OAuthError;

    fn try_from(r: AdminRevocation) -> Result<Self, OAuthError> {
        if r.reason.as_ref().is_some_and(|r| r.len() > 512) {
            return Err(OAuthError::InvalidRequest(
                "reason is longer than 512 bytes",
            ));
        }
        let what = match (
            r.jti,
            r.exp,
            r.token,
            r.subject,
            r.client_id,
            r.session,
            r.before,
        ) {
            (Some(jti), Some(exp), None, None, None, None, None) => Requested::Jti { jti, exp },
            (None, None, Some(token), None, None, None, None) => Requested::Token(token),
            (None, None, None, Some(sub), None, None, before) => Requested::Subject { sub, before },
            (None, None, None, None, Some(client_id), None, before) => {
                Requested::Client { client_id, before }
            }
            (None, None, None, None, None, Some(sid), before) => Requested::Session { sid, before },
            _ => return Err(OAuthError::InvalidRequest(ADMIN_BODY_HELP)),
        };
        Ok(RevocationRequest {
            iss: r.iss,
            what,
            reason: r.reason,
        })
    }
}

impl RevocationRequest {
    /// The issuer, the rule, and until when it must be kept, checked at `now`: an issuer
    /// this hub keeps rules for, no `exp` or `before` beyond what a token can reach (the
    /// gateways refuse tokens living longer than `max_ttl_s`, whoever issued them), a token
    /// signed by this server, identifiers of 1 to 256 bytes. The identifiers are checked here
    /// too, not in [`RevocationRequest::try_from`], so that errors keep their order (for a
    /// `jti`, an `exp` too late is answered first).
    fn rule(self, state: &AppState, now: u64) -> Result<(String, Rule, u64), OAuthError> {
        let config = &state.config;
        let iss = match self.iss {
            None => config.issuer.clone(),
            Some(iss) if config.knows_issuer(&iss) => iss,
            Some(_) => {
                return Err(OAuthError::InvalidRequest(
                    "iss is not an issuer this server keeps rules for",
                ))
            }
        };
        if matches!(self.what, Requested::Token(_)) && iss != config.issuer {
            return Err(OAuthError::InvalidRequest(
                "a token is revoked whole only when this server issued it; give jti and exp",
            ));
        }
        let (rule, expires_at) = self.what.rule(state, now)?;
        Ok((iss, rule, expires_at))
    }
}

impl Requested {
    /// See [`RevocationRequest::rule`].
    fn rule(self, state: &AppState, now: u64) -> Result<(Rule, u64), OAuthError> {
        let config = &state.config;
        let cutoff = |before: Option<u64>| -> Result<(u64, u64), OAuthError> {
            // iat has one-second resolution: "now" must cover a token issued earlier this second.
            let not_before = before.unwrap_or(now + 1);
            if not_before > now + 1 + config.leeway_s {
                return Err(OAuthError::InvalidRequest(
                    "before must not be in the future",
                ));
            }
            // No token issued before the cut-off can outlive it by more than max_ttl.
            Ok((not_before, not_before + config.max_ttl_s))
        };
        Ok(match self {
            Requested::Jti { jti, exp } => {
                if exp > now + config.max_ttl_s + config.leeway_s {
                    return Err(OAuthError::InvalidRequest(
                        "exp is later than any token this server issues can live",
                    ));
                }
                let jti = identifier(jti, "jti must be 1 to 256 bytes")?;
                (Rule::Token { jti }, exp)
            }
            Requested::Token(token) => {
                let claims = verify_own(&state.keys, &config.issuer, &token).ok_or(
                    OAuthError::InvalidRequest("token was not issued by this server"),
                )?;
                (Rule::Token { jti: claims.jti }, claims.exp)
            }
            Requested::Subject { sub, before } => {
                let sub = identifier(sub, "subject must be 1 to 256 bytes")?;
                let (not_before, expires_at) = cutoff(before)?;
                (Rule::Subject { sub, not_before }, expires_at)
            }
            Requested::Client { client_id, before } => {
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
            Requested::Session { sid, before } => {
                let sid = identifier(sid, "session must be 1 to 256 bytes")?;
                let (not_before, expires_at) = cutoff(before)?;
                (Rule::Session { sid, not_before }, expires_at)
            }
        })
    }
}

fn identifier(value: String, what: &'static str) -> Result<String, OAuthError> {
    if value.is_empty() || value.len() > 256 {
        return Err(OAuthError::InvalidRequest(what));
    }
    Ok(value)
}

/// `POST /admin/revocations`: commits the revocation and answers the stored event once it is
/// published. With `?wait=enforced` (and `timeout_ms`, 10000 by default, at most 60000), it
/// answers the revocation's receipt once every live gateway that may accept tokens has applied
/// it (200), or when the time is up (202, the receipt naming the gateways that have not).
pub(super) async fn admin_revocations_post(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    AdminBody {
        admin,
        headers,
        body,
    }: AdminBody,
) -> Result<Response, OAuthError> {
    let timeout_ms = match query.get("timeout_ms") {
        None => 10_000,
        Some(t) => t
            .parse::<u64>()
            .ok()
            .filter(|t| (1..=60_000).contains(t))
            .ok_or(OAuthError::InvalidRequest(
                "timeout_ms must be between 1 and 60000",
            ))?,
    };
    let wait = match query.get("wait").map(String::as_str) {
        None if !query.contains_key("timeout_ms") => None,
        Some("enforced") => Some(Duration::from_millis(timeout_ms)),
        _ => {
            return Err(OAuthError::InvalidRequest(
                "wait must be enforced (with an optional timeout_ms)",
            ))
        }
    };
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return Err(OAuthError::InvalidRequest(
            "content type must be application/json",
        ));
    }
    let body: AdminRevocation =
        serde_json::from_slice(&body).map_err(|_| OAuthError::InvalidRequest(ADMIN_BODY_HELP))?;
    let request = RevocationRequest::try_from(body)?;
    let reason = request.reason.clone();
    let (iss, rule, expires_at) = request.rule(&state, crate::clock::unix_now())?;
    let event = commit_revocation(&state, iss, rule, expires_at, reason, &admin.id).await?;
    let Some(wait) = wait else {
        return Ok(Json(event).into_response());
    };
    let deadline = tokio::time::Instant::now() + wait;
    // The row is read until it has its stream position (once, normally: the revocation was
    // published before the commit returned); from then on only the fleet view changes, and
    // a wake costs no database read.
    let mut found = None;
    loop {
        let (stored, place) = match found.take() {
            Some(known) => known,
            None => stored_revocation(&state, &event.id).await?.ok_or_else(|| {
                OAuthError::internal("a committed revocation is not in the database")
            })?,
        };
        let (receipt, enforced) = receipt_of(&state, &stored, place);
        if place.is_some() {
            found = Some((stored, place));
        }
        if enforced {
            return Ok(Json(receipt).into_response());
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok((StatusCode::ACCEPTED, Json(receipt)).into_response());
        }
        // A status arrives at least every status_interval_ms; look again at least every
        // 100 ms in case one came between the look and the wait.
        let _ = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + Duration::from_millis(100)),
            state.fleet.changed(),
        )
        .await;
    }
}

/// `GET /admin/revocations/{id}`: the revocation's receipt.
pub(super) async fn admin_revocation_get(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    AdminClient(_): AdminClient,
) -> Result<Response, OAuthError> {
    match receipt(&state, &id).await? {
        Some((receipt, _)) => Ok(Json(receipt).into_response()),
        None => Err(OAuthError::NotFound("no revocation has this id")),
    }
}

/// The receipt of revocation `id`: the revocation, where and when the stream took it, and
/// for every gateway process of the view whether it stands at or past it, and since when.
///
/// It is `enforced` once it is published, the view has listened for `fleet_window_ms`, every
/// expected gateway is in it, and every process that talks (a status within three of its
/// intervals) and may accept tokens has applied it (`pending` names the others). A process
/// that has gone silent cannot be waited for: `unreachable` names it, and it does not block
/// when a staleness bound makes it refuse tokens (`on_stale = "reject"`): by
/// `guaranteed_from_ms` (published, plus the largest `max_staleness_ms` any gateway reported)
/// every gateway that reports fresh enforces the revocation, whatever the view knows. One
/// that serves while stale has no such bound: while it is unreachable and behind, nothing is
/// enforced.
async fn receipt(
    state: &AppState,
    id: &str,
) -> Result<Option<(serde_json::Value, bool)>, OAuthError> {
    Ok(stored_revocation(state, id)
        .await?
        .map(|(stored, place)| receipt_of(state, &stored, place)))
}

/// Revocation `id` as stored, with its stream position (epoch, sequence, publication time)
/// once published.
async fn stored_revocation(
    state: &AppState,
    id: &str,
) -> Result<Option<(StoredRevocation, Option<(u64, u64, u64)>)>, OAuthError> {
    state
        .store
        .revocation(id)
        .await
        .map_err(|e| OAuthError::database(&state.store, e))
}

/// The receipt of a stored revocation, from the fleet view as it is now (see [`receipt`]).
fn receipt_of(
    state: &AppState,
    stored: &StoredRevocation,
    place: Option<(u64, u64, u64)>,
) -> (serde_json::Value, bool) {
    let window = Duration::from_millis(state.config.fleet_window_ms);
    let (epoch, sequence) = place.map_or((u64::MAX, u64::MAX), |(e, s, _)| (e, s));
    let receipts = state.fleet.receipts(window, epoch, sequence);
    let gateways: Vec<serde_json::Value> = receipts
        .iter()
        .map(|r| {
            serde_json::json!({
                "gateway": r.status.gateway,
                "instance": r.status.instance,
                "applied": r.applied_at_ms.is_some(),
                "applied_at_ms": r.applied_at_ms,
                "talking": r.talking,
                "accepts_tokens": r.status.may_accept_tokens(),
                "bounded_by_staleness": r.status.bounded_by_staleness(),
                "ready": r.status.ready,
                "epoch": r.status.epoch,
                "last_sequence": r.status.last_sequence,
                "seen_ms_ago": r.seen_ago.as_millis() as u64,
            })
        })
        .collect();
    let behind = |r: &&crate::fleet::Receipt| r.applied_at_ms.is_none();
    let pending: Vec<&str> = receipts
        .iter()
        .filter(behind)
        .filter(|r| r.talking && r.status.may_accept_tokens())
        .map(|r| r.status.gateway.as_str())
        .collect();
    let silent: Vec<&crate::fleet::Receipt> = receipts
        .iter()
        .filter(behind)
        .filter(|r| !r.talking)
        .collect();
    let missing: Vec<&str> = state
        .config
        .expected_gateways
        .iter()
        .filter(|id| !receipts.iter().any(|r| r.status.gateway == **id))
        .map(String::as_str)
        .collect();
    let enforced = place.is_some()
        && state.fleet.complete(window)
        && pending.is_empty()
        && missing.is_empty()
        && silent.iter().all(|r| r.status.bounded_by_staleness());
    let unreachable: Vec<&str> = silent.iter().map(|r| r.status.gateway.as_str()).collect();
    let guaranteed_from = place
        .map(|(_, _, published_at)| (published_at + 1) * 1000 + state.fleet.largest_bound_ms());
    let receipt = serde_json::json!({
        "revocation": stored.event,
        "published": stored.published,
        "stream": place.map(|(epoch, sequence, _)| serde_json::json!({"epoch": epoch, "sequence": sequence})),
        "gateways": gateways,
        "pending": pending,
        "unreachable": unreachable,
        "missing": missing,
        "view_complete": state.fleet.complete(window),
        "enforced": enforced,
        "guaranteed_from_ms": guaranteed_from,
        "requested_by": stored.requested_by,
    });
    (receipt, enforced)
}

/// `GET /admin/revocations?limit=N&after=SEQ`: the rules still in force, oldest first;
/// with one of `subject`, `client_id`, `session` or `jti`, only the rules of that subject,
/// client, session or token, and with `iss`, only those of that issuer.
pub(super) async fn admin_revocations_get(
    State(state): State<Arc<AppState>>,
    Query(query): Query<Vec<(String, String)>>,
    AdminClient(_): AdminClient,
) -> Result<Response, OAuthError> {
    let mut params: HashMap<&str, &str> = HashMap::new();
    for (name, value) in &query {
        if !LIST_PARAMETERS.contains(&name.as_str()) {
            return Err(OAuthError::InvalidRequest(
                "the parameters are limit, after, subject, client_id, session, jti and iss",
            ));
        }
        if params.insert(name, value).is_some() {
            return Err(OAuthError::InvalidRequest(
                "a parameter appears more than once",
            ));
        }
    }
    let number = |name: &str, default: i64| -> Result<i64, OAuthError> {
        match params.get(name) {
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
    let mut rules = [
        ("subject", "subject"),
        ("client_id", "client"),
        ("session", "session"),
        ("jti", "token"),
    ]
    .into_iter()
    .filter_map(|(param, kind)| params.get(param).map(|key| (kind, *key)));
    let rule = rules.next();
    if rules.next().is_some() {
        return Err(OAuthError::InvalidRequest(
            "give at most one of subject, client_id, session and jti",
        ));
    }
    let iss = params.get("iss").copied();
    if rule.is_some_and(|(_, key)| key.is_empty() || key.len() > 256)
        || iss.is_some_and(|i| i.is_empty() || i.len() > 2048)
    {
        return Err(OAuthError::InvalidRequest(
            "a search value must be 1 to 256 bytes (an issuer up to 2048)",
        ));
    }
    let filter = crate::store::RuleFilter { rule, iss };
    let rows = state
        .store
        .search(
            crate::clock::unix_now(),
            state.config.leeway_s,
            &filter,
            after,
            limit,
        )
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

    use super::*;

    fn request(body: serde_json::Value) -> Result<RevocationRequest, OAuthError> {
        let body: AdminRevocation = serde_json::from_value(body).unwrap();
        RevocationRequest::try_from(body)
    }

    fn refusal(body: serde_json::Value) -> &'static str {
        match request(body) {
            Err(OAuthError::InvalidRequest(why)) => why,
            Err(other) => panic!("not invalid_request: {other}"),
            Ok(_) => panic!("accepted"),
        }
    }

    /// Each of the four forms is read as itself, with its reason.
    #[test]
    fn each_form_is_read() {
        let jti = request(serde_json::json!({"jti": "j", "exp": 5, "reason": "r"})).unwrap();
        assert!(matches!(jti.what, Requested::Jti { ref jti, exp: 5 } if jti == "j"));
        assert_eq!(jti.reason.as_deref(), Some("r"));
        let token = request(serde_json::json!({"token": "t"})).unwrap();
        assert!(matches!(token.what, Requested::Token(ref t) if t == "t"));
        let subject = request(serde_json::json!({"subject": "s", "before": 7})).unwrap();
        assert!(
            matches!(subject.what, Requested::Subject { ref sub, before: Some(7) } if sub == "s")
        );
        let client = request(serde_json::json!({"client_id": "c"})).unwrap();
        assert!(
            matches!(client.what, Requested::Client { ref client_id, before: None } if client_id == "c")
        );
        let session =
            request(serde_json::json!({"iss": "https://idp", "session": "s1", "before": 3}))
                .unwrap();
        assert!(
            matches!(session.what, Requested::Session { ref sid, before: Some(3) } if sid == "s1")
        );
        assert_eq!(session.iss.as_deref(), Some("https://idp"));
        assert!(client.iss.is_none());
    }

    /// Mixed or incomplete forms are refused with the body's help; a long reason first.
    #[test]
    fn other_shapes_are_refused() {
        for body in [
            serde_json::json!({}),
            serde_json::json!({"jti": "j"}),
            serde_json::json!({"exp": 5}),
            serde_json::json!({"jti": "j", "exp": 5, "token": "t"}),
            serde_json::json!({"token": "t", "before": 5}),
            serde_json::json!({"subject": "s", "client_id": "c"}),
            serde_json::json!({"session": "s", "subject": "s"}),
            serde_json::json!({"session": "s", "jti": "j", "exp": 5}),
            serde_json::json!({"iss": "https://idp"}),
            serde_json::json!({"before": 5}),
        ] {
            assert_eq!(refusal(body.clone()), ADMIN_BODY_HELP, "{body}");
        }
        let long = "x".repeat(513);
        assert_eq!(
            refusal(serde_json::json!({"jti": "j", "reason": long})),
            "reason is longer than 512 bytes"
        );
        assert!(request(serde_json::json!({"token": "t", "reason": "x".repeat(512)})).is_ok());
    }
}
