//! Tokens, client secrets and signing keys never appear in the logs, even at debug level.

use std::io::Write;
use std::sync::{Arc, Mutex};

use system_tests::Stack;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every service logs at debug level through a whole session (tokens issued, used, refused,
/// revoked, bad credentials); none of the secrets shows up in what was logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secrets_in_logs() -> anyhow::Result<()> {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let stack = Stack::start(1).await?;
    let gw = &stack.gateways[0];
    let http = reqwest::Client::new();
    let token = stack.authz.token("demo-client", "demo-secret").await?;
    assert_eq!(gw.call(&http, "/echo/", &token).await, 200);
    let tampered = format!("{token}x");
    assert_eq!(gw.call(&http, "/echo/", &tampered).await, 401);
    assert_eq!(
        stack
            .authz
            .revoke("demo-client", "demo-secret", &token)
            .await?,
        200
    );
    assert!(stack
        .authz
        .token("demo-client", "wrong-secret-value")
        .await
        .is_err());
    let (status, _) = stack
        .authz
        .admin_revoke(serde_json::json!({"token": token}))
        .await?;
    assert_eq!(status, 200);
    system_tests::eventually(
        std::time::Duration::from_secs(10),
        "the revocation",
        || async { (gw.call(&http, "/echo/", &token).await == 401).then_some(()) },
    )
    .await?;

    let logs = String::from_utf8(
        captured
            .0
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone(),
    )?;
    assert!(logs.contains("token issued"), "nothing was captured");
    assert!(logs.contains("revocation committed"));
    let signature = token.rsplit('.').next().unwrap_or_default();
    let key = std::fs::read_to_string(stack.dir.path().join("signing-key.pem"))?;
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    for (what, secret) in [
        ("token signature", signature),
        ("client secret", "demo-secret"),
        ("wrong secret", "wrong-secret-value"),
        ("admin secret", "admin-secret"),
        ("signing key", &key_body[..40]),
    ] {
        assert!(!logs.contains(secret), "{what} appears in the logs");
    }
    println!("{} bytes of debug logs checked", logs.len());
    Ok(())
}
