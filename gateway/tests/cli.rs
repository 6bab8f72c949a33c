//! The gateway binary: bad configuration exits 64 with a message naming the problem, before
//! binding anything; SIGTERM stops a running gateway cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gateway");

fn config(certs: &Path, extra: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
issuer = "http://127.0.0.1:1"
audiences = ["demo-api"]
jwks_file = "/nonexistent/jwks.json"
{extra}
[[routes]]
prefix = "/echo/"
upstream = "http://127.0.0.1:9"
scopes = ["echo:read"]

[nats]
urls = ["tls://127.0.0.1:1"]
ca_file = "{c}/ca.pem"
cert_file = "{c}/gateway-1.pem"
key_file = "{c}/gateway-1-key.pem"
inbox_name = "gateway-1"
"#,
        c = certs.display()
    )
}

fn certs(dir: &Path) -> std::path::PathBuf {
    let certs = dir.join("certs");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../certs/make-dev-certs.sh");
    let status = Command::new(script)
        .arg(&certs)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    certs
}

/// Each bad configuration exits 64 and names what is wrong.
#[test]
fn bad_config_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let cases = [
        ("unknown key", config(&certs, "colour = \"blue\""), "colour"),
        (
            "bad algorithm",
            config(&certs, "algorithms = [\"HS256\"]"),
            "algorithms",
        ),
        (
            "bad listen",
            config(&certs, "").replace("127.0.0.1:0\"\nadmin", "nowhere\"\nadmin"),
            "listen",
        ),
        (
            "plaintext NATS",
            config(&certs, "").replace("tls://", "nats://"),
            "plaintext",
        ),
        (
            "missing cert",
            config(&certs, "").replace("gateway-1.pem", "nobody.pem"),
            "cert_file",
        ),
        (
            "JWKS over plain http from another host",
            config(&certs, "").replace(
                "jwks_file = \"/nonexistent/jwks.json\"",
                "jwks_url = \"http://idp.example/jwks.json\"",
            ),
            "jwks_url",
        ),
        (
            "https upstream without upstream_tls",
            config(&certs, "").replace("http://127.0.0.1:9", "https://127.0.0.1:9"),
            "upstream_tls",
        ),
        (
            "upstream with a path",
            config(&certs, "").replace("http://127.0.0.1:9", "http://127.0.0.1:9/api"),
            "upstream",
        ),
        (
            "upstream client certificate without its key",
            config(
                &certs,
                &format!(
                    "[upstream_tls]\nca_file = \"{c}/ca.pem\"\ncert_file = \"{c}/gateway-1.pem\"",
                    c = certs.display()
                ),
            ),
            "upstream_tls",
        ),
        (
            "prefix not in normal form",
            config(&certs, "").replace("prefix = \"/echo/\"", "prefix = \"/a/../echo/\""),
            "prefix",
        ),
        (
            "prefix with an encoded slash",
            config(&certs, "").replace("prefix = \"/echo/\"", "prefix = \"/a%2Fb/\""),
            "prefix",
        ),
        (
            "CONNECT on a route",
            config(&certs, "").replace(
                "scopes = [\"echo:read\"]",
                "scopes = [\"echo:read\"]\nmethods = [\"GET\", \"CONNECT\"]",
            ),
            "CONNECT",
        ),
        (
            "lower-case method",
            config(&certs, "").replace(
                "scopes = [\"echo:read\"]",
                "scopes = [\"echo:read\"]\nmethods = [\"get\"]",
            ),
            "methods",
        ),
        (
            "identity prefix not a header name",
            config(&certs, "identity_header_prefix = \"x auth\""),
            "identity_header_prefix",
        ),
        (
            "no first-byte bound",
            config(&certs, "[limits]\nfirst_byte_timeout_ms = 0"),
            "first_byte_timeout_ms",
        ),
        (
            "route host with a port",
            config(&certs, "").replace(
                "scopes = [\"echo:read\"]",
                "scopes = [\"echo:read\"]\nhost = \"api.example:443\"",
            ),
            "host",
        ),
        (
            "a renamed key under both names",
            config(&certs, "leeway = 30\nleeway_s = 30"),
            "leeway_s",
        ),
        (
            "another error, with a renamed key: the warning goes with the error",
            config(&certs, "max_ttl = 3600\nlog_format = \"xml\""),
            "configuration key max_ttl is deprecated",
        ),
    ];
    for (name, text, needle) in cases {
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{name}: {stderr}");
        assert!(stderr.contains(needle), "{name}: {stderr}");
    }
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.path().join("absent.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--config"));
}

/// A running gateway exits 0 on SIGTERM, promptly. Its configuration uses every renamed key,
/// in the file and from the environment: each is read, with a warning.
#[test]
fn sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let path = dir.path().join("gateway.toml");
    let old_names = "leeway = 30\njwks_refresh = 300\njwks_min_refresh = 10\nupstream_timeout = 30\nshutdown_grace = 10";
    std::fs::write(&path, config(&certs, old_names)).unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .env("GATEWAY_MAX_TTL", "3600")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let log: Vec<String> = lines
        .by_ref()
        .take(50)
        .map_while(Result::ok)
        .take_while(|l| !l.contains("admin listening"))
        .collect();
    assert!(
        log.len() < 50,
        "the gateway never logged its listeners: {log:?}"
    );
    for (old, new) in [
        ("leeway", "leeway_s"),
        ("jwks_refresh", "jwks_refresh_s"),
        ("jwks_min_refresh", "jwks_min_refresh_s"),
        ("upstream_timeout", "upstream_timeout_s"),
        ("shutdown_grace", "shutdown_grace_s"),
        ("max_ttl", "max_ttl_s"),
    ] {
        let warned = log.iter().any(|l| {
            l.contains("WARN") && l.contains(&format!("key {old} is deprecated: call it {new}"))
        });
        assert!(warned, "no warning for {old}: {log:?}");
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the gateway did not stop within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
