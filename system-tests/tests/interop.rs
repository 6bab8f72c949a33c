//! Interoperability, proven by implementations that are not ours: a standard OAuth 2.0
//! client library obtains a token, another JOSE library validates it against the JWKS and
//! checks every RFC 9068 header and claim, and the metadata's URLs answer
//! (`system-tests/interop/check_authz.py`, run with the Python environment that
//! `deploy/ensure-interop-venv.sh` makes).

use system_tests::{repo_root, Authz, Nats};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_client_and_jose_library() -> anyhow::Result<()> {
    let python = repo_root().join("target/interop-venv/bin/python");
    anyhow::ensure!(
        python.exists(),
        "{} is missing: run deploy/ensure-interop-venv.sh (make test does)",
        python.display()
    );
    let nats = Nats::start()?;
    for alg in ["RS256", "ES256", "EdDSA"] {
        let dir = tempfile::tempdir()?;
        let authz = Authz::start_with(
            dir.path(),
            &[nats.url()],
            &format!("signing_alg = \"{alg}\""),
        )
        .await?;
        let out = tokio::process::Command::new(&python)
            .arg(repo_root().join("system-tests/interop/check_authz.py"))
            .args([authz.url.as_str(), "demo-client", "demo-secret", "demo-api"])
            // oauthlib refuses http:// unless told; the server is on loopback.
            .env("OAUTHLIB_INSECURE_TRANSPORT", "1")
            .output()
            .await?;
        assert!(
            out.status.success(),
            "{alg}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("interop ok"));
    }
    Ok(())
}
