//! The core promise end to end: tokens issued, checked at the gateway, revoked over
//! mutual-TLS NATS, enforced by every gateway, surviving restarts.

use std::time::{Duration, Instant};

use system_tests::{eventually, Gateway, Stack};

const WAIT: Duration = Duration::from_secs(10);

/// A token passes the gateway with its identity forwarded; revoked through RFC 7009 it is
/// refused with 401 invalid_token within a bounded wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_is_refused() -> anyhow::Result<()> {
    let stack = Stack::start(1).await?;
    let gw = &stack.gateways[0];
    let token = stack.authz.token("demo-client", "demo-secret").await?;
    let http = reqwest::Client::new();

    let response = http
        .get(format!("{}/echo/hello?x=1", gw.url))
        .bearer_auth(&token)
        .header("X-Auth-Subject", "forged")
        .header("X-Auth-Scope", "everything")
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value = response.json().await?;
    assert_eq!(echo["path"], "/echo/hello");
    assert_eq!(echo["query"], "x=1");
    let headers = &echo["headers"];
    assert_eq!(headers["x-auth-subject"], "demo-client");
    assert_eq!(headers["x-auth-client-id"], "demo-client");
    assert_eq!(headers["x-auth-scope"], "echo:read echo:write");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert!(
        headers.get("authorization").is_none(),
        "the token must not reach the upstream"
    );

    let revoked_at = Instant::now();
    assert_eq!(
        stack
            .authz
            .revoke("demo-client", "demo-secret", &token)
            .await?,
        200
    );
    let acknowledged = Instant::now();
    eventually(WAIT, "the revoked token to be refused", || async {
        (gw.call(&http, "/echo/hello", &token).await == 401).then_some(())
    })
    .await?;
    println!(
        "revocation delay: {:?} from the revoke API's 200 to the first 401 ({:?} for the revoke call itself)",
        acknowledged.elapsed(),
        acknowledged - revoked_at
    );

    let refused_before = gw
        .metric("gateway_auth_failures_total{reason=\"revoked\"}")
        .await;
    let response = http
        .get(format!("{}/echo/hello", gw.url))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"].to_str()?.to_string();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["error"], "invalid_token");
    let refused_after = gw
        .metric("gateway_auth_failures_total{reason=\"revoked\"}")
        .await;
    assert_eq!(refused_after, refused_before + 1.0);

    // Another token of the same client is unaffected.
    let fresh = stack.authz.token("demo-client", "demo-secret").await?;
    assert_eq!(gw.call(&http, "/echo/hello", &fresh).await, 200);
    Ok(())
}

/// Two gateways on one NATS both enforce an admin revocation by jti.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gateway_enforces_admin_revocation() -> anyhow::Result<()> {
    let stack = Stack::start(2).await?;
    let token = stack.authz.token("demo-client", "demo-secret").await?;
    let claims = claims_of(&token);
    let http = reqwest::Client::new();
    for gw in &stack.gateways {
        assert_eq!(gw.call(&http, "/echo/", &token).await, 200);
    }
    let started = Instant::now();
    let (status, body) = stack
        .authz
        .admin_revoke(
            serde_json::json!({"jti": claims["jti"], "exp": claims["exp"], "reason": "test"}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["jti"], claims["jti"]);
    assert_eq!(body["kind"], "token");
    for (i, gw) in stack.gateways.iter().enumerate() {
        gw.wait_refused(&token).await?;
        println!(
            "gateway {i} enforces the admin revocation after {:?}",
            started.elapsed()
        );
    }
    // Revoking again is idempotent: the same event comes back.
    let (status, again) = stack
        .authz
        .admin_revoke(serde_json::json!({"jti": claims["jti"], "exp": claims["exp"]}))
        .await?;
    assert_eq!(status, 200);
    assert_eq!(again["id"], body["id"]);
    Ok(())
}

/// A gateway started after the revocation is not ready until it has replayed the stream, and
/// refuses the revoked token from its very first request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_gateway_replays_before_serving() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let revoked = stack.authz.token("demo-client", "demo-secret").await?;
    let valid = stack.authz.token("demo-client", "demo-secret").await?;
    // Some history before and after the revocation that matters.
    for _ in 0..50 {
        let t = stack.authz.token("other-client", "other-secret").await?;
        assert_eq!(
            stack
                .authz
                .revoke("other-client", "other-secret", &t)
                .await?,
            200
        );
    }
    assert_eq!(
        stack
            .authz
            .revoke("demo-client", "demo-secret", &revoked)
            .await?,
        200
    );
    stack.authz.wait_outbox_drained(WAIT).await?;
    // The relay counts a batch as published just after marking it in the database, which
    // is what the backlog reads: wait for the count as well.
    let authz_metrics = eventually(WAIT, "51 revocations counted as published", || async {
        let text = stack.authz.metrics().await;
        text.contains("authz_revocations_published_total 51")
            .then_some(text)
    })
    .await?;
    // One latency per acknowledged publish: at least 51 (a publish whose ack was late under
    // load is sent again, deduplicated by the stream, and counted again).
    let latencies: f64 = authz_metrics
        .lines()
        .find_map(|l| l.strip_prefix("authz_publish_latency_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(latencies >= 51.0, "publish latency recorded: {latencies}");

    let gw = Gateway::start(
        "gateway-3",
        &[stack.nats.url()],
        &stack.authz,
        &stack.upstream,
    )
    .await?;
    let http = reqwest::Client::new();
    // From the first request on, the revoked token never passes: before the replay the
    // gateway answers 503, after it 401.
    let mut saw_not_ready = false;
    let deadline = Instant::now() + WAIT;
    loop {
        let status = gw.call(&http, "/echo/", &revoked).await;
        assert!(
            matches!(status, 0 | 401 | 503),
            "revoked token got {status}"
        );
        let ready = gw.readyz().await;
        saw_not_ready |= ready == 503;
        if status == 401 && ready == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "gateway never became ready");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    println!("the late gateway was seen not ready before its replay: {saw_not_ready}");
    assert_eq!(gw.call(&http, "/echo/", &valid).await, 200);
    assert_eq!(gw.metric("gateway_revocation_rules").await, 51.0);
    Ok(())
}

/// Revocations committed while NATS is down are published by the restarted authz-server
/// once NATS is back, and every gateway then enforces them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_restart_while_nats_down_publishes_outbox() -> anyhow::Result<()> {
    let mut stack = Stack::start(2).await?;
    let http = reqwest::Client::new();
    let tokens = [
        stack.authz.token("demo-client", "demo-secret").await?,
        stack.authz.token("demo-client", "demo-secret").await?,
    ];
    for gw in &stack.gateways {
        for token in &tokens {
            assert_eq!(gw.call(&http, "/echo/", token).await, 200);
        }
    }
    stack.nats.kill();
    // Committed; not acknowledged (503), since they cannot be published.
    let statuses = futures::future::join_all(
        tokens
            .iter()
            .map(|token| stack.authz.revoke("demo-client", "demo-secret", token)),
    )
    .await;
    for status in statuses {
        assert_eq!(status?, 503);
    }
    // Restart the authz-server with both revocations committed but unpublished.
    stack.authz.restart().await?;
    stack.nats.restart()?;
    for gw in &stack.gateways {
        for token in &tokens {
            gw.wait_refused(token).await?;
        }
    }
    let fresh = stack.authz.token("demo-client", "demo-secret").await?;
    for gw in &stack.gateways {
        assert_eq!(gw.call(&http, "/echo/", &fresh).await, 200);
        assert_eq!(
            gw.metric("gateway_auth_failures_total{reason=\"issuer\"}")
                .await,
            0.0
        );
    }
    Ok(())
}

/// Publishes `payloads` on the revocation stream as the authz identity (the only one that
/// may), each acknowledged.
async fn publish_as_authz(stack: &Stack, payloads: &[Vec<u8>]) -> anyhow::Result<()> {
    let (client, _) = system_tests::connect_nats_as(&stack.nats.url(), "authz").await?;
    let js = revocation::stream::context(client);
    for payload in payloads {
        js.publish("authz.revocations.v1.token", payload.clone().into())
            .await?
            .await?;
    }
    Ok(())
}

/// Garbage on the stream (not a JSON event, oversized), and an unreadable event that expired
/// long ago, is skipped and counted; good events around it still apply and the gateway stays
/// ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_are_skipped_and_counted() -> anyhow::Result<()> {
    let stack = Stack::start(1).await?;
    let gw = &stack.gateways[0];
    let bad: [&[u8]; 5] = [
        b"{not json",
        br#"{"v":"1","kind":"token","id":"x"}"#,
        br#"{"kind":"token","id":"x"}"#,
        &[b'x'; 9000],
        br#"{"v":99,"kind":"token","id":"x","expires_at":1}"#,
    ];
    publish_as_authz(&stack, &bad.map(<[u8]>::to_vec)).await?;
    let token = stack.authz.token("demo-client", "demo-secret").await?;
    assert_eq!(
        stack
            .authz
            .revoke("demo-client", "demo-secret", &token)
            .await?,
        200
    );
    gw.wait_refused(&token).await?;
    for (reason, count) in [
        ("malformed", 3.0),
        ("oversized", 1.0),
        ("unknown_version", 1.0),
    ] {
        let series = format!("gateway_revocation_events_skipped_total{{reason=\"{reason}\"}}");
        assert_eq!(gw.metric(&series).await, count, "{series}");
    }
    assert_eq!(gw.readyz().await, 200);
    assert_eq!(gw.metric("gateway_stale").await, 0.0);
    Ok(())
}

/// A well-formed event this gateway cannot apply (an unknown version or kind, fields out of
/// range) may be a revocation it does not understand: the gateway stops reporting fresh
/// (`unknown_event`) and refuses protected routes with 503 until the event expires, however
/// fresh the heartbeats say it is, and a gateway that starts later and replays it does the
/// same. Variants: each on its own stack would be slower; the unit tests classify many, this
/// proves the effect for three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_revocations_are_never_fresh() -> anyhow::Result<()> {
    let stack = Stack::start(1).await?;
    let gw = &stack.gateways[0];
    let http = reqwest::Client::new();
    let token = stack.authz.token("demo-client", "demo-secret").await?;
    assert_eq!(gw.call(&http, "/echo/x", &token).await, 200);
    let until = revocation::unix_now() + 3600;
    let long = "i".repeat(1025);
    let unreadable = [
        format!(r#"{{"v":2,"kind":"token","id":"a","jti":"j","expires_at":{until}}}"#),
        format!(r#"{{"v":1,"kind":"tenant","id":"b","tenant":"t","expires_at":{until}}}"#),
        format!(
            r#"{{"v":1,"kind":"token","id":"c","iss":"{long}","jti":"j","expires_at":{until},"revoked_at":1}}"#
        ),
    ];
    publish_as_authz(&stack, &unreadable.map(String::into_bytes)).await?;
    eventually(Duration::from_secs(10), "the gateway not ready", || async {
        (gw.readyz().await == 503).then_some(())
    })
    .await?;
    let body: serde_json::Value = reqwest::get(format!("{}/readyz", gw.admin_url))
        .await?
        .json()
        .await?;
    assert!(
        body["reasons"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r == "unknown_event")),
        "{body}"
    );
    // The heartbeats keep coming: fresh by them, yet not fresh.
    assert!(
        body["staleness_ms"].as_i64().is_some_and(|s| s >= 0),
        "{body}"
    );
    assert_eq!(gw.call(&http, "/echo/x", &token).await, 503);
    assert_eq!(gw.call(&http, "/public/x", "").await, 200);
    assert_eq!(gw.metric("gateway_stale").await, 1.0);
    for reason in ["unknown_version", "unknown_kind", "invalid"] {
        let series = format!("gateway_revocation_events_skipped_total{{reason=\"{reason}\"}}");
        assert_eq!(gw.metric(&series).await, 1.0, "{series}");
    }
    let late = Gateway::start(
        "gateway-2",
        &[stack.nats.url()],
        &stack.authz,
        &stack.upstream,
    )
    .await?;
    eventually(Duration::from_secs(15), "the replay done", || async {
        (late.metric("gateway_revocation_caught_up").await == 1.0).then_some(())
    })
    .await?;
    assert_eq!(late.readyz().await, 503);
    assert_eq!(late.call(&http, "/echo/x", &token).await, 503);
    Ok(())
}

/// A long replay is read by two consumers, one per half of the stream (here from 200
/// messages on): the gateway applies both halves before it says it is ready, and refuses
/// tokens revoked in either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_replay_applies_both_halves() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(stack.authz.token("demo-client", "demo-secret").await?);
    }
    let jti = |t: &str| claims_of(t)["jti"].as_str().unwrap_or_default().to_string();
    let mut jtis: Vec<String> = (0..1000).map(|i| format!("filler-{i}")).collect();
    jtis[10] = jti(&tokens[0]);
    jtis[900] = jti(&tokens[1]);
    system_tests::seed::seed_revocations_of(&stack.nats.url(), &stack.authz, jtis).await?;
    let gw = Gateway::start_with(
        "gateway-3",
        "gateway-3",
        &[stack.nats.url()],
        &stack.authz,
        &stack.upstream,
        "replay_split_min = 200",
    )
    .await?;
    gw.wait_ready().await?;
    let http = reqwest::Client::new();
    assert_eq!(
        gw.call(&http, "/echo/", &tokens[0]).await,
        401,
        "first half"
    );
    assert_eq!(
        gw.call(&http, "/echo/", &tokens[1]).await,
        401,
        "second half"
    );
    assert_eq!(gw.call(&http, "/echo/", &tokens[2]).await, 200);
    assert_eq!(
        gw.metric("gateway_revocation_split_replays_total").await,
        1.0
    );
    assert_eq!(gw.metric("gateway_revocation_rules").await, 1000.0);
    assert_eq!(
        gw.metric("gateway_revocation_events_applied_total").await,
        1000.0
    );
    assert_eq!(gw.metric("gateway_revocation_last_sequence").await, 1000.0);
    Ok(())
}

fn claims_of(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or_default()
}

/// Subject and client rules revoke every token issued before the cut-off on every gateway and
/// leave later tokens alone; the admin listing pages through the rules in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_and_client_rules() -> anyhow::Result<()> {
    let stack = Stack::start(2).await?;
    let http = reqwest::Client::new();
    let demo_old = stack.authz.token("demo-client", "demo-secret").await?;
    let other_old = stack.authz.token("other-client", "other-secret").await?;

    let (status, body) = stack
        .authz
        .admin_revoke(serde_json::json!({"subject": "demo-client", "reason": "account closed"}))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kind"], "subject");
    assert_eq!(body["sub"], "demo-client");
    let cutoff = body["not_before"].as_u64().unwrap_or(0);
    assert_eq!(body["expires_at"].as_u64(), Some(cutoff + 3600));
    let (status, body) = stack
        .authz
        .admin_revoke(serde_json::json!({"client_id": "other-client", "before": cutoff}))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kind"], "client");

    for gw in &stack.gateways {
        for token in [&demo_old, &other_old] {
            gw.wait_refused(token).await?;
        }
    }
    // Tokens issued after the cut-off (iat has one-second resolution) pass.
    eventually(WAIT, "the clock to pass the cut-off", || async {
        (revocation::unix_now() >= cutoff).then_some(())
    })
    .await?;
    let demo_new = stack.authz.token("demo-client", "demo-secret").await?;
    let other_new = stack.authz.token("other-client", "other-secret").await?;
    for gw in &stack.gateways {
        assert_eq!(gw.call(&http, "/echo/", &demo_new).await, 200);
        assert_eq!(gw.call(&http, "/echo/", &other_new).await, 200);
    }

    // A future cut-off is refused.
    let (status, _) = stack
        .authz
        .admin_revoke(serde_json::json!({"subject": "x", "before": revocation::unix_now() + 3600}))
        .await?;
    assert_eq!(status, 400);

    // The listing pages through every rule in force.
    let (status, _) = stack
        .authz
        .admin_revoke(serde_json::json!({"token": demo_new}))
        .await?;
    assert_eq!(status, 200);
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page: serde_json::Value = http
            .get(format!(
                "{}/admin/revocations?limit=2&after={after}",
                stack.authz.admin_url
            ))
            .basic_auth("admin", Some("admin-secret"))
            .send()
            .await?
            .json()
            .await?;
        for item in page["revocations"].as_array().cloned().unwrap_or_default() {
            assert_eq!(item["requested_by"], "admin");
            seen.push(item["kind"].as_str().unwrap_or_default().to_string());
        }
        match page["next_after"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(seen, ["subject", "client", "token"]);
    let denied = http
        .get(format!("{}/admin/revocations", stack.authz.admin_url))
        .basic_auth("demo-client", Some("demo-secret"))
        .send()
        .await?;
    assert_eq!(denied.status(), 403);
    Ok(())
}

/// Out-of-order, duplicate and already-expired events, garbage heartbeats, and heartbeats
/// from a gateway identity never loosen what is enforced and never stop the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_events_never_loosen() -> anyhow::Result<()> {
    let stack = Stack::start(1).await?;
    let gw = &stack.gateways[0];
    let http = reqwest::Client::new();
    let other = stack.authz.token("other-client", "other-secret").await?;
    let (authz, _) = system_tests::connect_nats_as(&stack.nats.url(), "authz").await?;
    let js = revocation::stream::context(authz.clone());
    let now = revocation::unix_now();
    let event = |id: &str, rule: serde_json::Value, expires_at: u64| {
        let mut e = serde_json::json!({"v": 1, "id": id, "iss": stack.authz.url,
            "expires_at": expires_at, "revoked_at": now});
        if let (Some(e), Some(r)) = (e.as_object_mut(), rule.as_object()) {
            e.extend(r.clone());
        }
        serde_json::to_vec(&e).unwrap_or_default()
    };
    let newer = event(
        "e-new",
        serde_json::json!({"kind": "client", "client_id": "other-client", "not_before": now + 1}),
        now + 3600,
    );
    let older = event(
        "e-old",
        serde_json::json!({"kind": "client", "client_id": "other-client", "not_before": now - 1000}),
        now + 3600,
    );
    let expired = event(
        "e-exp",
        serde_json::json!({"kind": "token", "jti": "long-gone"}),
        now - 1000,
    );
    for (subject, payload) in [
        ("authz.revocations.v1.client", newer.clone()),
        ("authz.revocations.v1.client", older),
        ("authz.revocations.v1.client", newer),
        ("authz.revocations.v1.token", expired),
    ] {
        js.publish(subject, payload.into()).await?.await?;
    }
    gw.wait_refused(&other).await?;
    eventually(WAIT, "all four events handled", || async {
        (gw.metric("gateway_revocation_last_sequence").await >= 4.0).then_some(())
    })
    .await?;
    assert_eq!(
        gw.call(&http, "/echo/", &other).await,
        401,
        "the older cut-off loosened the rule"
    );
    assert_eq!(
        gw.metric("gateway_revocation_events_duplicate_total").await,
        2.0
    );
    assert_eq!(
        gw.metric("gateway_revocation_events_expired_total").await,
        1.0
    );
    assert_eq!(gw.metric("gateway_revocation_rules").await, 1.0);

    // Garbage on the heartbeat subject is skipped; the gateway stays fresh on real heartbeats.
    authz
        .publish("authz.heartbeat.v1", "{\"v\":1}".into())
        .await?;
    authz.flush().await?;
    eventually(WAIT, "the bad heartbeat to be counted", || async {
        (gw.metric("gateway_heartbeats_skipped_total").await == 1.0).then_some(())
    })
    .await?;
    // A gateway identity may not publish heartbeats.
    let (gateway_id, violations) =
        system_tests::connect_nats_as(&stack.nats.url(), "gateway-2").await?;
    let forged = serde_json::json!({"v": 1, "instance": "x", "epoch": 1, "seq": 0,
        "covers_until_ms": 0, "sent_at_ms": 0});
    gateway_id
        .publish("authz.heartbeat.v1", serde_json::to_vec(&forged)?.into())
        .await?;
    gateway_id.flush().await?;
    eventually(WAIT, "the server to refuse the forged heartbeat", || {
        let n = violations.load(std::sync::atomic::Ordering::SeqCst);
        async move { (n > 0).then_some(()) }
    })
    .await?;
    assert_eq!(gw.metric("gateway_heartbeats_skipped_total").await, 1.0);
    assert_eq!(gw.readyz().await, 200);
    Ok(())
}

/// A gateway starting when every message of the stream has aged out (MaxAge) is ready at
/// once: the sequences the heartbeat announces are gone, not missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aged_out_stream_is_not_a_gap() -> anyhow::Result<()> {
    let nats = system_tests::Nats::start()?;
    let dir = tempfile::tempdir()?;
    // Stream MaxAge = max_ttl_s + leeway_s = 2 s.
    let authz = system_tests::Authz::start_with(
        dir.path(),
        &[nats.url()],
        "token_ttl_s = 1\nmax_ttl_s = 1\nleeway_s = 1\nheartbeat_interval_ms = 200",
    )
    .await?;
    let upstream = system_tests::Upstream::start().await?;
    let token = authz.token("demo-client", "demo-secret").await?;
    assert_eq!(
        authz.revoke("demo-client", "demo-secret", &token).await?,
        200
    );
    let (client, _) = system_tests::connect_nats_as(&nats.url(), "authz").await?;
    let js = revocation::stream::context(client);
    eventually(
        Duration::from_secs(10),
        "the revocation to age out of the stream",
        || {
            let js = js.clone();
            async move {
                let stream = js.get_stream("AUTHZ_REVOCATIONS").await.ok()?;
                let state = &stream.cached_info().state;
                (state.last_sequence >= 1 && state.messages == 0).then_some(())
            }
        },
    )
    .await?;
    // Its tokens live as long as the stream keeps events.
    let gw = Gateway::start_with(
        "gateway-1",
        "gateway-1",
        &[nats.url()],
        &authz,
        &upstream,
        "max_ttl_s = 1\nleeway_s = 1",
    )
    .await?;
    gw.wait_ready().await?;
    Ok(())
}

/// Checks a gateway's metric series against their expected values.
async fn assert_metrics(gw: &Gateway, expected: &[(&str, f64)]) {
    for (series, value) in expected {
        assert_eq!(gw.metric(series).await, *value, "{series}");
    }
}

/// Revokes `token` through RFC 7009 as the demo client.
async fn revoke_demo(stack: &Stack, token: &str) -> anyhow::Result<()> {
    let status = stack
        .authz
        .revoke("demo-client", "demo-secret", token)
        .await?;
    anyhow::ensure!(status == 200, "revoke answered {status}");
    Ok(())
}

/// A stack with no gateway whose authz-server checks every 100 ms whether `min_events` new
/// events call for a snapshot.
async fn snapshot_stack(min_events: u64) -> anyhow::Result<Stack> {
    let nats = system_tests::Nats::start()?;
    let dir = tempfile::tempdir()?;
    let authz = system_tests::Authz::start_with(
        dir.path(),
        &[nats.url()],
        &format!("snapshot_interval_ms = 100\nsnapshot_min_events = {min_events}"),
    )
    .await?;
    Ok(Stack {
        gateways: Vec::new(),
        upstream: system_tests::Upstream::start().await?,
        authz,
        nats,
        dir,
    })
}

/// Starts a gateway (with `extra` configuration; it stops without a drain delay), waits until
/// it is ready and checks that it refuses every token of `revoked` and accepts `valid`.
async fn snapshot_gateway(
    stack: &Stack,
    id: &str,
    extra: &str,
    revoked: &[&String],
    valid: &str,
) -> anyhow::Result<Gateway> {
    let gw = Gateway::start_with(
        id,
        id,
        &[stack.nats.url()],
        &stack.authz,
        &stack.upstream,
        &format!("drain_delay_ms = 0\n{extra}"),
    )
    .await?;
    gw.wait_ready().await?;
    let http = reqwest::Client::new();
    for (i, token) in revoked.iter().enumerate() {
        assert_eq!(
            gw.call(&http, "/echo/", token).await,
            401,
            "revoked token {i}"
        );
    }
    assert_eq!(gw.call(&http, "/echo/", valid).await, 200, "valid token");
    Ok(gw)
}

/// The authz-server snapshots the rules in force once enough events were published; a new
/// gateway loads the snapshot, replays only the events after it, and enforces all of them.
/// A gateway told not to use snapshots replays everything and ends with the same rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_gateway_loads_the_snapshot_then_the_rest() -> anyhow::Result<()> {
    let stack = snapshot_stack(6).await?;
    let mut tokens = Vec::new();
    for _ in 0..7 {
        tokens.push(stack.authz.token("demo-client", "demo-secret").await?);
    }
    let other = stack.authz.token("other-client", "other-secret").await?;
    // Six events: five tokens and one client rule. The snapshot waits for all six.
    for token in &tokens[..5] {
        revoke_demo(&stack, token).await?;
    }
    let (status, body) = stack
        .authz
        .admin_revoke(serde_json::json!({"client_id": "other-client"}))
        .await?;
    assert_eq!(status, 200, "{body}");
    eventually(WAIT, "a snapshot to be published", || async {
        (stack.authz.metric("authz_snapshots_published_total").await >= 1.0).then_some(())
    })
    .await?;
    assert_eq!(stack.authz.metric("authz_snapshot_rules").await, 6.0);
    // One more after the snapshot: only the stream has it.
    revoke_demo(&stack, &tokens[5]).await?;
    stack.authz.wait_outbox_drained(WAIT).await?;

    let revoked: Vec<&String> = tokens[..6].iter().chain([&other]).collect();
    let gw = snapshot_gateway(
        &stack,
        "gateway-1",
        "replay_snapshot_min = 1",
        &revoked,
        &tokens[6],
    )
    .await?;
    assert_metrics(
        &gw,
        &[
            ("gateway_revocation_snapshots_loaded_total", 1.0),
            ("gateway_revocation_snapshot_rules_total", 6.0),
            ("gateway_revocation_events_applied_total", 1.0),
            ("gateway_revocation_last_sequence", 7.0),
            ("gateway_revocation_rules", 7.0),
        ],
    )
    .await;

    let full = snapshot_gateway(
        &stack,
        "gateway-2",
        "replay_snapshot_min = 0",
        &revoked,
        &tokens[6],
    )
    .await?;
    assert_eq!(
        full.metric("gateway_revocation_snapshots_loaded_total")
            .await,
        0.0
    );
    assert_metrics(
        &full,
        &[
            ("gateway_revocation_events_applied_total", 7.0),
            ("gateway_revocation_rules", 7.0),
        ],
    )
    .await;
    Ok(())
}

/// A snapshot a gateway cannot use — of another stream, naming chunks that are not there, with
/// a chunk of another snapshot or a bad rule, not a manifest at all, not signed by the
/// heartbeat key, or whose chunks do not match its digest — is passed over: the gateway
/// replays the whole stream and enforces every revocation. A gateway cannot publish a
/// snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_snapshots_fall_back_to_the_stream() -> anyhow::Result<()> {
    use revocation::snapshot::{self, Manifest, CHUNK_SUBJECT, MANIFEST_SUBJECT};

    let stack = Stack::start(0).await?;
    let revoked = [
        stack.authz.token("demo-client", "demo-secret").await?,
        stack.authz.token("demo-client", "demo-secret").await?,
    ];
    let valid = stack.authz.token("demo-client", "demo-secret").await?;
    for token in &revoked {
        revoke_demo(&stack, token).await?;
    }
    stack.authz.wait_outbox_drained(WAIT).await?;

    let (client, _) = system_tests::connect_nats_as(&stack.nats.url(), "authz").await?;
    let js = revocation::snapshot::context(client.clone());
    let epoch = revocation::stream::epoch(
        revocation::stream::context(client)
            .get_stream(revocation::stream::STREAM_NAME)
            .await?
            .cached_info(),
    );
    // No snapshot stream yet: nothing to load, and nothing failed.
    let gw = snapshot_gateway(
        &stack,
        "gateway-3",
        "replay_snapshot_min = 1",
        &revoked.iter().collect::<Vec<_>>(),
        &valid,
    )
    .await?;
    assert_metrics(
        &gw,
        &[
            ("gateway_revocation_snapshots_failed_total", 0.0),
            ("gateway_revocation_events_applied_total", 2.0),
        ],
    )
    .await;
    gw.service_stop().await;
    js.get_or_create_stream(snapshot::stream_config(1)).await?;
    let publish = |subject: &'static str, payload: Vec<u8>| {
        let js = js.clone();
        async move { anyhow::Ok(js.publish(subject, payload.into()).await?.await?.sequence) }
    };
    // A chunk holding one of the two rules: a snapshot built on it would lose the other.
    let jti = claims_of(&revoked[0])["jti"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let chunk_of = |id: &str| {
        let mut writer = snapshot::ChunkWriter::new(id);
        writer.push(
            &revocation::event::RuleRef::Token {
                jti: jti.as_str().into(),
            },
            &stack.authz.url,
            revocation::unix_now() + 3600,
        );
        writer.finish().0.unwrap_or_default()
    };
    let digest_of = |payload: &[u8]| {
        let mut digest = snapshot::ChunkDigest::default();
        digest.push(payload);
        digest.finish()
    };
    let partial = chunk_of("partial");
    let chunk = publish(CHUNK_SUBJECT, partial.clone()).await?;
    // The same in a snapshot "late" whose chunk follows: what two authz-servers snapshotting at
    // once leave behind.
    let late_payload = chunk_of("late");
    let late_chunk = publish(CHUNK_SUBJECT, late_payload.clone()).await?;
    // Manifests are signed by the heartbeat key (in the authz-server's database).
    let store =
        authz_server::store::Store::open(&stack.authz.database().display().to_string()).await?;
    let key =
        authz_server::keys::KeyObject::heartbeat_key(store.heartbeat_key("").await?.as_bytes())?;
    let stranger = authz_server::keys::KeyObject::heartbeat_key(
        authz_server::keys::generate_pem(jsonwebtoken::Algorithm::EdDSA)?.as_bytes(),
    )?;
    let signed = |m: Manifest| key.sign_manifest(&m).map(String::into_bytes);
    let bad_rule = publish(
        CHUNK_SUBJECT,
        br#"{"v":1,"snapshot":"bad","index":0,"iss":["i"],"rules":[["token",3,"k",0,1]]}"#.to_vec(),
    )
    .await?;
    let manifest = Manifest {
        v: snapshot::MANIFEST_VERSION,
        id: "partial".into(),
        epoch,
        seq: 2,
        first_chunk: chunk,
        last_chunk: chunk,
        chunks: 1,
        rules: 1,
        created_at: revocation::unix_now(),
        digest: digest_of(&partial),
    };
    let cases = [
        // (manifest, whether the gateway counts it as failed)
        (
            signed(Manifest {
                epoch: epoch + 1,
                ..manifest.clone()
            })?,
            false,
        ),
        (
            signed(Manifest {
                seq: 3,
                ..manifest.clone()
            })?,
            false,
        ),
        (
            signed(Manifest {
                first_chunk: chunk + 100,
                last_chunk: chunk + 100,
                ..manifest.clone()
            })?,
            true,
        ),
        (
            signed(Manifest {
                id: "other".into(),
                ..manifest.clone()
            })?,
            true,
        ),
        (
            signed(Manifest {
                rules: 2,
                ..manifest.clone()
            })?,
            true,
        ),
        (
            signed(Manifest {
                id: "bad".into(),
                first_chunk: bad_rule,
                last_chunk: bad_rule,
                ..manifest.clone()
            })?,
            true,
        ),
        (b"not a manifest".to_vec(), true),
        // Right in every field, but not signed, or signed by another key: a certificate that
        // may publish here (the authz-server's, stolen) still cannot make gateways skip events.
        (manifest.to_json(), true),
        (stranger.sign_manifest(&manifest)?.into_bytes(), true),
        // Signed, but the chunks are not those it names.
        (
            signed(Manifest {
                digest: digest_of(b"other chunks"),
                ..manifest.clone()
            })?,
            true,
        ),
    ];
    let revoked: Vec<&String> = revoked.iter().collect();
    for (i, (payload, failed)) in cases.into_iter().enumerate() {
        publish(MANIFEST_SUBJECT, payload).await?;
        let id = system_tests::GATEWAY_IDS[i % 3];
        let gw = snapshot_gateway(&stack, id, "replay_snapshot_min = 1", &revoked, &valid).await?;
        assert_eq!(
            gw.metric("gateway_revocation_snapshots_loaded_total").await,
            0.0,
            "case {i}"
        );
        assert_eq!(
            gw.metric("gateway_revocation_snapshots_failed_total").await,
            if failed { 1.0 } else { 0.0 },
            "case {i}"
        );
        // Every event replayed; one may have found its rule already applied by a chunk read
        // before the snapshot failed.
        let replayed = gw.metric("gateway_revocation_events_applied_total").await
            + gw.metric("gateway_revocation_events_duplicate_total").await;
        assert_eq!(replayed, 2.0, "case {i}");
        gw.service_stop().await;
    }

    // A true manifest is used, read past the other snapshot's chunk before its own.
    let late = Manifest {
        id: "late".into(),
        seq: 1,
        last_chunk: late_chunk,
        digest: digest_of(&late_payload),
        ..manifest
    };
    publish(MANIFEST_SUBJECT, signed(late)?).await?;
    let gw = snapshot_gateway(
        &stack,
        "gateway-1",
        "replay_snapshot_min = 1",
        &revoked,
        &valid,
    )
    .await?;
    assert_metrics(
        &gw,
        &[
            ("gateway_revocation_snapshots_loaded_total", 1.0),
            ("gateway_revocation_events_applied_total", 1.0),
        ],
    )
    .await;

    // Gateways may read snapshots, never write them.
    let (client, violations) =
        system_tests::connect_nats_as(&stack.nats.url(), "gateway-2").await?;
    client
        .publish(MANIFEST_SUBJECT, b"{}".to_vec().into())
        .await?;
    client.flush().await?;
    eventually(WAIT, "the forbidden publish to be reported", || async {
        (violations.load(std::sync::atomic::Ordering::SeqCst) > 0).then_some(())
    })
    .await?;
    Ok(())
}

/// Each new snapshot replaces the last: the stream keeps the latest two (older chunks are
/// purged), and a new gateway loads the latest, which holds every rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_replaced() -> anyhow::Result<()> {
    let stack = snapshot_stack(2).await?;
    let mut revoked = Vec::new();
    for round in 1..=3u32 {
        for _ in 0..2 {
            let token = stack.authz.token("demo-client", "demo-secret").await?;
            revoke_demo(&stack, &token).await?;
            revoked.push(token);
        }
        eventually(WAIT, "the round's snapshot", || async {
            (stack.authz.metric("authz_snapshots_published_total").await >= f64::from(round))
                .then_some(())
        })
        .await?;
    }
    assert_eq!(stack.authz.metric("authz_snapshot_rules").await, 6.0);
    assert_eq!(stack.authz.metric("authz_snapshot_sequence").await, 6.0);
    // Three snapshots of one chunk and a manifest each: the first one's two messages are gone.
    let (client, _) = system_tests::connect_nats_as(&stack.nats.url(), "authz").await?;
    let info = revocation::snapshot::context(client)
        .get_stream(revocation::snapshot::SNAPSHOT_STREAM)
        .await?
        .cached_info()
        .clone();
    assert_eq!(info.state.first_sequence, 3, "{:?}", info.state);
    assert_eq!(info.state.messages, 4, "{:?}", info.state);

    let valid = stack.authz.token("demo-client", "demo-secret").await?;
    let revoked: Vec<&String> = revoked.iter().collect();
    let gw = snapshot_gateway(
        &stack,
        "gateway-1",
        "replay_snapshot_min = 1",
        &revoked,
        &valid,
    )
    .await?;
    assert_metrics(
        &gw,
        &[
            ("gateway_revocation_snapshots_loaded_total", 1.0),
            ("gateway_revocation_snapshot_rules_total", 6.0),
            ("gateway_revocation_events_applied_total", 0.0),
        ],
    )
    .await;
    Ok(())
}

/// A gateway that accepts tokens for longer than the stream keeps events (its `max_ttl_s +
/// leeway_s` over the stream's `max_age`, the authz-server's `max_ttl_s + leeway_s`) is refused:
/// a revocation could age out of the stream while its token is still valid, and this gateway,
/// restarted then, would not enforce it. It says so on `/readyz` and fails closed; one whose
/// tokens fit is ready on the same stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_shorter_than_the_tokens_is_refused() -> anyhow::Result<()> {
    let stack = Stack::start(1).await?;
    let http = reqwest::Client::new();
    let token = stack.authz.token("demo-client", "demo-secret").await?;
    // The stream keeps events 3,630 s (3,600 + 30); this gateway accepts tokens 3,631 s.
    let long = Gateway::start_with(
        "gateway-2",
        "gateway-2",
        &[stack.nats.url()],
        &stack.authz,
        &stack.upstream,
        "max_ttl_s = 3601",
    )
    .await?;
    let reasons = eventually(
        Duration::from_secs(15),
        "the refusal on /readyz",
        || async {
            let body: serde_json::Value = reqwest::get(format!("{}/readyz", long.admin_url))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let reasons = body["reasons"].as_array()?.clone();
            reasons
                .iter()
                .any(|r| r == "stream_retention_too_short")
                .then_some(reasons)
        },
    )
    .await?;
    eprintln!("reasons: {reasons:?}");
    assert_eq!(long.readyz().await, 503);
    assert_eq!(long.call(&http, "/echo/x", &token).await, 503);
    assert_eq!(stack.gateways[0].readyz().await, 200);
    assert_eq!(stack.gateways[0].call(&http, "/echo/x", &token).await, 200);
    // An authz-server whose tokens live as long lengthens the stream (never shortens it);
    // the gateway then follows it.
    let dir = tempfile::tempdir()?;
    let _longer =
        system_tests::Authz::start_with(dir.path(), &[stack.nats.url()], "max_ttl_s = 3601")
            .await?;
    long.wait_ready().await?;
    assert_eq!(long.call(&http, "/echo/x", &token).await, 200);
    Ok(())
}
