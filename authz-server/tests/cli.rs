//! The authz-server binary: bad configuration exits 64 naming the problem; `hash-secret`
//! prints a verifiable Argon2id hash.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::io::Write;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_authz-server");

/// Each bad configuration exits 64 and names what is wrong.
#[test]
fn bad_config_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let base = r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
issuer = "https://auth.example"
database = "x.db"
signing_key_file = "key.pem"
[nats]
urls = ["tls://127.0.0.1:1"]
ca_file = "/etc/hostname"
cert_file = "/etc/hostname"
key_file = "/etc/hostname"
inbox_name = "authz"
"#;
    let cases = [
        (
            "unknown key",
            base.replace("database", "colour = 1\ndatabase"),
            "colour",
        ),
        (
            "plain http issuer",
            base.replace("https://auth.example", "http://auth.example"),
            "issuer",
        ),
        (
            "ttl above max",
            base.replace("database", "token_ttl_s = 7200\ndatabase"),
            "token_ttl_s",
        ),
        (
            "a renamed key under both names",
            base.replace("database", "max_ttl = 3600\nmax_ttl_s = 3600\ndatabase"),
            "max_ttl_s",
        ),
        (
            "no admin listener",
            base.replace("admin_listen = \"127.0.0.1:0\"\n", ""),
            "admin_listen",
        ),
        (
            "no first-byte bound",
            format!("{base}\n[limits]\nfirst_byte_timeout_ms = 0\n"),
            "limits.first_byte_timeout_ms",
        ),
        (
            "bad algorithm",
            base.replace("database", "signing_alg = \"HS256\"\ndatabase"),
            "signing_alg",
        ),
        (
            "plaintext secret",
            format!(
                "{base}\n[[clients]]\nid = \"a\"\nsecret_hash = \"hunter2\"\naudience = \"x\"\n"
            ),
            "secret_hash",
        ),
    ];
    for (name, text, needle) in cases {
        let path = dir.path().join("authz.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{name}: {stderr}");
        assert!(stderr.contains(needle), "{name}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{name}: the secret was echoed");
    }
    let out = Command::new(BIN).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "no --config");
}

/// `hash-secret` reads the secret on stdin and prints an Argon2id PHC string.
#[test]
fn hash_secret_prints_a_phc_hash() {
    let mut child = Command::new(BIN)
        .arg("hash-secret")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("s3cret"));
}
