//! How every revocation is committed and acknowledged: committed to the database, then
//! answered 200 only once published (see [`commit_revocation`]).

use super::*;
use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _};
use opentelemetry::KeyValue;

/// Commits a revocation, wakes the relay and waits until the revocation is published.
/// Returns the stored event (the existing one when the token was already revoked).
///
/// An acknowledgement is a publication: the request is answered 200 only once JetStream has
/// acknowledged the revocation on the current stream and the relay has recorded it, so
/// whatever was acknowledged before an instant is in the stream at a sequence read after
/// it. That lets the heartbeat vouch for every acknowledged revocation with no database at
/// hand (`heartbeat.rs`). While the database is out of reach nothing is committed and the
/// answer is 503 at once; a revocation committed but not published within
/// `publish_wait_ms` (NATS out of reach) is answered 503 too, stays committed, and is
/// answered 200 when asked again once it is published.
pub(super) async fn commit_revocation(
    state: &AppState,
    iss: String,
    rule: Rule,
    expires_at: u64,
    reason: Option<String>,
    requested_by: &str,
) -> Result<RevocationEvent, OAuthError> {
    let event = RevocationEvent {
        v: revocation::event::EVENT_VERSION,
        id: uuid::Uuid::now_v7().to_string(),
        rule,
        iss,
        expires_at,
        revoked_at: crate::clock::unix_now(),
        reason,
    };
    if !state.store.reachable() {
        return Err(OAuthError::Unavailable(crate::error::DATABASE_UNREACHABLE));
    }
    // Traced: the request's span ([`traced`]) gets the commit as a child, and the relay's
    // publish span under it.
    let request = opentelemetry::Context::current();
    let tracer = state.traces.as_ref().filter(|_| request.has_active_span());
    let trace = tracer.map(|_| request.span().span_context().clone());
    // Registered before the commit, so the relay's word cannot come first.
    let mut published = state.acks.register(&event.id, trace.clone());
    let mut commit = tracer.map(|t| t.tracer.start_with_context("revocation.commit", &request));
    let stored = state.store.insert(&event, requested_by).await;
    if let Some(span) = &mut commit {
        if let Err(err) = &stored {
            span.set_status(opentelemetry::trace::Status::error(err.to_string()));
        }
        span.end();
    }
    let stored = stored.map_err(|err| OAuthError::database(&state.store, err))?;
    if trace.is_some() {
        let span = request.span();
        span.set_attribute(KeyValue::new("revocation.id", stored.id.clone()));
        span.set_attribute(KeyValue::new("revocation.kind", stored.rule.kind()));
    }
    state.wake_relay.notify_one();
    state.metrics.revocations.inc();
    tracing::info!(
        id = %stored.id,
        kind = stored.rule.kind(),
        requested_by,
        reason = stored.reason.as_deref().unwrap_or(""),
        "revocation committed"
    );
    if stored.id != event.id {
        // Already revoked: that revocation's own publication is what counts.
        published = state.acks.register(&stored.id, trace);
    }
    wait_published(state, &stored.id, &mut published).await?;
    Ok(stored)
}

/// Waits up to `publish_wait_ms` for the revocation `id` to be published: this replica's
/// relay says so through `published`; another replica's relay is seen in the database,
/// looked at every second.
pub(super) async fn wait_published(
    state: &AppState,
    id: &str,
    published: &mut crate::relay::Waiter,
) -> Result<(), OAuthError> {
    // Committed already: a database lost now makes it "not published yet", never "nothing
    // was changed".
    let is_published = || async {
        state.store.is_published(id).await.or_else(|err| {
            state.store.note(&err);
            Ok::<bool, OAuthError>(false)
        })
    };
    let wait = Duration::from_millis(state.config.publish_wait_ms);
    let watched = tokio::time::timeout(wait, async {
        let mut look = tokio::time::interval(Duration::from_secs(1));
        look.tick().await;
        loop {
            tokio::select! {
                _ = published.published() => return Ok(()),
                _ = look.tick() => {
                    if is_published().await? {
                        return Ok(());
                    }
                }
            }
        }
    })
    .await;
    if let Ok(outcome) = watched {
        return outcome;
    }
    if is_published().await? {
        return Ok(());
    }
    tracing::warn!(%id, "revocation committed but not published in time; answered 503");
    Err(OAuthError::Unavailable(crate::error::NOT_PUBLISHED))
}

/// A revocation made as part of another change that has happened already: committed but
/// not yet published is `None`, not an error.
pub(super) fn published_or_pending(
    revocation: Result<RevocationEvent, OAuthError>,
) -> Result<Option<RevocationEvent>, OAuthError> {
    match revocation {
        Ok(event) => Ok(Some(event)),
        Err(OAuthError::Unavailable(why)) if why == crate::error::NOT_PUBLISHED => Ok(None),
        Err(err) => Err(err),
    }
}

/// Commits a client rule for every token `client_id` was issued up to now (the cut-off
/// covers this second, as `iat` has one-second resolution).
pub(super) async fn revoke_client_tokens(
    state: &AppState,
    client_id: &str,
    reason: &str,
    requested_by: &str,
) -> Result<RevocationEvent, OAuthError> {
    let not_before = crate::clock::unix_now() + 1;
    let rule = Rule::Client {
        client_id: client_id.to_string(),
        not_before,
    };
    let expires_at = not_before + state.config.max_ttl_s;
    let iss = state.config.issuer.clone();
    commit_revocation(
        state,
        iss,
        rule,
        expires_at,
        Some(reason.into()),
        requested_by,
    )
    .await
}
