//! The operators' console (issue 17, part 3): a real headless Chromium logs in, finds a rule,
//! revokes a token through the form and watches its receipt reach every gateway, while the
//! token gets 401 at each; a page of another origin fails to use the session. Then, over
//! plain HTTP, every way around the session: no cookie, forged or doubled cookies, missing
//! or wrong CSRF tokens, other origins, a changed or removed client, a full table.

use std::time::Duration;

use anyhow::{bail, Context as _};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use system_tests::{repo_root, Authz, Gateway, Nats, Upstream, GATEWAY_IDS};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; require-trusted-types-for 'script'; trusted-types 'none'";

fn python() -> anyhow::Result<std::path::PathBuf> {
    let python = repo_root().join("target/interop-venv/bin/python");
    if !python.exists() {
        bail!(
            "{} is missing: run deploy/ensure-interop-venv.sh (make test does)",
            python.display()
        );
    }
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        if !std::path::Path::new(tool).exists() {
            bail!("{tool} is missing: run deploy/ensure-chromium.sh (make test does)");
        }
    }
    Ok(python)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_revokes_a_token_from_the_console_in_a_real_browser() -> anyhow::Result<()> {
    let python = python()?;
    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let authz = Authz::start_with(
        dir.path(),
        &[nats.url()],
        "fleet_window_ms = 1500\nexpected_gateways = [\"gateway-1\", \"gateway-2\", \"gateway-3\"]\n[console]\n",
    )
    .await?;
    let upstream = Upstream::start().await?;
    let gateways = Gateway::start_ready(
        &GATEWAY_IDS,
        &[nats.url()],
        &authz,
        &upstream,
        "status_interval_ms = 200",
    )
    .await?;
    let http = reqwest::Client::new();
    let token = authz.token("demo-client", "demo-secret").await?;
    for gw in &gateways {
        assert_eq!(gw.call(&http, "/echo/", &token).await, 200);
    }
    // A rule in force whose key and reason are markup.
    let hostile = "<img src=x onerror=\"window.__pwned=1\"><b>bold</b>";
    let (status, body) = authz
        .admin_revoke(json!({"subject": hostile, "reason": "<script>window.__pwned=2</script>"}))
        .await?;
    assert_eq!(status, 200, "{body}");

    let task = json!({
        "base": authz.admin_url,
        "token": token,
        "gateways": gateways.len(),
        "hostile": hostile,
        "screenshot": std::env::var("CONSOLE_SCREENSHOT").ok(),
    });
    let mut child = tokio::process::Command::new(&python)
        .arg(repo_root().join("system-tests/interop/console_browser.py"))
        // Chromium's profile and sockets go to the test's directory, removed with it.
        .env("TMPDIR", dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt as _;
        stdin.write_all(task.to_string().as_bytes()).await?;
    }
    let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .context("the browser run took over 180 s")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser run failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value =
        serde_json::from_str(stdout.trim()).with_context(|| format!("not JSON: {stdout}"))?;

    // Login: a wrong secret is refused in the page and sets nothing.
    assert!(
        seen["wrong_secret_error"]
            .as_str()
            .is_some_and(|e| e.contains("client authentication failed")),
        "{seen}"
    );
    assert_eq!(seen["cookies_after_wrong_secret"], 0);
    assert_eq!(seen["who"], "Logged in as admin");
    // One cookie, out of the page's scripts' reach, Secure, SameSite=Strict, host-only.
    assert_eq!(
        seen["cookies"],
        json!([{"name": "__Host-console", "secure": true, "httpOnly": true, "sameSite": "Strict", "path": "/"}]),
    );
    assert_eq!(seen["cookie_visible_to_script"], "");
    // The fleet: three gateways, ready; the outbox's NATS connection.
    let fleet = seen["fleet"].as_array().context("fleet")?;
    let names: Vec<&str> = fleet.iter().filter_map(|r| r[0].as_str()).collect();
    assert_eq!(names, GATEWAY_IDS);
    assert!(fleet.iter().all(|r| r[1] == "ready"), "{seen}");
    assert_eq!(seen["outbox_nats"], "connected");
    // The markup rule is shown as its text, and ran nothing.
    assert_eq!(seen["hostile_row"][1], hostile, "{seen}");
    assert_eq!(seen["hostile_row"][4], "<script>window.__pwned=2</script>");
    assert_eq!(seen["markup_elements_in_results"], 0);
    assert_eq!(seen["pwned"], Value::Null);
    assert_eq!(seen["title"], "Revocation console");
    // The receipt reached 3/3, every gateway with its time.
    assert_eq!(seen["receipt_count"], "3/3 gateways", "{seen}");
    let rows = seen["receipt_rows"].as_array().context("receipt rows")?;
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r[1] == "yes" && r[2] != "—"), "{seen}");
    // ... and each gateway refuses the token: the receipt said so because it is so.
    for gw in &gateways {
        assert_eq!(gw.call(&http, "/echo/", &token).await, 401, "{}", gw.url);
    }
    let all = &seen["all_rules"];
    assert_eq!(all[0][0], "subject", "{seen}");
    assert_eq!(
        (&all[1][0], &all[1][2]),
        (&json!("token"), &json!(authz.url))
    );
    let receipt = authz
        .receipt(seen["receipt_id"].as_str().unwrap_or(""))
        .await?;
    assert_eq!(receipt["enforced"], true, "{receipt}");
    assert_eq!(
        receipt["revocation"]["reason"],
        "laptop stolen (console test)"
    );
    assert_eq!(receipt["requested_by"], "admin");
    // The hostile page: its form post was refused as cross-site, its fetches changed
    // nothing, and its logout did not log the operator out.
    assert!(
        seen["form_post_answer"]
            .as_str()
            .is_some_and(|a| a.contains("another site")),
        "{seen}"
    );
    let rules = authz.revocations().await?;
    assert!(
        !rules
            .iter()
            .any(|r| r["sub"].as_str().is_some_and(|s| s.starts_with("csrf"))),
        "a cross-site request revoked something: {rules:?}"
    );
    assert_eq!(seen["logged_in_after_attack"], true);
    // Logout ends the session and clears the cookie.
    assert_eq!(seen["logged_out"], true);
    assert_eq!(seen["cookies_after_logout"], 0);
    // The page ran under its policy without a violation: the browser reported only the 401s
    // of the first session check and of the wrong secret.
    let messages = seen["console_messages"].as_array().context("messages")?;
    assert!(!messages.is_empty(), "no browser log read");
    for message in messages {
        let m = message.as_str().unwrap_or("");
        assert!(
            (m.contains("/console/session") || m.contains("/console/login"))
                && m.contains("401 (Unauthorized)"),
            "browser reported: {m}"
        );
    }
    // The hostile page's calls were refused or blocked, each of them.
    let attack = seen["attack_messages"]
        .as_array()
        .context("attack messages")?;
    assert!(attack.len() >= 3, "{attack:?}");
    // (The form post's answer is a page of the admin listener: the browser asks it for a
    // favicon, which it has not.)
    for message in attack {
        let m = message.as_str().unwrap_or("");
        if m.contains("/favicon.ico") {
            continue;
        }
        assert!(
            m.contains("403 (Forbidden)")
                || m.contains("ERR_BLOCKED_BY_RESPONSE")
                || m.contains("CORS")
                || m.contains("net::ERR_FAILED"),
            "hostile page: {m} (all: {attack:?})"
        );
    }
    Ok(())
}

/// A console client over plain HTTP: no cookie store, so that each test sends exactly the
/// cookies and headers it means to.
struct Console {
    http: reqwest::Client,
    base: String,
}

/// What a call got back.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Console {
    fn new(authz: &Authz) -> Self {
        Console {
            http: reqwest::Client::new(),
            base: authz.admin_url.clone(),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let mut request = self.http.request(
            reqwest::Method::from_bytes(method.as_bytes())?,
            format!("{}{path}", self.base),
        );
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.json().await.unwrap_or(Value::Null);
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// Logs in as `id`; the `Cookie` header value and the CSRF token.
    async fn login(&self, id: &str, secret: &str) -> anyhow::Result<(String, String)> {
        let answer = self
            .call(
                "POST",
                "/console/login",
                &[("content-type", "application/json")],
                Some(&json!({"client_id": id, "client_secret": secret}).to_string()),
            )
            .await?;
        if answer.status != 200 {
            bail!("login as {id}: {} {}", answer.status, answer.body);
        }
        let set_cookie = answer
            .headers
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .context("no Set-Cookie")?;
        let pair = set_cookie.split(';').next().unwrap_or("").to_string();
        let csrf = answer.body["csrf_token"]
            .as_str()
            .context("no csrf_token")?
            .to_string();
        Ok((pair, csrf))
    }

    /// `GET /admin/gateways` with the given headers; the status and the error code.
    async fn fleet_with(&self, headers: &[(&str, &str)]) -> anyhow::Result<(u16, Value)> {
        let answer = self.call("GET", "/admin/gateways", headers, None).await?;
        Ok((answer.status, answer.body["error"].clone()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sessions_refuse_every_forgery() -> anyhow::Result<()> {
    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let authz = Authz::start_with(
        dir.path(),
        &[nats.url()],
        "auth_failure_limit = 6\n[console]\nmax_sessions = 3\n",
    )
    .await?;
    let console = Console::new(&authz);
    let host = authz
        .admin_url
        .strip_prefix("http://")
        .unwrap_or("")
        .to_string();

    // The page and its files, and every admin answer, carry the policy and the framing,
    // sniffing, referrer and caching refusals.
    for (path, kind) in [
        ("/console", "text/html; charset=utf-8"),
        ("/console/console.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
        ("/console/icon.svg", "image/svg+xml"),
        ("/admin/gateways", "application/json"),
    ] {
        let answer = console.call("GET", path, &[], None).await?;
        let h = |name: &str| {
            answer
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        assert_eq!(h("content-type"), kind, "{path}");
        assert_eq!(h("content-security-policy"), CSP, "{path}");
        assert_eq!(h("x-frame-options"), "DENY", "{path}");
        assert_eq!(h("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(h("referrer-policy"), "no-referrer", "{path}");
        assert_eq!(h("cache-control"), "no-store", "{path}");
        assert_eq!(h("cross-origin-opener-policy"), "same-origin", "{path}");
    }
    let page = console.call("GET", "/console", &[], None).await?;
    assert_eq!(page.status, 200);

    // Login: only JSON, only an admin client, only from this origin.
    let good = json!({"client_id": "admin", "client_secret": "admin-secret"}).to_string();
    let json_type = ("content-type", "application/json");
    for (headers, body, status, why) in [
        (vec![], good.as_str(), 400, "no content type"),
        (
            vec![("content-type", "text/plain")],
            good.as_str(),
            400,
            "text/plain (a form can send it)",
        ),
        (
            vec![("content-type", "application/x-www-form-urlencoded")],
            "client_id=admin&client_secret=admin-secret",
            400,
            "a form",
        ),
        (
            vec![("content-type", "multipart/form-data; boundary=x")],
            good.as_str(),
            400,
            "multipart",
        ),
        (vec![json_type], "{", 400, "broken JSON"),
        (
            vec![json_type],
            r#"{"client_id":"admin"}"#,
            400,
            "no secret",
        ),
        (
            vec![json_type],
            r#"{"client_id":"","client_secret":"admin-secret"}"#,
            400,
            "empty id",
        ),
        (
            vec![json_type],
            r#"{"client_id":"admin","client_secret":"admin-secret","admin":true}"#,
            400,
            "an unknown field",
        ),
        (
            vec![json_type],
            r#"{"client_id":"admin","client_secret":"admin-secret","client_id":"x"}"#,
            400,
            "a doubled field",
        ),
        (
            vec![json_type],
            r#"{"client_id":"demo-client","client_secret":"demo-secret"}"#,
            403,
            "not an admin client",
        ),
        (
            vec![json_type, ("origin", "http://evil.example")],
            good.as_str(),
            403,
            "another origin",
        ),
        (
            vec![json_type, ("origin", "null")],
            good.as_str(),
            403,
            "an opaque origin",
        ),
        (
            vec![json_type, ("origin", "http://127.0.0.1:1")],
            good.as_str(),
            403,
            "another port",
        ),
        (
            vec![json_type, ("sec-fetch-site", "cross-site")],
            good.as_str(),
            403,
            "cross-site",
        ),
        (
            vec![json_type, ("sec-fetch-site", "same-site")],
            good.as_str(),
            403,
            "same site, other origin",
        ),
        (
            vec![
                json_type,
                ("sec-fetch-site", "same-origin"),
                ("sec-fetch-site", "same-origin"),
            ],
            good.as_str(),
            403,
            "a doubled Sec-Fetch-Site",
        ),
    ] {
        let answer = console
            .call("POST", "/console/login", &headers, Some(body))
            .await?;
        assert_eq!(answer.status, status, "{why}: {}", answer.body);
        assert!(answer.headers.get("set-cookie").is_none(), "{why}");
    }
    let origin = format!("http://{host}");
    let answer = console
        .call(
            "POST",
            "/console/login",
            &[
                json_type,
                ("origin", &origin),
                ("sec-fetch-site", "same-origin"),
            ],
            Some(&good),
        )
        .await?;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let set_cookie = answer
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    for part in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=28800",
    ] {
        assert!(set_cookie.contains(part), "{part} missing: {set_cookie}");
    }
    assert!(set_cookie.starts_with("__Host-console="), "{set_cookie}");
    assert!(!set_cookie.to_ascii_lowercase().contains("domain="));
    assert_eq!(answer.body["client_id"], "admin");

    let (cookie, csrf) = console.login("admin", "admin-secret").await?;
    let (cookie_b, csrf_b) = console.login("admin", "admin-secret").await?;
    assert_eq!(csrf.len(), 43);
    assert_ne!(csrf, csrf_b);
    assert!(
        !cookie.contains(&csrf),
        "the CSRF token is not the session id"
    );
    let ok = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    assert_eq!(console.fleet_with(&ok).await?.0, 200);
    // The cookie alone is no credential, not even to learn the CSRF token: the browser also
    // sends it to every other port of this host, and whatever answers there could replay it.
    let alone = console
        .call("GET", "/console/session", &[("cookie", &cookie)], None)
        .await?;
    assert_eq!(alone.status, 403, "{}", alone.body);
    assert!(alone.body.get("csrf_token").is_none());
    let session = console.call("GET", "/console/session", &ok, None).await?;
    assert_eq!(session.status, 200, "{}", session.body);
    assert!(session.body.get("csrf_token").is_none());
    assert_eq!(session.body["client_id"], "admin");
    assert_eq!(session.body["issuers"], json!([authz.url]));
    // The console answers only on its own host names: a DNS rebinding's name is refused,
    // at the login, the page and with a session; Basic callers are not concerned.
    let rebound = ("host", "evil.example:9091");
    let login = console
        .call("POST", "/console/login", &[json_type, rebound], Some(&good))
        .await?;
    assert_eq!(login.status, 403, "{}", login.body);
    assert!(login.headers.get("set-cookie").is_none());
    assert_eq!(
        console
            .call("GET", "/console", &[rebound], None)
            .await?
            .status,
        403
    );
    assert_eq!(
        console.fleet_with(&[ok[0], ok[1], rebound]).await?,
        (403, json!("access_denied"))
    );
    let localhost = format!("localhost:{}", host.rsplit(':').next().unwrap_or(""));
    assert_eq!(
        console
            .fleet_with(&[ok[0], ok[1], ("host", &localhost)])
            .await?
            .0,
        200
    );

    // The session without its CSRF token, with another's, doubled, or from elsewhere.
    let forged = format!("__Host-console={}", "A".repeat(43));
    let doubled = format!("{cookie}; {cookie_b}");
    let origin_evil = ("origin", "http://evil.example");
    for (headers, status, code, why) in [
        (
            vec![("cookie", cookie.as_str())],
            403,
            "access_denied",
            "no CSRF token",
        ),
        (
            vec![("cookie", cookie.as_str()), ("x-csrf-token", "")],
            403,
            "access_denied",
            "an empty CSRF token",
        ),
        (
            vec![
                ("cookie", cookie.as_str()),
                ("x-csrf-token", csrf_b.as_str()),
            ],
            403,
            "access_denied",
            "another session's token",
        ),
        (
            vec![("cookie", cookie.as_str()), ("x-csrf-token", &csrf[..42])],
            403,
            "access_denied",
            "a cut token",
        ),
        (
            vec![
                ("cookie", cookie.as_str()),
                ("x-csrf-token", csrf.as_str()),
                ("x-csrf-token", csrf.as_str()),
            ],
            403,
            "access_denied",
            "a doubled token",
        ),
        (
            vec![
                ("cookie", cookie.as_str()),
                ("x-csrf-token", csrf.as_str()),
                origin_evil,
            ],
            403,
            "access_denied",
            "another origin",
        ),
        (
            vec![
                ("cookie", cookie.as_str()),
                ("x-csrf-token", csrf.as_str()),
                ("sec-fetch-site", "same-site"),
            ],
            403,
            "access_denied",
            "same site, other origin",
        ),
        (
            vec![("cookie", forged.as_str()), ("x-csrf-token", csrf.as_str())],
            401,
            "login_required",
            "a forged session id",
        ),
        (
            vec![
                ("cookie", "__Host-console="),
                ("x-csrf-token", csrf.as_str()),
            ],
            401,
            "login_required",
            "an empty session id",
        ),
        (
            vec![
                ("cookie", doubled.as_str()),
                ("x-csrf-token", csrf.as_str()),
            ],
            401,
            "login_required",
            "two session cookies",
        ),
        (
            vec![
                ("cookie", &cookie.replace("__Host-", "")),
                ("x-csrf-token", csrf.as_str()),
            ],
            401,
            "invalid_client",
            "the cookie without its prefix",
        ),
        (
            vec![("x-csrf-token", csrf.as_str())],
            401,
            "invalid_client",
            "no cookie",
        ),
    ] {
        let (got, error) = console.fleet_with(&headers).await?;
        assert_eq!((got, error.as_str().unwrap_or("")), (status, code), "{why}");
    }
    let admin_basic = format!("Basic {}", base64_encode("admin:admin-secret"));
    assert_eq!(
        console
            .fleet_with(&[("authorization", &admin_basic), rebound])
            .await?
            .0,
        200
    );
    // ... but a browser's Basic call on a rebound name is refused before its credentials are
    // looked at (a page could otherwise spend this host's failure budget guessing).
    for browser in [
        ("sec-fetch-site", "same-origin"),
        ("origin", "http://evil.example:9091"),
    ] {
        assert_eq!(
            console
                .fleet_with(&[("authorization", &admin_basic), rebound, browser])
                .await?,
            (403, json!("access_denied")),
            "{browser:?}"
        );
    }
    // Basic credentials win over a cookie: a non-admin's are refused whatever the cookie.
    let demo = format!("Basic {}", base64_encode("demo-client:demo-secret"));
    let (got, _) = console
        .fleet_with(&[
            ("cookie", &cookie),
            ("x-csrf-token", &csrf),
            ("authorization", &demo),
        ])
        .await?;
    assert_eq!(got, 403);
    // The admin API with Basic credentials refuses a browser's cross-site call too.
    for site in ["cross-site", "same-site"] {
        let (got, _) = console
            .fleet_with(&[("authorization", &admin_basic), ("sec-fetch-site", site)])
            .await?;
        assert_eq!(got, 403, "{site}");
    }
    assert_eq!(
        console
            .fleet_with(&[("authorization", &admin_basic)])
            .await?
            .0,
        200
    );

    // Revoking and searching with the session.
    let revoke = console
        .call(
            "POST",
            "/admin/revocations",
            &[ok[0], ok[1], json_type],
            Some(r#"{"subject":"mallory","reason":"console"}"#),
        )
        .await?;
    assert_eq!(revoke.status, 200, "{}", revoke.body);
    let no_csrf_revoke = console
        .call(
            "POST",
            "/admin/revocations",
            &[ok[0], json_type],
            Some(r#"{"subject":"csrf-victim"}"#),
        )
        .await?;
    assert_eq!(no_csrf_revoke.status, 403);
    let found = console
        .call("GET", "/admin/revocations?subject=mallory", &ok, None)
        .await?;
    let items = found.body["revocations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(items.len(), 1, "{}", found.body);
    assert_eq!(items[0]["requested_by"], "admin");
    assert_eq!(items[0]["reason"], "console");
    for (query, why) in [
        ("subject=mallory&subject=eve", "a doubled parameter"),
        ("subject=mallory&client_id=c", "two rule filters"),
        ("sub=mallory", "an unknown parameter"),
        ("subject=", "an empty value"),
        (
            &format!("subject={}", "x".repeat(257)) as &str,
            "a value too long",
        ),
        ("limit=-1", "a negative limit"),
    ] {
        let answer = console
            .call("GET", &format!("/admin/revocations?{query}"), &ok, None)
            .await?;
        assert_eq!(answer.status, 400, "{why}: {}", answer.body);
    }
    let none = console
        .call(
            "GET",
            "/admin/revocations?subject=mallory&iss=https://other.example",
            &ok,
            None,
        )
        .await?;
    assert_eq!(none.body["revocations"], json!([]));
    let outbox = console.call("GET", "/admin/outbox", &ok, None).await?;
    assert_eq!(outbox.status, 200, "{}", outbox.body);
    assert_eq!(outbox.body["backlog"], 0);
    assert_eq!(outbox.body["nats_connected"], true);
    assert!(outbox.body["last_published"]["sequence"]
        .as_u64()
        .is_some_and(|s| s >= 1));

    // A session ends when its client gets a new secret, or is removed.
    let created = console
        .call(
            "POST",
            "/admin/clients",
            &[ok[0], ok[1], json_type],
            Some(r#"{"id":"oncall","admin":true,"audiences":["admin-api"]}"#),
        )
        .await?;
    assert_eq!(created.status, 201, "{}", created.body);
    let secret = created.body["client_secret"]
        .as_str()
        .context("secret")?
        .to_string();
    let (oncall, oncall_csrf) = console.login("oncall", &secret).await?;
    let oncall_ok = [
        ("cookie", oncall.as_str()),
        ("x-csrf-token", oncall_csrf.as_str()),
    ];
    assert_eq!(console.fleet_with(&oncall_ok).await?.0, 200);
    let rotated = console
        .call("POST", "/admin/clients/oncall/secret", &ok, None)
        .await?;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    assert_eq!(
        console.fleet_with(&oncall_ok).await?,
        (401, json!("login_required"))
    );
    let secret = rotated.body["client_secret"]
        .as_str()
        .context("secret")?
        .to_string();
    let (oncall, oncall_csrf) = console.login("oncall", &secret).await?;
    let oncall_ok = [
        ("cookie", oncall.as_str()),
        ("x-csrf-token", oncall_csrf.as_str()),
    ];
    assert_eq!(console.fleet_with(&oncall_ok).await?.0, 200);
    let removed = console
        .call("DELETE", "/admin/clients/oncall", &ok, None)
        .await?;
    assert_eq!(removed.status, 204, "{}", removed.body);
    assert_eq!(
        console.fleet_with(&oncall_ok).await?,
        (401, json!("login_required"))
    );

    // At most three sessions: a fourth login ends the longest idle one (cookie_b).
    assert_eq!(console.fleet_with(&ok).await?.0, 200);
    let _third = console.login("admin", "admin-secret").await?;
    let _fourth = console.login("admin", "admin-secret").await?;
    let b_ok = [
        ("cookie", cookie_b.as_str()),
        ("x-csrf-token", csrf_b.as_str()),
    ];
    assert_eq!(
        console.fleet_with(&b_ok).await?,
        (401, json!("login_required"))
    );
    assert_eq!(console.fleet_with(&ok).await?.0, 200);

    // Logout clears the cookie in any case, but ends the session only with its CSRF token.
    let without = console
        .call("POST", "/console/logout", &[ok[0]], None)
        .await?;
    assert_eq!(without.status, 200);
    assert_eq!(without.body["logged_out"], false);
    assert!(without.headers.get("set-cookie").is_some());
    assert_eq!(console.fleet_with(&ok).await?.0, 200);
    let out = console.call("POST", "/console/logout", &ok, None).await?;
    assert_eq!(out.status, 200);
    assert_eq!(out.body["logged_out"], true);
    let cleared = out
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        cleared.starts_with("__Host-console=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert_eq!(
        console.fleet_with(&ok).await?,
        (401, json!("login_required"))
    );
    let after = console.call("GET", "/console/session", &ok, None).await?;
    assert_eq!(after.status, 401);

    // Wrong secrets from another origin or host name are refused before they are checked:
    // they spend nothing of the source's budget.
    let guess = r#"{"client_id":"admin","client_secret":"guess"}"#;
    for refused in [origin_evil, rebound, ("sec-fetch-site", "cross-site")] {
        for _ in 0..4 {
            let answer = console
                .call("POST", "/console/login", &[json_type, refused], Some(guess))
                .await?;
            assert_eq!(answer.status, 403, "{refused:?}");
        }
    }
    // Wrong secrets at the login spend the source's failure budget like any client
    // authentication (auth_failure_limit = 6 here): refused with 429 before any more
    // verification.
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let answer = console
            .call("POST", "/console/login", &[json_type], Some(guess))
            .await?;
        statuses.push(answer.status);
        if answer.status == 429 {
            assert!(answer.headers.get("retry-after").is_some());
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert_eq!(statuses[..statuses.len() - 1], [401; 6], "{statuses:?}");
    Ok(())
}

/// A session unused for `idle_timeout_s` ends, whatever else arrives with its cookie: calls
/// without its CSRF token, and the page's background refreshes, are not use; the page's own
/// calls are. Also: `secure_cookie = false` names the cookie `console`, without `Secure`;
/// a request with no `Host`, or two, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_end_however_the_page_polls() -> anyhow::Result<()> {
    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let authz = Authz::start_with(
        dir.path(),
        &[nats.url()],
        "[console]\nidle_timeout_s = 10\nsecure_cookie = false\n",
    )
    .await?;
    let console = Console::new(&authz);
    let answer = console
        .call(
            "POST",
            "/console/login",
            &[("content-type", "application/json")],
            Some(r#"{"client_id":"admin","client_secret":"admin-secret"}"#),
        )
        .await?;
    let set_cookie = answer
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(set_cookie.starts_with("console="), "{set_cookie}");
    assert!(!set_cookie.contains("Secure"), "{set_cookie}");
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
    let (idle, idle_csrf) = console.login("admin", "admin-secret").await?;
    let (busy, busy_csrf) = console.login("admin", "admin-secret").await?;
    let started = std::time::Instant::now();
    let mut rounds = 0;
    // Every 500 ms: the idle session gets a call without its token and a background
    // refresh; the busy one an operator's call. Until the idle one ends (bounded: 30 s).
    let ended = loop {
        rounds += 1;
        let (status, _) = console
            .fleet_with(&[("cookie", &idle), ("x-csrf-token", "wrong")])
            .await?;
        let (background, error) = console
            .fleet_with(&[
                ("cookie", &idle),
                ("x-csrf-token", &idle_csrf),
                ("x-console-background", "1"),
            ])
            .await?;
        let operator = console
            .fleet_with(&[("cookie", &busy), ("x-csrf-token", &busy_csrf)])
            .await?;
        assert_eq!(operator.0, 200, "the busy session ended");
        if background == 401 {
            assert_eq!(error, "login_required");
            break started.elapsed();
        }
        assert_eq!((status, background), (403, 200));
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the idle session never ended ({rounds} rounds)");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(ended >= Duration::from_secs(9), "ended after {ended:?}");
    assert!(rounds > 10);

    // No Host (HTTP/1.0), or two: refused at the console.
    let addr = authz.admin_url.trim_start_matches("http://").to_string();
    for request in [
        "GET /console HTTP/1.0\r\n\r\n".to_string(),
        format!(
            "GET /console HTTP/1.1\r\nHost: {addr}\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        ),
    ] {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(&addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await??;
        let head = String::from_utf8_lossy(&out);
        assert!(
            head.starts_with("HTTP/1.0 403")
                || head.starts_with("HTTP/1.1 403")
                || head.starts_with("HTTP/1.1 400"),
            "{request:?}: {head}"
        );
    }
    Ok(())
}

/// Without `[console]` there is no console, and a session cookie is no credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_section_there_is_no_console() -> anyhow::Result<()> {
    let nats = Nats::start()?;
    let dir = tempfile::tempdir()?;
    let authz = Authz::start(dir.path(), &[nats.url()]).await?;
    let console = Console::new(&authz);
    for (method, path) in [
        ("GET", "/console"),
        ("GET", "/console/console.js"),
        ("POST", "/console/login"),
        ("GET", "/console/session"),
    ] {
        let answer = console
            .call(
                method,
                path,
                &[("content-type", "application/json")],
                Some("{}"),
            )
            .await?;
        assert_eq!(answer.status, 404, "{method} {path}");
    }
    let forged = format!("__Host-console={}", "A".repeat(43));
    let (status, error) = console
        .fleet_with(&[("cookie", &forged), ("x-csrf-token", "x")])
        .await?;
    assert_eq!((status, error), (401, json!("invalid_client")));
    Ok(())
}

fn base64_encode(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}
