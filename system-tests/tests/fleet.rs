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
    let authz = Authz::start_with(dir.path(), &[nats.url()], "fleet_window_ms = 1500\n").await?;
    let upstream = Upstream::start().await?;
    let mut gateways = Vec::new();
    for id in ["gateway-1", "gateway-2"] {
        let gw = Gateway::start_with(
            id,
            id,
            &[nats.url()],
            &authz,
            &upstream,
            "status_interval_ms = 200",
        )
        .await?;
        gw.wait_ready().await?;
        gateways.push(gw);
    }
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
