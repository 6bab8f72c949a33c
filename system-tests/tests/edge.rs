//! Security at the edge, tried as an attacker would: path spellings against a real nginx
//! that resolves paths itself, hosts, spoofed headers, methods, transfer codings, malformed
//! bodies and upgrades. Each test sends many variants of its class.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use system_tests::{eventually, Gateway, Nginx, Stack};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the gateway must do with a spelling: refuse it (400), or send it to the upstream
/// server of this route.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Refused,
    Route(&'static str),
}
use Expect::{Refused, Route};

const PUBLIC: Expect = Route("public");
const PROTECTED: Expect = Route("protected");
const CATCHALL: Expect = Route("catchall");

/// The spellings: plain, encoded, double-encoded, mixed case, `//`, `..;`, backslash,
/// overlong UTF-8, control characters, and route prefixes with and without their slash.
const SPELLINGS: &[(&str, Expect)] = &[
    ("/public/x", PUBLIC),
    ("/public/../echo/x", PROTECTED),
    ("/public/%2e%2e/echo/x", PROTECTED),
    ("/public/%2E%2E/echo/x", PROTECTED),
    ("/public/.%2e/echo/x", PROTECTED),
    ("/public/%2E./echo/x", PROTECTED),
    ("/public/./../echo/x", PROTECTED),
    ("/public/x/../../echo/x", PROTECTED),
    ("/PUBLIC/../echo/x", PROTECTED),
    ("/public;x=1/../echo/x", PROTECTED),
    ("/public/%252e%252e/echo/x", PUBLIC),
    ("/public/%25%32%65%25%32%65/echo/x", PUBLIC),
    ("/public/..%2fecho/x", Refused),
    ("/public/..%2Fecho/x", Refused),
    ("/public/%2e%2e%2fecho/x", Refused),
    ("/public/..%5cecho/x", Refused),
    ("/public/a%2fb", Refused),
    ("/public/..\\echo/x", Refused),
    ("/public\\..\\echo\\x", Refused),
    ("/public/..;/echo/x", Refused),
    ("/public/..;x=1/echo/x", Refused),
    ("/public/.;/echo/x", Refused),
    ("/public/%2e%2e;/echo/x", Refused),
    ("/public/..%3b/echo/x", Refused),
    ("/public/%c0%ae%c0%ae/echo/x", Refused),
    ("/public/%c0%ae./echo/x", Refused),
    ("/public/%e0%80%ae%e0%80%ae/echo/x", Refused),
    ("/public/..%c0%afecho/x", Refused),
    ("/public/%u002e%u002e/echo/x", Refused),
    ("/public/%00/../echo/x", Refused),
    ("/public/x%00", Refused),
    ("/public/%0d%0aX-Auth-Subject:%20admin", Refused),
    ("/public/%", Refused),
    ("/public/%zz", Refused),
    ("/..", Refused),
    ("/../echo/x", Refused),
    ("/public/../../echo/x", Refused),
    ("//echo/x", PROTECTED),
    ("///echo///x", PROTECTED),
    ("/public//../echo/x", PROTECTED),
    ("/./echo/x", PROTECTED),
    ("/%65cho/x", PROTECTED),
    ("/%65%63%68%6F/x", PROTECTED),
    ("/echo", PROTECTED),
    ("/echo/", PROTECTED),
    ("/echo/.", PROTECTED),
    ("/echo/x/..", PROTECTED),
    ("/public", PUBLIC),
    ("/public/", PUBLIC),
    ("/public/.", PUBLIC),
    ("/public/...", PUBLIC),
    ("/public/x/%2e", PUBLIC),
    ("/public/%7e/x", PUBLIC),
    ("/public/x?y=/../echo/x", PUBLIC),
    ("/public/caf%C3%A9", PUBLIC),
    ("/echo/%2e%2e/public/x", PUBLIC),
    ("/echo/x/../../public/y", PUBLIC),
    ("/public/..", CATCHALL),
    ("/echoes", CATCHALL),
    ("/ECHO/x", PROTECTED),
    ("/Echo", PROTECTED),
    ("/echo;x/secret", PROTECTED),
    ("/echo;jsessionid=1/x", PROTECTED),
    ("/eCHo;/x", PROTECTED),
    ("/public;x/y", PUBLIC),
    ("/x;/echo", CATCHALL),
    ("/ech%6f", PROTECTED),
    ("/x/..%2f..%2fecho", Refused),
];

/// The route a path resolved by nginx belongs to, by the gateway's own rule (prefix at a
/// segment boundary, any case, as Express and ASP.NET route; `/echo/` also covers `/echo`).
fn route_of(uri: &str) -> &'static str {
    let uri = uri.to_ascii_lowercase();
    let under = |prefix: &str| uri == prefix || uri.starts_with(&format!("{prefix}/"));
    if under("/echo") {
        "protected"
    } else if under("/public") {
        "public"
    } else {
        "catchall"
    }
}

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn body_of(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Every path spelling is either refused by the gateway or reaches the nginx server of the
/// route that nginx's own resolution of the forwarded path belongs to: a public route never
/// leads to a protected path, and a refused request never reaches nginx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_mean_the_same_to_the_gateway_and_nginx() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let nginx = Nginx::start(&["public", "protected", "catchall"])?;
    let routes = format!(
        r#"
[[routes]]
prefix = "/"
upstream = "{catchall}"
public = true

[[routes]]
prefix = "/public/"
upstream = "{public}"
public = true

[[routes]]
prefix = "/echo/"
upstream = "{protected}"
scopes = ["echo:read"]
"#,
        catchall = nginx.url("catchall"),
        public = nginx.url("public"),
        protected = nginx.url("protected"),
    );
    let gw = stack.ready_gateway("gateway-1", &routes).await?;
    let token = stack.authz.token("demo-client", "demo-secret").await?;
    assert!(SPELLINGS.len() >= 40);
    let mut served = 0;
    let mut failures = Vec::new();
    for &(spelling, expect) in SPELLINGS {
        for with_token in [false, true] {
            let auth = if with_token {
                format!("Authorization: Bearer {token}\r\n")
            } else {
                String::new()
            };
            let request = format!(
                "GET {spelling} HTTP/1.1\r\nHost: api.example\r\n{auth}Connection: close\r\n\r\n"
            );
            let response = gw.raw(request.as_bytes()).await?;
            let status = status_of(&response);
            let outcome = match status {
                200 => {
                    served += 1;
                    let body = body_of(&response).trim();
                    let (server, uri) = body
                        .strip_prefix("server=")
                        .and_then(|b| b.split_once(" uri="))
                        .unwrap_or(("?", "?"));
                    if route_of(uri) != server {
                        failures.push(format!(
                            "{spelling}: reached {server} but nginx resolved {uri}"
                        ));
                    }
                    if server == "protected" && !with_token {
                        failures.push(format!("{spelling}: protected without a token"));
                    }
                    Route(match server {
                        "public" => "public",
                        "protected" => "protected",
                        "catchall" => "catchall",
                        _ => "?",
                    })
                }
                400 => Refused,
                401 if !with_token => PROTECTED,
                _ => Route("unexpected status"),
            };
            if outcome != expect {
                failures.push(format!(
                    "{spelling} (token: {with_token}): expected {expect:?}, got {status} {outcome:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Only what the gateway let through reached nginx.
    eventually(
        Duration::from_secs(5),
        "nginx's log to count every request",
        || async { (nginx.served() == served).then_some(()) },
    )
    .await?;
    Ok(())
}

/// A gateway with the demo upstream and a few extra routes.
async fn gateway(stack: &Stack, extra: &str) -> anyhow::Result<Gateway> {
    let upstream = &stack.upstream.url;
    let routes = format!(
        r#"{extra}
[[routes]]
prefix = "/echo/"
upstream = "{upstream}"
scopes = ["echo:read"]

[[routes]]
prefix = "/public/"
upstream = "{upstream}"
public = true

[[routes]]
prefix = "/read-only/"
upstream = "{upstream}"
public = true
methods = ["GET", "HEAD"]

[[routes]]
prefix = "/files/"
upstream = "{upstream}"
public = true
encoded_slashes = "keep"
"#
    );
    let gw = stack.ready_gateway("gateway-1", &routes).await?;
    Ok(gw)
}

/// Reads a response head byte by byte (at most 5 s a byte), leaving what follows it (an
/// upgraded connection's bytes) unread.
async fn read_head(stream: &mut tokio::net::TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut byte)).await??;
        head.push(byte[0]);
    }
    Ok(head)
}

/// Sends a raw request and returns the status and, on 200, the demo upstream's echo.
async fn send(gw: &Gateway, request: &str) -> anyhow::Result<(u16, Value)> {
    let response = gw.raw(request.as_bytes()).await?;
    let echo = serde_json::from_str(body_of(&response)).unwrap_or(Value::Null);
    Ok((status_of(&response), echo))
}

/// A host that is not a valid host and optional port, two Hosts, no Host in HTTP/1.1, or a
/// Host that disagrees with the absolute-form target: 400, nothing forwarded. Valid hosts
/// reach the upstream in `X-Forwarded-Host` and a quoted `Forwarded` host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_are_checked() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let gw = gateway(&stack, "").await?;
    let before = stack.upstream.request_count();
    let bad_hosts = [
        "Host: a,b\r\n",
        "Host: a;for=10.0.0.1\r\n",
        "Host: a\"b\r\n",
        "Host: \"a\"\r\n",
        "Host: a'b\r\n",
        "Host: user@api.example\r\n",
        "Host: a b\r\n",
        "Host: a/b\r\n",
        "Host: a\\b\r\n",
        "Host: api.example:80:80\r\n",
        "Host: api.example:x\r\n",
        "Host: api.example:99999\r\n",
        "Host: [::1\r\n",
        "Host: \r\n",
        "Host: a%2eb\r\n",
        "Host: \u{e9}.example\r\n",
        "Host: a.example\r\nHost: a.example\r\n",
        "Host: a.example\r\nHost: b.example\r\n",
        "",
    ];
    for host in bad_hosts {
        let request = format!("GET /public/x HTTP/1.1\r\n{host}Connection: close\r\n\r\n");
        let (status, _) = send(&gw, &request).await?;
        assert_eq!(status, 400, "{host:?}");
    }
    // Absolute form: a Host naming another host is refused; the same host in another
    // spelling is accepted, and the target's authority is what is forwarded.
    for host in ["evil.example", "evil.example:8080", "api.example.evil"] {
        let request = format!(
            "GET http://api.example/public/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(send(&gw, &request).await?.0, 400, "{host}");
    }
    assert_eq!(
        stack.upstream.request_count(),
        before,
        "a refused request was forwarded"
    );
    let (status, echo) = send(
        &gw,
        "GET http://API.example:8080/public/x HTTP/1.1\r\nHost: api.example.\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert_eq!(status, 200);
    assert_eq!(echo["headers"]["x-forwarded-host"], "API.example:8080");
    let forwarded = echo["headers"]["forwarded"].as_str().unwrap_or_default();
    assert!(
        forwarded.ends_with(";proto=http;host=\"API.example:8080\""),
        "{forwarded}"
    );
    for (host, ok) in [
        ("[::1]:8080", true),
        ("svc_1.internal.", true),
        ("127.0.0.1", true),
    ] {
        let request =
            format!("GET /public/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        assert_eq!(send(&gw, &request).await?.0 == 200, ok, "{host}");
    }
    // HTTP/1.0 needs no Host.
    assert_eq!(send(&gw, "GET /public/x HTTP/1.0\r\n\r\n").await?.0, 200);
    Ok(())
}

/// Client headers that could pass for the gateway's identity, forwarding or rewrite headers
/// never reach the upstream, in any spelling, on protected and public routes; the token is
/// removed on public routes too; a custom identity prefix is enforced the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_headers_never_reach_the_upstream() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let token = stack.authz.token("demo-client", "demo-secret").await?;
    let spoofs = [
        "X-Auth-Subject",
        "x-auth-subject",
        "X_Auth_Subject",
        "X-AUTH-CLIENT-ID",
        "X_Auth_Client_Id",
        "X-Auth-Scope",
        "x_auth_scope",
        "X-Auth-Roles",
        "X-Auth-Tenant",
        "X_Auth-Admin",
        "X-Forwarded-For",
        "X_Forwarded_For",
        "X-Forwarded-Host",
        "X-Forwarded-Proto",
        "X-Forwarded-Prefix",
        "X-Forwarded-Port",
        "X_Forwarded_Server",
        "Forwarded",
        "X-Real-IP",
        "X_Real_IP",
        "True-Client-IP",
        "X-Client-IP",
        "CF-Connecting-IP",
        "X-Original-URL",
        "X_Original_URL",
        "X-Rewrite-URL",
        "X-HTTP-Method-Override",
        "X_HTTP_Method_Override",
        "X-Method-Override",
        "X-HTTP-Method",
    ];
    let spoof_lines: String = spoofs.iter().map(|h| format!("{h}: evil\r\n")).collect();
    let gw = gateway(&stack, "").await?;
    for (path, auth) in [("/echo/x", true), ("/public/x", true), ("/public/x", false)] {
        let auth_line = if auth {
            format!("Authorization: Bearer {token}\r\n")
        } else {
            String::new()
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: api.example\r\n{auth_line}{spoof_lines}Connection: close\r\n\r\n"
        );
        let (status, echo) = send(&gw, &request).await?;
        assert_eq!(status, 200, "{path}");
        let headers = echo["headers"].as_object().expect("an echo");
        for (name, value) in headers {
            assert_ne!(value, "evil", "{path}: {name} reached the upstream");
            assert!(!name.contains('_'), "{path}: {name} reached the upstream");
        }
        assert!(
            headers.get("authorization").is_none(),
            "{path}: the token was forwarded"
        );
        let protected = path.starts_with("/echo/");
        assert_eq!(headers.contains_key("x-auth-subject"), protected, "{path}");
        if protected {
            assert_eq!(headers["x-auth-subject"], "demo-client");
            let scope = headers["x-auth-scope"].as_str().unwrap_or_default();
            assert!(scope.split(' ').any(|s| s == "echo:read"), "{scope}");
        }
        assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    }

    // Another prefix: its own headers are the gateway's; the default ones become ordinary.
    let custom = stack
        .ready_gateway(
            "gateway-2",
            "identity_header_prefix = \"X-Gw-\"\nuntrusted_headers = [\"X-Tenant-Override\"]",
        )
        .await?;
    let request = format!(
        "GET /echo/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nX-Gw-Subject: evil\r\nX_GW_ROLE: evil\r\nX-Tenant-Override: evil\r\nX-Real-IP: 10.0.0.1\r\nConnection: close\r\n\r\n"
    );
    let (status, echo) = send(&custom, &request).await?;
    assert_eq!(status, 200);
    let headers = &echo["headers"];
    assert_eq!(headers["x-gw-subject"], "demo-client");
    assert_eq!(headers["x-gw-client-id"], "demo-client");
    assert!(headers.get("x-gw-role").is_none() && headers.get("x_gw_role").is_none());
    assert!(headers.get("x-tenant-override").is_none());
    // Not in this gateway's list.
    assert_eq!(headers["x-real-ip"], "10.0.0.1");
    assert!(headers.get("x-auth-subject").is_none());
    Ok(())
}

/// CONNECT and TRACE get 405 everywhere by default; a route's own method list is enforced
/// with `Allow`; nothing refused reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_are_checked() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let gw = gateway(&stack, "").await?;
    let before = stack.upstream.request_count();
    for (request, allow) in [
        (
            "TRACE /public/x HTTP/1.1",
            "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
        ),
        (
            "TRACE /echo/x HTTP/1.1",
            "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
        ),
        (
            "CONNECT api.example:443 HTTP/1.1",
            "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
        ),
        (
            "CONNECT 127.0.0.1:22 HTTP/1.1",
            "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
        ),
        ("POST /read-only/x HTTP/1.1", "GET, HEAD"),
        ("DELETE /read-only/x HTTP/1.1", "GET, HEAD"),
        ("PROPFIND /read-only/x HTTP/1.1", "GET, HEAD"),
    ] {
        let response = gw
            .raw(format!("{request}\r\nHost: api.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes())
            .await?;
        assert_eq!(status_of(&response), 405, "{request}: {response}");
        assert!(
            response
                .to_ascii_lowercase()
                .contains(&format!("\r\nallow: {}\r\n", allow.to_ascii_lowercase())),
            "{request}: {response}"
        );
    }
    assert_eq!(stack.upstream.request_count(), before);
    for request in [
        "GET /read-only/x HTTP/1.1",
        "OPTIONS /public/x HTTP/1.1",
        "PATCH /public/x HTTP/1.1",
    ] {
        let (status, _) = send(
            &gw,
            &format!("{request}\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        )
        .await?;
        assert_eq!(status, 200, "{request}");
    }
    // A route that keeps encoded slashes forwards them as they are.
    let (status, echo) = send(
        &gw,
        "GET /files/a%2fb%5Cc HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert_eq!(status, 200);
    assert_eq!(echo["path"], "/files/a%2Fb%5Cc");
    Ok(())
}

/// How a raw upstream treats each connection.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Reads until the client closes; never answers.
    Silent,
    /// Answers every request head with these bytes; after a `101`, echoes what it reads.
    Answer(&'static str),
}

/// A raw TCP upstream that counts connections and how many of them the gateway closed.
struct RawUpstream {
    url: String,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl RawUpstream {
    async fn start(behaviour: Behaviour) -> anyhow::Result<RawUpstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, c) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let mut head = Vec::new();
                    let mut tunnel = false;
                    loop {
                        let n = match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if tunnel {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            continue;
                        }
                        head.extend_from_slice(&buf[..n]);
                        if let Behaviour::Answer(answer) = behaviour {
                            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                                head.clear();
                                if stream.write_all(answer.as_bytes()).await.is_err() {
                                    break;
                                }
                                tunnel = answer.starts_with("HTTP/1.1 101");
                            }
                        }
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Ok(RawUpstream {
            url,
            accepted,
            closed,
        })
    }
}

async fn gateway_to(
    stack: &Stack,
    id: &str,
    upstream: &str,
    extra: &str,
) -> anyhow::Result<Gateway> {
    let routes = format!(
        "upstream_timeout_s = 3\n[[routes]]\nprefix = \"/echo/\"\nupstream = \"{upstream}\"\nscopes = [\"echo:read\"]\n{extra}\n[[routes]]\nprefix = \"/plain/\"\nupstream = \"{upstream}\"\npublic = true\n"
    );
    let gw = stack.ready_gateway(id, &routes).await?;
    Ok(gw)
}

/// Transfer codings other than `chunked` get 501 and odd lists 400, before any upstream is
/// contacted; a malformed chunked body gets 400 (not 502) and the upstream connection that
/// received part of it is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_transfer_codings() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let upstream = RawUpstream::start(Behaviour::Silent).await?;
    let gw = gateway_to(&stack, "gateway-1", &upstream.url, "").await?;
    for (coding, status) in [
        ("gzip, chunked", 501),
        ("deflate, chunked", 501),
        ("x-custom, chunked", 501),
        ("chunked, chunked", 400),
        (", chunked", 400),
    ] {
        let request = format!(
            "POST /plain/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {coding}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        let response = gw.raw(request.as_bytes()).await?;
        assert_eq!(status_of(&response), status, "{coding}: {response}");
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 0);
    for bad_chunk in [
        "ZZ\r\nhello\r\n",
        "5\r\nhelloXX\r\n",
        "-1\r\n",
        "fffffffffffffffffffff\r\nhello\r\n",
    ] {
        let before = upstream.accepted.load(Ordering::SeqCst);
        let request = format!(
            "POST /plain/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nfirs\r\n{bad_chunk}0\r\n\r\n"
        );
        let response = gw.raw(request.as_bytes()).await?;
        assert_eq!(status_of(&response), 400, "{bad_chunk:?}: {response}");
        let after = upstream.accepted.load(Ordering::SeqCst);
        assert_eq!(
            after,
            before + 1,
            "{bad_chunk:?}: the body started upstream"
        );
        eventually(
            Duration::from_secs(5),
            "the upstream connection to close",
            || async { (upstream.closed.load(Ordering::SeqCst) == after).then_some(()) },
        )
        .await?;
    }
    Ok(())
}

/// An upstream's `101` reaches the client only for a WebSocket upgrade it asked for on a
/// route that allows it, after authentication; the connection is then a tunnel both ways.
/// Anywhere else a `101` is 502. Identity headers in a response are removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_and_responses() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let token = stack.authz.token("demo-client", "demo-secret").await?;
    let switching = RawUpstream::start(Behaviour::Answer(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nX-Auth-Subject: evil\r\n\r\n",
    ))
    .await?;
    let gw = gateway_to(&stack, "gateway-1", &switching.url, "websocket = true").await?;
    let upgrade = |path: &str, auth: bool| {
        let auth = if auth {
            format!("Authorization: Bearer {token}\r\n")
        } else {
            String::new()
        };
        format!("GET {path} HTTP/1.1\r\nHost: a\r\n{auth}Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    };
    // Unauthenticated: 401 before any upstream is contacted.
    let response = gw.raw(upgrade("/echo/ws", false).as_bytes()).await?;
    assert_eq!(status_of(&response), 401);
    assert_eq!(switching.accepted.load(Ordering::SeqCst), 0);
    // Allowed: 101, then bytes go both ways.
    let addr = gw.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(upgrade("/echo/ws", true).as_bytes())
        .await?;
    let head = read_head(&mut stream).await?;
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(!head.contains("x-auth-subject"), "{head}");
    stream.write_all(b"ping through the tunnel").await?;
    let mut echoed = [0u8; 23];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed)).await??;
    assert_eq!(&echoed, b"ping through the tunnel");
    drop(stream);
    // Not asked for (the upgrade headers are stripped on a route without websocket), or
    // not allowed: the upstream's 101 is refused.
    for request in [
        format!("GET /echo/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"),
        upgrade("/plain/ws", false),
    ] {
        let response = gw.raw(request.as_bytes()).await?;
        assert_eq!(status_of(&response), 502, "{request}: {response}");
    }
    // Over HTTP/2 there is no upgrade: a 101 is refused.
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build()?;
    let response = h2.get(format!("{}/plain/ws", gw.url)).send().await?;
    assert_eq!(response.status(), 502);

    // Identity headers in an ordinary response are removed too.
    let answering = RawUpstream::start(Behaviour::Answer(
        "HTTP/1.1 200 OK\r\nX-Auth-Subject: evil\r\nX_Auth_Scope: evil\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok",
    ))
    .await?;
    let gw = gateway_to(&stack, "gateway-2", &answering.url, "").await?;
    let response = gw
        .raw(b"GET /plain/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await?;
    let lower = response.to_ascii_lowercase();
    assert_eq!(status_of(&response), 200, "{response}");
    assert!(lower.contains("x-kept: yes"));
    assert!(
        !lower.contains("x-auth-subject") && !lower.contains("x_auth_scope"),
        "{response}"
    );
    Ok(())
}

/// Over HTTP/2: a `host` that disagrees with `:authority` is malformed (400); cookie fields
/// are joined into one before forwarding over HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_host_and_cookies() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let gw = gateway(&stack, "").await?;
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build()?;
    let mut cookies = reqwest::header::HeaderMap::new();
    cookies.append("cookie", "a=1".parse()?);
    cookies.append("cookie", "b=2".parse()?);
    let response = h2
        .get(format!("{}/public/x", gw.url))
        .headers(cookies)
        .send()
        .await?;
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let echo: Value = response.json().await?;
    assert_eq!(echo["headers"]["cookie"], "a=1; b=2");
    let response = h2
        .get(format!("{}/public/x", gw.url))
        .header("host", "evil.example")
        .send()
        .await?;
    assert_eq!(response.status(), 400);
    Ok(())
}

/// A WebSocket tunnel is bounded too: once nothing moves in either direction for the idle
/// timeout, both connections are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnels_close_when_idle() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let token = stack.authz.token("demo-client", "demo-secret").await?;
    let switching = RawUpstream::start(Behaviour::Answer(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ))
    .await?;
    let routes = format!(
        "[limits]\nidle_timeout_ms = 800\n\n[[routes]]\nprefix = \"/ws/\"\nupstream = \"{}\"\nscopes = [\"echo:read\"]\nwebsocket = true\n",
        switching.url
    );
    let gw = stack.ready_gateway("gateway-1", &routes).await?;
    let addr = gw.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET /ws/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n").as_bytes())
        .await?;
    let head = read_head(&mut stream).await?;
    assert!(head.starts_with(b"HTTP/1.1 101"));
    stream.write_all(b"ping").await?;
    let mut echoed = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed)).await??;
    assert_eq!(&echoed, b"ping");
    // Silence: the gateway closes the tunnel, and the upstream sees its side close.
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await??;
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "closed too early"
    );
    eventually(
        Duration::from_secs(5),
        "the upstream side to close",
        || async { (switching.closed.load(Ordering::SeqCst) == 1).then_some(()) },
    )
    .await?;
    Ok(())
}

/// A WebSocket tunnel keeps its client connection's places under `max_connections` and
/// `max_connections_per_source` for as long as it lasts: with a cap of two a source, a tunnel
/// and one more connection are all that source gets; once the tunnel ends, it gets another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnels_count_against_the_connection_caps() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let token = stack.authz.token("demo-client", "demo-secret").await?;
    let switching = RawUpstream::start(Behaviour::Answer(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ))
    .await?;
    let routes = format!(
        "[limits]\nmax_connections_per_source = 2\n\n[[routes]]\nprefix = \"/ws/\"\nupstream = \"{}\"\nscopes = [\"echo:read\"]\nwebsocket = true\n\n[[routes]]\nprefix = \"/public/\"\nupstream = \"{}\"\npublic = true\n",
        switching.url, stack.upstream.url
    );
    let gw = stack.ready_gateway("gateway-1", &routes).await?;
    let addr = gw.url.trim_start_matches("http://").to_string();
    let mut tunnel = tokio::net::TcpStream::connect(&addr).await?;
    tunnel
        .write_all(format!("GET /ws/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n").as_bytes())
        .await?;
    assert!(read_head(&mut tunnel).await?.starts_with(b"HTTP/1.1 101"));
    // The tunnel plus one: the second is served, the third closed at once.
    let mut second = tokio::net::TcpStream::connect(&addr).await?;
    second
        .write_all(b"GET /public/x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await?;
    assert!(read_head(&mut second).await?.starts_with(b"HTTP/1.1 200"));
    let mut third = tokio::net::TcpStream::connect(&addr).await?;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf)).await?;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "a third connection was accepted"
    );
    assert!(gw.metric("gateway_connections_refused_total").await >= 1.0);
    // The tunnel ends: its place is free again.
    drop(tunnel);
    eventually(Duration::from_secs(10), "a place free again", || async {
        let mut fresh = tokio::net::TcpStream::connect(&addr).await.ok()?;
        fresh
            .write_all(b"GET /public/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        read_head(&mut fresh)
            .await
            .ok()?
            .starts_with(b"HTTP/1.1 200")
            .then_some(())
    })
    .await?;
    Ok(())
}

/// A request body that stops arriving for the listener's idle timeout is answered 408 (as
/// nginx's `client_body_timeout`), long before the upstream timeout; one that keeps coming,
/// however slowly, within the bound goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_timed_out() -> anyhow::Result<()> {
    let stack = Stack::start(0).await?;
    let gw = stack
        .ready_gateway("gateway-1", "[limits]\nidle_timeout_ms = 800")
        .await?;
    let addr = gw.url.trim_start_matches("http://").to_string();
    // Slow but steady: 10 bytes every 300 ms, 100 in all.
    let mut steady = tokio::net::TcpStream::connect(&addr).await?;
    steady
        .write_all(b"POST /public/up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
        .await?;
    for _ in 0..10 {
        steady.write_all(&[b'x'; 10]).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let head = String::from_utf8(read_head(&mut steady).await?)?;
    assert_eq!(status_of(&head), 200, "{head}");
    // Ten bytes, then nothing.
    for (what, head) in [
        ("a declared length", "Content-Length: 100\r\n"),
        ("chunked", "Transfer-Encoding: chunked\r\n"),
    ] {
        let mut stalled = tokio::net::TcpStream::connect(&addr).await?;
        stalled
            .write_all(format!("POST /public/up HTTP/1.1\r\nHost: a\r\n{head}\r\n").as_bytes())
            .await?;
        let first: &[u8] = if head.starts_with("Transfer") {
            b"a\r\nxxxxxxxxxx\r\n"
        } else {
            b"xxxxxxxxxx"
        };
        stalled.write_all(first).await?;
        let started = std::time::Instant::now();
        let answer = String::from_utf8(read_head(&mut stalled).await?)?;
        let took = started.elapsed();
        eprintln!("{what}: {} after {took:?}", status_of(&answer));
        assert_eq!(status_of(&answer), 408, "{what}: {answer}");
        assert!(took < Duration::from_secs(10), "{what}: {took:?}");
    }
    Ok(())
}
