//! No stranger can lock a client out: thousands of wrong secrets for a client id from one
//! address never make the right secret fail from another, the flooding source is refused
//! before any Argon2 work once past its budget, and a global cap on concurrent
//! verifications answers 503 rather than queueing without bound.

use std::net::{IpAddr, Ipv4Addr};

use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use system_tests::{Authz, Nats};

fn client_from(last_octet: u8) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last_octet)))
        .build()?)
}

/// While one address sends 2,000 wrong secrets for `admin` and `demo-client`, the right
/// secrets keep working from another address, every time through Argon2 (no credential
/// cache): tokens are issued and an admin revocation goes through. The flood costs exactly
/// its budget of Argon2 verifications, however many of its attempts arrive at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_secrets_locks_nobody_out() -> anyhow::Result<()> {
    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let authz = Authz::start_with(
        dir.path(),
        &[nats.url()],
        "auth_failure_limit = 5\nauth_failure_window_s = 600\ncredential_cache_entries = 0",
    )
    .await?;
    let attacker = client_from(2)?;
    let legit = client_from(1)?;
    let token_url = format!("{}/oauth2/token", authz.url);
    const FLOOD: usize = 2000;
    const CONCURRENCY: usize = 8;
    let flood = stream::iter(0..FLOOD)
        .map(|i| {
            let (attacker, url) = (attacker.clone(), token_url.clone());
            async move {
                let id = if i % 2 == 0 { "admin" } else { "demo-client" };
                let r = attacker
                    .post(&url)
                    .basic_auth(id, Some(format!("guess-{i}")))
                    .form(&[("grant_type", "client_credentials")])
                    .send()
                    .await
                    .ok()?;
                let retry = r.headers().contains_key("retry-after");
                Some((r.status().as_u16(), retry))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>();
    let legit_calls = async {
        let mut statuses = Vec::new();
        for _ in 0..10 {
            let r = legit
                .post(&token_url)
                .basic_auth("demo-client", Some("demo-secret"))
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await?;
            statuses.push(r.status().as_u16());
            let r = legit
                .post(format!("{}/admin/revocations", authz.admin_url))
                .basic_auth("admin", Some("admin-secret"))
                .json(&json!({"subject": "someone", "reason": "during the flood"}))
                .send()
                .await?;
            statuses.push(r.status().as_u16());
        }
        anyhow::Ok(statuses)
    };
    let (flood, legit_statuses) = tokio::join!(flood, legit_calls);
    let legit_statuses = legit_statuses?;
    assert!(
        legit_statuses.iter().all(|s| *s == 200),
        "the right secrets failed during the flood: {legit_statuses:?}"
    );
    let flood: Vec<(u16, bool)> = flood.into_iter().flatten().collect();
    assert_eq!(
        flood.len(),
        FLOOD,
        "attacker requests failed at the transport"
    );
    let unauthorized = flood.iter().filter(|(s, _)| *s == 401).count();
    let limited = flood
        .iter()
        .filter(|(s, retry)| *s == 429 && *retry)
        .count();
    // Attempts are taken from the budget before they are verified: however many arrive at
    // once, exactly the budget is verified.
    assert_eq!(unauthorized, 5, "{unauthorized} answered 401");
    assert_eq!(unauthorized + limited, FLOOD);
    // The Argon2 work the flood caused is its budget, plus what was in flight; the rest of
    // the verifications are the legitimate client's.
    let verifications = authz.metric("authz_client_auth_verifications_total").await as usize;
    assert!(
        verifications <= unauthorized + legit_statuses.len(),
        "{verifications} verifications"
    );
    assert_eq!(
        authz
            .metric("authz_client_auth_refused_total{reason=\"source_budget\"}")
            .await as usize,
        limited
    );
    assert_eq!(
        authz
            .metric("authz_client_auth_failures_total{reason=\"wrong_secret\"}")
            .await as usize,
        unauthorized
    );
    // The limited source itself: even the right secret waits for the window there.
    let r = attacker
        .post(&token_url)
        .basic_auth("demo-client", Some("demo-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await?;
    assert_eq!(r.status(), 429);
    Ok(())
}

/// With one verification slot and a short wait, a burst of wrong secrets from many
/// addresses (each within its budget) is answered 503 with `Retry-After` for what cannot be
/// verified in time, instead of queueing Argon2 work without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifications_have_a_global_cap() -> anyhow::Result<()> {
    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let authz = Authz::start_with(
        dir.path(),
        &[nats.url()],
        "max_concurrent_verifications = 1\nverification_wait_ms = 20\ncredential_cache_entries = 0",
    )
    .await?;
    let url = format!("{}/oauth2/token", authz.url);
    let burst = (10..70u8).map(|octet| {
        let url = url.clone();
        async move {
            let r = client_from(octet)
                .ok()?
                .post(&url)
                .basic_auth("demo-client", Some("wrong"))
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await
                .ok()?;
            let retry = r.headers().get("retry-after").cloned();
            let status = r.status().as_u16();
            let body: Value = r.json().await.ok()?;
            Some((status, retry, body))
        }
    });
    let answers: Vec<_> = futures::future::join_all(burst)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(answers.len(), 60);
    let busy: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 503).collect();
    assert!(
        !busy.is_empty(),
        "no request was refused for want of a slot"
    );
    for (_, retry, body) in &busy {
        assert_eq!(retry.as_ref().map(|v| v.as_bytes()), Some(&b"1"[..]));
        assert_eq!(body["error"], "temporarily_unavailable");
    }
    assert!(answers.iter().all(|(s, _, _)| matches!(s, 401 | 503)));
    assert_eq!(
        authz
            .metric("authz_client_auth_refused_total{reason=\"busy\"}")
            .await as usize,
        busy.len()
    );
    // The right secret goes through once the burst is over.
    assert!(authz.token("demo-client", "demo-secret").await.is_ok());
    Ok(())
}
