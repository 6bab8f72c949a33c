//! The fleet view (issue 17, first step): every gateway publishes its status on NATS, on the
//! one subject its identity may publish on, and the authz-server lists the gateways heard
//! from within its window, with what each has applied and how fresh it is.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use system_tests::{eventually, Authz, Gateway, Nats, Upstream};

async fn fleet(authz: &Authz) -> Vec<Value> {
    let page: Value = match reqwest::Client::new()
        .get(format!("{}/admin/gateways", authz.admin_url))
        .basic_auth("admin", Some("admin-secret"))
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    page["gateways"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_view_follows_the_gateways() -> anyhow::Result<()> {
    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let authz = Authz::start_with(
        dir.path(),
        &[nats.url()],
        "fleet_window_ms = 1500\nexpected_gateways = [\"gateway-1\", \"gateway-2\", \"gateway-9\"]\n",
    )
    .await?;
    let upstream = Upstream::start().await?;
    let mut gateways = Gateway::start_ready(
        &["gateway-1", "gateway-2"],
        &[nats.url()],
        &authz,
        &upstream,
        "status_interval_ms = 200",
    )
    .await?;
    // Both listed, ready and fresh.
    let listed = eventually(
        Duration::from_secs(10),
        "both gateways in the fleet view",
        || {
            let authz = &authz;
            async move {
                let list = fleet(authz).await;
                let ready = list.len() == 2 && list.iter().all(|g| g["ready"] == true);
                ready.then_some(list)
            }
        },
    )
    .await?;
    assert_eq!(listed[0]["gateway"], "gateway-1");
    assert_eq!(listed[1]["gateway"], "gateway-2");
    for g in &listed {
        assert!(g["staleness_ms"].as_u64().is_some_and(|s| s < 5_000), "{g}");
        assert!(g["seen_ms_ago"].as_u64().is_some_and(|s| s <= 1_500), "{g}");
        assert_eq!(g["reasons"], serde_json::json!([]));
        assert!(g["instance"].as_str().is_some_and(|i| i.len() == 16), "{g}");
    }
    // An expected gateway never heard from keeps every receipt from saying enforced.
    let (status, receipt) = revoke_and_wait(&authz, "zoe", 300).await?;
    assert_eq!(status, 202, "{receipt}");
    assert_eq!(receipt["missing"], serde_json::json!(["gateway-9"]));
    assert_eq!(receipt["pending"], serde_json::json!([]));
    // A revocation: both report its sequence applied.
    let before = listed[0]["last_sequence"].as_u64().unwrap_or(0);
    let token = authz.token("demo-client", "demo-secret").await?;
    assert_eq!(
        authz.revoke("demo-client", "demo-secret", &token).await?,
        200
    );
    eventually(
        Duration::from_secs(10),
        "both gateways past the revocation",
        || {
            let authz = &authz;
            async move {
                let list = fleet(authz).await;
                let seqs: Vec<u64> = list
                    .iter()
                    .filter_map(|g| g["last_sequence"].as_u64())
                    .collect();
                (seqs.len() == 2 && seqs.iter().all(|s| *s > before) && seqs[0] == seqs[1])
                    .then_some(())
            }
        },
    )
    .await?;

    // A gateway may speak only for itself: gateway-1's identity cannot publish on
    // gateway-2's subject or read anyone's status, and what it publishes on its own subject
    // in gateway-2's name is refused by the authz-server.
    let (gw1, violations) = system_tests::connect_nats_as(&nats.url(), "gateway-1").await?;
    let seen_before = violations.load(Ordering::SeqCst);
    let _sub = gw1.subscribe("gateway.status.v1.*").await?;
    let mut forged = listed[1].clone();
    forged.as_object_mut().map(|o| o.remove("seen_ms_ago"));
    forged["instance"] = "forged".into();
    forged["ready"] = false.into();
    gw1.publish("gateway.status.v1.gateway-2", forged.to_string().into())
        .await?;
    gw1.flush().await?;
    eventually(Duration::from_secs(5), "two permission violations", || {
        let n = violations.load(Ordering::SeqCst);
        async move { (n >= seen_before + 2).then_some(()) }
    })
    .await?;
    gw1.publish("gateway.status.v1.gateway-1", forged.to_string().into())
        .await?;
    gw1.flush().await?;
    eventually(
        Duration::from_secs(5),
        "the authz-server to refuse it",
        || {
            let authz = &authz;
            async move {
                (authz.metric("authz_gateway_status_refused_total").await >= 1.0).then_some(())
            }
        },
    )
    .await?;
    let list = fleet(&authz).await;
    assert!(
        list.iter().all(|g| g["instance"] != "forged"),
        "a forged status was listed: {list:?}"
    );

    // A stopped gateway leaves the view once the window has passed; the other stays.
    let second = gateways.pop().expect("two gateways");
    second.service_stop().await;
    eventually(
        Duration::from_secs(10),
        "gateway-2 out of the fleet view",
        || {
            let authz = &authz;
            async move {
                let list = fleet(authz).await;
                (list.len() == 1 && list[0]["gateway"] == "gateway-1").then_some(())
            }
        },
    )
    .await?;
    Ok(())
}

/// POST /admin/revocations?wait=enforced with revoke_admin's body; the status and receipt.
async fn revoke_and_wait(
    authz: &Authz,
    subject: &str,
    timeout_ms: u64,
) -> anyhow::Result<(u16, Value)> {
    let response = reqwest::Client::new()
        .post(format!(
            "{}/admin/revocations?wait=enforced&timeout_ms={timeout_ms}",
            authz.admin_url
        ))
        .basic_auth("admin", Some("admin-secret"))
        .json(&serde_json::json!({ "subject": subject }))
        .send()
        .await?;
    Ok((response.status().as_u16(), response.json().await?))
}

/// Receipts: with three gateways, a revocation's receipt fills in as each applies it, and
/// the wait returns once all have. With one partitioned from NATS, the receipt names it: at
/// first as pending (it still talked a moment ago: the wait times out with 202), then, once it
/// has gone silent, as unreachable with the instant from which it refuses every token, and the
/// wait returns as soon as the two others have applied the revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_name_the_laggard() -> anyhow::Result<()> {
    let nats = Nats::start()?;
    let to_nats = system_tests::TcpProxy::start(nats.port).await?;
    let dir = tempfile::tempdir()?;
    // The view is complete once it has listened for the window; a gateway silent for more
    // than three status intervals is unreachable, and leaves the view with the window.
    let authz = Authz::start_with(dir.path(), &[nats.url()], "fleet_window_ms = 8000\n").await?;
    let upstream = Upstream::start().await?;
    let mut gateways = Vec::new();
    for (id, url) in [
        ("gateway-1", nats.url()),
        ("gateway-2", nats.url()),
        ("gateway-3", to_nats.url()),
    ] {
        let gw = Gateway::start_with(
            id,
            id,
            &[url],
            &authz,
            &upstream,
            "status_interval_ms = 1000",
        )
        .await?;
        gw.wait_ready().await?;
        gateways.push(gw);
    }
    eventually(
        Duration::from_secs(10),
        "three ready gateways in the fleet view",
        || {
            let authz = &authz;
            async move {
                let list = fleet(authz).await;
                (list.len() == 3 && list.iter().all(|g| g["ready"] == true)).then_some(())
            }
        },
    )
    .await?;

    // All connected: the wait returns with every gateway applied.
    let (status, receipt) = revoke_and_wait(&authz, "alice", 10_000).await?;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["enforced"], true);
    assert_eq!(receipt["pending"], serde_json::json!([]));
    let applied: Vec<&Value> = receipt["gateways"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(applied.len(), 3);
    let sequence = receipt["stream"]["sequence"].as_u64().unwrap_or(0);
    for g in &applied {
        assert_eq!(g["applied"], true, "{g}");
        assert!(g["last_sequence"].as_u64().unwrap_or(0) >= sequence, "{g}");
        assert!(g["applied_at_ms"].as_u64().is_some(), "{g}");
    }
    // The same receipt, asked again by id.
    let id = receipt["revocation"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let again = authz.receipt(&id).await?;
    assert_eq!(again["enforced"], true);
    assert_eq!(again["stream"], receipt["stream"]);

    // gateway-3 cut off from NATS: right after the cut it still counts as talking, so the
    // wait ends with 202 and names it pending; the two others have applied.
    let cli = system_tests::binary("authz-server")?;
    to_nats.cut();
    let (status, receipt) = revoke_and_wait(&authz, "bob", 300).await?;
    assert_eq!(status, 202, "{receipt}");
    assert_eq!(receipt["enforced"], false);
    assert_eq!(receipt["pending"], serde_json::json!(["gateway-3"]));
    let by_name = |r: &Value, name: &str| {
        r["gateways"]
            .as_array()
            .and_then(|list| list.iter().find(|g| g["gateway"] == name).cloned())
            .unwrap_or(Value::Null)
    };
    for name in ["gateway-1", "gateway-2"] {
        assert_eq!(
            by_name(&receipt, name)["applied"],
            true,
            "{name}: {receipt}"
        );
    }
    assert_eq!(by_name(&receipt, "gateway-3")["applied"], false);
    // The CLI's --wait says the same: the receipt, and exit status 3.
    let out = std::process::Command::new(&cli)
        .args(["revoke", "--url", &authz.admin_url, "--subject", "erin"])
        .args(["--wait", "--timeout-ms", "300"])
        .env("AUTHZ_ADMIN_SECRET", "admin-secret")
        .output()?;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(printed["pending"], serde_json::json!(["gateway-3"]));

    // Once gateway-3 has gone silent (three status intervals), the wait returns as soon as
    // the others have applied, and the receipt names it unreachable with its staleness bound.
    eventually(
        Duration::from_secs(10),
        "gateway-3 to count as unreachable",
        || {
            let (authz, id) = (&authz, &id);
            async move {
                let r = authz.receipt(id).await.ok()?;
                (r["gateways"]
                    .as_array()?
                    .iter()
                    .any(|g| g["gateway"] == "gateway-3" && g["talking"] == false))
                .then_some(())
            }
        },
    )
    .await?;
    let (status, receipt) = revoke_and_wait(&authz, "carol", 10_000).await?;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["enforced"], true);
    assert_eq!(receipt["unreachable"], serde_json::json!(["gateway-3"]));
    let laggard = by_name(&receipt, "gateway-3");
    assert_eq!(laggard["applied"], false);
    assert_eq!(laggard["bounded_by_staleness"], true, "{laggard}");
    // From then, by the guarantee, every gateway reporting fresh enforces it.
    let published_ms = receipt["revocation"]["revoked_at"].as_u64().unwrap_or(0) * 1000;
    let guaranteed = receipt["guaranteed_from_ms"].as_u64().unwrap_or(0);
    assert!(guaranteed >= published_ms + 5_000, "{receipt}");

    // The laggard comes back: it applies what it missed, and a new receipt has all three.
    to_nats.heal();
    gateways[2].wait_ready().await?;
    eventually(Duration::from_secs(10), "gateway-3 to talk again", || {
        let authz = &authz;
        async move {
            let list = fleet(authz).await;
            list.iter()
                .any(|g| {
                    g["gateway"] == "gateway-3"
                        && g["ready"] == true
                        && g["seen_ms_ago"].as_u64().is_some_and(|ms| ms < 1_000)
                })
                .then_some(())
        }
    })
    .await?;
    let (status, receipt) = revoke_and_wait(&authz, "dave", 20_000).await?;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["unreachable"], serde_json::json!([]));
    assert!(
        by_name(&receipt, "gateway-3")["applied"] == true,
        "{receipt}"
    );
    Ok(())
}
