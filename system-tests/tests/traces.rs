//! Traces (issue 17, part 2): the services export OTLP/HTTP to a receiver whose decoding is
//! Python's `opentelemetry-proto`. One revocation is one trace: the authz-server's request,
//! its commit and its publication, and each gateway's apply as a child of the publication.
//! A gateway's request span continues a trusted proxy's trace only, passes its own on to
//! the upstream, and says why a token was refused without ever holding the token. A
//! collector that hangs costs requests nothing: spans are dropped and counted.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use system_tests::{Authz, Gateway, Nats, OtlpReceiver, Upstream};

/// The `[tracing]` section for `receiver`, exporting every 50 ms.
fn tracing_section(receiver: &OtlpReceiver, extra: &str) -> String {
    format!(
        "\n[tracing]\notlp_endpoint = \"{}\"\nbatch_interval_ms = 50\n{extra}\n",
        receiver.endpoint()
    )
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

/// The span of the request that carried `marker` in its path.
fn request_span<'a>(spans: &'a [Value], marker: &str) -> Option<&'a Value> {
    spans.iter().find(|s| {
        s["service"] == "gateway"
            && attr(s, "url.path")
                .as_str()
                .is_some_and(|p| p.ends_with(marker))
    })
}

/// `gateway_trace_spans_total{outcome}` of `gw`.
async fn spans_counted(gw: &Gateway, outcome: &str) -> anyhow::Result<f64> {
    let metrics = reqwest::get(format!("{}/metrics", gw.admin_url))
        .await?
        .text()
        .await?;
    let series = format!("gateway_trace_spans_total{{outcome=\"{outcome}\"}} ");
    Ok(metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}

async fn get(url: &str, token: Option<&str>, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    match request.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// The chain of one revocation, checked span by span: the request (`request_name`) as the
/// root, the commit and the publication its children, and one apply per gateway, each a
/// child of the publication and linked to it. Returns the revocation's id.
fn check_revocation_trace(spans: &[Value], request_name: &str, gateways: &[&str]) -> String {
    let request = named(spans, request_name);
    assert_eq!(request.len(), 1, "one {request_name} span: {spans:#?}");
    let request = request[0];
    assert_eq!(request["service"], "authz-server");
    assert_eq!(
        request["parent_span_id"], "",
        "the request starts the trace"
    );
    assert_eq!(request["kind"], 2, "a server span");
    assert_eq!(attr(request, "http.response.status_code"), 200);
    let id = attr(request, "revocation.id")
        .as_str()
        .expect("the request names its revocation")
        .to_string();
    let trace = request["trace_id"].as_str().unwrap_or_default();
    let in_trace: Vec<&Value> = spans.iter().filter(|s| s["trace_id"] == trace).collect();

    let commit: Vec<_> = in_trace
        .iter()
        .filter(|s| s["name"] == "revocation.commit")
        .collect();
    assert_eq!(commit.len(), 1, "{in_trace:#?}");
    assert_eq!(commit[0]["parent_span_id"], request["span_id"]);

    let publish: Vec<_> = in_trace
        .iter()
        .filter(|s| s["name"] == "revocation.publish")
        .collect();
    assert_eq!(publish.len(), 1, "{in_trace:#?}");
    let publish = publish[0];
    assert_eq!(publish["parent_span_id"], request["span_id"]);
    assert_eq!(publish["kind"], 4, "a producer span");
    assert_eq!(attr(publish, "messaging.message.id"), id.as_str());
    assert!(attr(publish, "revocation.stream_sequence").as_i64() > Some(0));

    let applies: Vec<_> = in_trace
        .iter()
        .filter(|s| s["name"] == "revocation.apply")
        .collect();
    let identities: BTreeSet<&str> = applies
        .iter()
        .filter_map(|s| attr(s, "gateway.identity").as_str())
        .collect();
    assert_eq!(
        identities,
        gateways.iter().copied().collect(),
        "one apply per gateway: {applies:#?}"
    );
    assert_eq!(applies.len(), gateways.len());
    for apply in applies {
        assert_eq!(apply["service"], "gateway");
        assert_eq!(apply["kind"], 5, "a consumer span");
        assert_eq!(apply["parent_span_id"], publish["span_id"]);
        assert_eq!(
            apply["links"],
            serde_json::json!([{"trace_id": trace, "span_id": publish["span_id"]}])
        );
        assert_eq!(attr(apply, "messaging.message.id"), id.as_str());
        assert_eq!(attr(apply, "revocation.outcome"), "applied");
        assert_eq!(apply["status_code"], 0, "applied is not an error");
        assert_eq!(
            attr(apply, "revocation.stream_sequence"),
            attr(publish, "revocation.stream_sequence")
        );
        assert!(apply["start_ns"].as_u64() >= publish["start_ns"].as_u64());
    }
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_is_one_trace_from_the_request_to_every_gateway() -> anyhow::Result<()> {
    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let receiver = OtlpReceiver::start(dir.path()).await?;
    let authz =
        Authz::start_with(dir.path(), &[nats.url()], &tracing_section(&receiver, "")).await?;
    let upstream = Upstream::start().await?;
    let ids = system_tests::GATEWAY_IDS;
    let gateways = Gateway::start_ready(
        &ids,
        &[nats.url()],
        &authz,
        &upstream,
        &tracing_section(&receiver, ""),
    )
    .await?;
    let token = authz.token("demo-client", "demo-secret").await?;
    for gw in &gateways {
        assert_eq!(
            get(&format!("{}/echo/ok", gw.url), Some(&token), &[])
                .await
                .0,
            200
        );
    }

    // RFC 7009.
    assert_eq!(
        authz.revoke("demo-client", "demo-secret", &token).await?,
        200
    );
    let spans = receiver
        .wait_for(
            "the RFC 7009 revocation applied at three gateways",
            |spans| {
                named(spans, "revocation.apply").len() >= 3
                    && !named(spans, "POST /oauth2/revoke").is_empty()
            },
        )
        .await?;
    let id = check_revocation_trace(&spans, "POST /oauth2/revoke", &ids);
    let listed = authz.revocations().await?;
    assert!(listed.iter().any(|r| r["id"] == id.as_str()), "{listed:?}");

    // The token now gets 401 at each gateway, and each request span says why.
    for (n, gw) in gateways.iter().enumerate() {
        let marker = format!("revoked-{n}");
        let (status, _) = get(&format!("{}/echo/{marker}", gw.url), Some(&token), &[]).await;
        assert_eq!(status, 401);
    }
    let spans = receiver
        .wait_for("three refused requests", |spans| {
            (0..3).all(|n| request_span(spans, &format!("revoked-{n}")).is_some())
        })
        .await?;
    for n in 0..3 {
        let span = request_span(&spans, &format!("revoked-{n}")).expect("waited for");
        assert_eq!(span["name"], "GET /echo/");
        assert_eq!(span["kind"], 2);
        assert_eq!(attr(span, "gateway.auth.decision"), "revoked");
        assert_eq!(attr(span, "error.type"), "invalid_token");
        assert_eq!(attr(span, "http.response.status_code"), 401);
        assert_eq!(attr(span, "http.route"), "/echo/");
        assert!(attr(span, "gateway.upstream.status_code").is_null());
        assert_eq!(span["status_code"], 0, "a 401 is not the server's error");
    }

    // The admin API: the same chain under its own request span, which starts a new trace
    // whatever the caller sends.
    let response = reqwest::Client::new()
        .post(format!("{}/admin/revocations", authz.admin_url))
        .basic_auth("admin", Some("admin-secret"))
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .json(&serde_json::json!({"subject": "traced-subject", "reason": "test"}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await?;
    let spans = receiver
        .wait_for("the admin revocation applied at three gateways", |spans| {
            named(spans, "revocation.apply").len() >= 6
                && !named(spans, "POST /admin/revocations").is_empty()
        })
        .await?;
    let id = check_revocation_trace(&spans, "POST /admin/revocations", &ids);
    assert_eq!(body["id"], id.as_str());
    assert!(spans.iter().all(|s| s["trace_id"] != CALLER_TRACE));
    // Health checks and metric scrapes make no spans.
    assert!(
        spans.iter().all(|s| !attr(s, "http.route")
            .as_str()
            .is_some_and(|r| ["/healthz", "/readyz", "/metrics"].contains(&r))),
        "{spans:#?}"
    );

    // Nothing exported holds the token, a piece of its signature, or the client's secret.
    let dump = serde_json::to_string(&receiver.spans())?;
    let signature = token.rsplit('.').next().unwrap_or_default();
    assert!(!dump.contains(&token) && !dump.contains(&signature[..20]));
    assert!(!dump.contains("demo-secret"));
    // Basic authentication's encoding of the client's credentials, too.
    assert!(!dump.contains("ZGVtby1jbGllbnQ6ZGVtby1zZWNyZXQ"));
    // Each gateway exported at least its two requests' spans and its two applies.
    for gw in &gateways {
        assert!(spans_counted(gw, "exported").await? >= 4.0);
    }
    Ok(())
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_continue_trusted_proxies_only() -> anyhow::Result<()> {
    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let receiver = OtlpReceiver::start(dir.path()).await?;
    let authz = Authz::start(dir.path(), &[nats.url()]).await?;
    let upstream = Upstream::start().await?;
    let untrusting = Gateway::start_with(
        "gateway-1",
        "gateway-1",
        &[nats.url()],
        &authz,
        &upstream,
        &tracing_section(&receiver, ""),
    )
    .await?;
    let trusting = Gateway::start_with(
        "gateway-2",
        "gateway-2",
        &[nats.url()],
        &authz,
        &upstream,
        &format!(
            "trusted_proxies = [\"127.0.0.1/32\"]\n{}",
            tracing_section(&receiver, "")
        ),
    )
    .await?;
    // Traces sampled at 0: no span is kept, and the upstream still gets a parent.
    let unsampled = Gateway::start_with(
        "gateway-3",
        "gateway-3",
        &[nats.url()],
        &authz,
        &upstream,
        &tracing_section(&receiver, "sampling_ratio = 0.0"),
    )
    .await?;
    for gw in [&untrusting, &trusting, &unsampled] {
        gw.wait_ready().await?;
    }
    let token = authz.token("demo-client", "demo-secret").await?;
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let with_caller = [
        ("traceparent", caller.as_str()),
        ("tracestate", "vendor=caller"),
    ];

    // From a trusted proxy: the caller's trace goes on, through the gateway to the upstream.
    let (status, echo) = get(
        &format!("{}/echo/trusted", trusting.url),
        Some(&token),
        &with_caller,
    )
    .await;
    assert_eq!(status, 200, "{echo}");
    // From anyone else: a trace of the gateway's own; the caller's never reaches the upstream.
    let (status, echo_untrusted) = get(
        &format!("{}/echo/untrusted", untrusting.url),
        Some(&token),
        &with_caller,
    )
    .await;
    assert_eq!(status, 200);
    let (status, echo_unsampled) = get(
        &format!("{}/echo/unsampled", unsampled.url),
        Some(&token),
        &with_caller,
    )
    .await;
    assert_eq!(status, 200);
    let spans = receiver
        .wait_for("both request spans", |spans| {
            request_span(spans, "/trusted").is_some() && request_span(spans, "/untrusted").is_some()
        })
        .await?;

    let span = request_span(&spans, "/trusted").expect("waited for");
    assert_eq!(span["trace_id"], CALLER_TRACE);
    assert_eq!(span["parent_span_id"], CALLER_SPAN);
    assert_eq!(span["name"], "GET /echo/");
    assert_eq!(attr(span, "gateway.auth.decision"), "accepted");
    assert_eq!(attr(span, "http.response.status_code"), 200);
    assert_eq!(attr(span, "gateway.upstream.status_code"), 200);
    assert_eq!(attr(span, "gateway.trusted_peer"), true);
    let upstream_addr = upstream.url.trim_start_matches("http://");
    assert_eq!(attr(span, "gateway.upstream.address"), upstream_addr);
    assert!(attr(span, "client.address").is_null());
    assert_eq!(attr(span, "network.peer.address"), "127.0.0.1");
    assert_eq!(
        echo["headers"]["traceparent"],
        format!(
            "00-{CALLER_TRACE}-{}-01",
            span["span_id"].as_str().unwrap_or("?")
        )
    );
    assert_eq!(echo["headers"]["tracestate"], "vendor=caller");

    let span = request_span(&spans, "/untrusted").expect("waited for");
    assert_ne!(span["trace_id"], CALLER_TRACE);
    assert_eq!(span["parent_span_id"], "");
    assert_eq!(attr(span, "gateway.trusted_peer"), false);
    assert_eq!(attr(span, "client.address"), "127.0.0.1");
    assert_eq!(
        echo_untrusted["headers"]["traceparent"],
        format!(
            "00-{}-{}-01",
            span["trace_id"].as_str().unwrap_or("?"),
            span["span_id"].as_str().unwrap_or("?")
        )
    );
    assert!(
        echo_untrusted["headers"]["tracestate"].is_null(),
        "{echo_untrusted}"
    );
    let unsampled_parent = echo_unsampled["headers"]["traceparent"]
        .as_str()
        .unwrap_or_default();
    assert!(
        unsampled_parent.len() == 55
            && unsampled_parent.ends_with("-00")
            && !unsampled_parent.contains(CALLER_TRACE),
        "{echo_unsampled}"
    );
    assert!(echo_unsampled["headers"]["tracestate"].is_null());

    // A trusted proxy's malformed or doubled context starts a new trace, never a child of it.
    let bad = [
        vec![(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        )],
        vec![(
            "traceparent",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        )],
        vec![(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )],
        vec![(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        )],
        vec![(
            "traceparent",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )],
        vec![(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-00",
        )],
        vec![(
            "traceparent",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
        )],
        vec![
            ("traceparent", caller.as_str()),
            ("traceparent", caller.as_str()),
        ],
        vec![("traceparent", "00-1-1-01")],
        vec![(
            "traceparent",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )],
        vec![(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-001",
        )],
        vec![(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
        )],
    ];
    for (n, headers) in bad.iter().enumerate() {
        let (status, _) = get(
            &format!("{}/echo/bad-{n}", trusting.url),
            Some(&token),
            headers,
        )
        .await;
        assert_eq!(status, 200);
    }
    // And refusals say why, with no token at all too; an invented method is `_OTHER`.
    let (status, _) = get(&format!("{}/echo/anonymous", untrusting.url), None, &[]).await;
    assert_eq!(status, 401);
    let invented = reqwest::Client::new()
        .request(
            reqwest::Method::from_bytes(b"FROBNICATE")?,
            format!("{}/echo/invented", untrusting.url),
        )
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(invented.status(), 200);
    let spans = receiver
        .wait_for("every malformed context's span", |spans| {
            (0..bad.len()).all(|n| request_span(spans, &format!("/bad-{n}")).is_some())
                && request_span(spans, "/anonymous").is_some()
                && request_span(spans, "/invented").is_some()
        })
        .await?;
    let span = request_span(&spans, "/invented").expect("waited for");
    assert_eq!(span["name"], "_OTHER /echo/");
    assert_eq!(attr(span, "http.request.method"), "_OTHER");
    assert_eq!(attr(span, "http.request.method_original"), "FROBNICATE");
    for n in 0..bad.len() {
        let span = request_span(&spans, &format!("/bad-{n}")).expect("waited for");
        assert_eq!(span["parent_span_id"], "", "variant {n}: {span}");
        assert_ne!(span["trace_id"], CALLER_TRACE, "variant {n}");
    }
    let span = request_span(&spans, "/anonymous").expect("waited for");
    assert_eq!(attr(span, "gateway.auth.decision"), "no_credentials");
    assert_eq!(attr(span, "http.response.status_code"), 401);
    // The gateway at ratio 0 kept nothing.
    assert!(request_span(&spans, "/unsampled").is_none());

    // Tracing off: an untrusted client's context is removed all the same, and a trusted
    // proxy's goes to the upstream as it came.
    let off = Gateway::start("gateway-1", &[nats.url()], &authz, &upstream).await?;
    let off_trusting = Gateway::start_with(
        "gateway-2",
        "gateway-2",
        &[nats.url()],
        &authz,
        &upstream,
        "trusted_proxies = [\"127.0.0.1/32\"]",
    )
    .await?;
    off.wait_ready().await?;
    off_trusting.wait_ready().await?;
    let (status, echo) = get(&format!("{}/echo/off", off.url), Some(&token), &with_caller).await;
    assert_eq!(status, 200);
    assert!(echo["headers"]["traceparent"].is_null(), "{echo}");
    assert!(echo["headers"]["tracestate"].is_null(), "{echo}");
    let (status, echo) = get(
        &format!("{}/echo/off", off_trusting.url),
        Some(&token),
        &with_caller,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(echo["headers"]["traceparent"], caller.as_str());
    assert_eq!(echo["headers"]["tracestate"], "vendor=caller");
    Ok(())
}

/// A collector that refuses connections, or sheds load with 503 and `Retry-After`, must not
/// slow a gateway that serves everything on one thread: a failed export is dropped, never
/// retried with a sleep on the serving thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_collector_never_stalls_a_one_thread_gateway() -> anyhow::Result<()> {
    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let shedding = OtlpReceiver::unavailable(dir.path()).await?;
    let refused = format!(
        "http://127.0.0.1:{}/v1/traces",
        system_tests::free_ports(1)?[0]
    );
    let authz = Authz::start(dir.path(), &[nats.url()]).await?;
    let upstream = Upstream::start().await?;
    let mut gateways = Vec::new();
    for (id, endpoint) in [("gateway-1", shedding.endpoint()), ("gateway-2", refused)] {
        let gw = Gateway::spawn_process(
            dir.path(),
            id,
            &[nats.url()],
            &authz,
            &upstream,
            &format!(
                "worker_threads = 1\n\n[tracing]\notlp_endpoint = \"{endpoint}\"\nbatch_interval_ms = 10\nbatch_spans = 1\n"
            ),
        )
        .await?;
        gw.wait_ready().await?;
        gateways.push(gw);
    }
    let token = authz.token("demo-client", "demo-secret").await?;
    for gw in &gateways {
        let mut slowest = Duration::ZERO;
        // About three seconds of requests, each exported on its own.
        for n in 0..150 {
            let started = Instant::now();
            let (status, _) = get(&format!("{}/echo/{n}", gw.url), Some(&token), &[]).await;
            assert_eq!(status, 200);
            slowest = slowest.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Generous: a retry's sleep on the one thread would hold requests for seconds.
        assert!(
            slowest < Duration::from_secs(1),
            "{slowest:?} at {}",
            gw.url
        );
        let failed = spans_counted(gw, "failed").await?;
        assert!(failed >= 100.0, "{failed}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_collector_costs_requests_nothing() -> anyhow::Result<()> {
    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let hung = OtlpReceiver::stalled(dir.path()).await?;
    let slow = "queue_spans = 8\nbatch_spans = 4\nexport_timeout_ms = 60000";
    let authz = Authz::start_with(dir.path(), &[nats.url()], &tracing_section(&hung, slow)).await?;
    let upstream = Upstream::start().await?;
    let mut gw = Gateway::start_with(
        "gateway-1",
        "gateway-1",
        &[nats.url()],
        &authz,
        &upstream,
        &format!("drain_delay_ms = 0\n{}", tracing_section(&hung, slow)),
    )
    .await?;
    gw.wait_ready().await?;
    let token = authz.token("demo-client", "demo-secret").await?;
    // Generous bound: the requests must not wait on the collector (which never answers).
    let started = Instant::now();
    for n in 0..200 {
        let (status, _) = get(&format!("{}/echo/{n}", gw.url), Some(&token), &[]).await;
        assert_eq!(status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    let (status, _) = authz
        .admin_revoke(serde_json::json!({"subject": "someone", "reason": "test"}))
        .await?;
    assert_eq!(status, 200);
    let dropped = spans_counted(&gw, "dropped").await?;
    // At most a queue and a batch in flight are kept; the rest were dropped and counted.
    assert!(dropped >= 200.0 - 8.0 - 4.0 - 1.0, "{dropped}");
    // Stopping does not wait on the hung collector for long either.
    let stopping = Instant::now();
    gw.runner.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(12),
        "{:?}",
        stopping.elapsed()
    );
    Ok(())
}
