//! The fault tests' probe: a steady stream of requests with watched tokens, recording every
//! revoked token served past the staleness bound.

use super::*;

/// Tokens a [`Probe`] sends, each with when its revocation was acknowledged.
type WatchedTokens = Arc<std::sync::Mutex<Vec<(String, Option<Instant>)>>>;

/// Sends a steady stream of requests with every watched token to every gateway, and records
/// each 2xx answered to a token revoked more than `bound` before the request was sent.
pub struct Probe {
    tokens: WatchedTokens,
    pub gateways: Arc<std::sync::Mutex<Vec<String>>>,
    stop: CancellationToken,
    task: Option<JoinHandle<ProbeReport>>,
}

/// What a [`Probe`] saw.
#[derive(Debug, Default)]
pub struct ProbeReport {
    pub requests: u64,
    pub by_status: std::collections::BTreeMap<u16, u64>,
    /// (gateway, token index, how long after its revocation) of every 2xx past the bound.
    pub violations: Vec<(String, usize, Duration)>,
}

impl Probe {
    /// Starts probing `gateways` (base URLs) on `path`; revoked tokens must be refused once
    /// they were revoked more than `bound` earlier.
    pub fn start(gateways: Vec<String>, path: &str, bound: Duration) -> Probe {
        let tokens: WatchedTokens = Arc::default();
        let gateways = Arc::new(std::sync::Mutex::new(gateways));
        let stop = CancellationToken::new();
        let (t, g, s, path) = (
            tokens.clone(),
            gateways.clone(),
            stop.clone(),
            path.to_string(),
        );
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default();
            let mut report = ProbeReport::default();
            while !s.is_cancelled() {
                let targets = g.lock().map(|g| g.clone()).unwrap_or_default();
                let count = t.lock().map(|t| t.len()).unwrap_or(0);
                for gw in &targets {
                    for i in 0..count {
                        let token = t.lock().ok().and_then(|t| t.get(i).map(|e| e.0.clone()));
                        let Some(token) = token else { continue };
                        let sent = Instant::now();
                        let status = match http
                            .get(format!("{gw}{path}"))
                            .bearer_auth(&token)
                            .send()
                            .await
                        {
                            Ok(r) => r.status().as_u16(),
                            Err(_) => 0,
                        };
                        report.requests += 1;
                        *report.by_status.entry(status).or_default() += 1;
                        if (200..300).contains(&status) {
                            let revoked = t.lock().ok().and_then(|t| t.get(i).and_then(|e| e.1));
                            if let Some(at) = revoked {
                                if sent > at + bound {
                                    report.violations.push((gw.clone(), i, sent - at));
                                }
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            report
        });
        Probe {
            tokens,
            gateways,
            stop,
            task: Some(task),
        }
    }

    /// Starts watching `token`; returns its index.
    pub fn watch(&self, token: &str) -> usize {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        t.push((token.to_string(), None));
        t.len() - 1
    }

    /// Records that the API acknowledged the revocation of token `index` now.
    pub fn revoked(&self, index: usize) {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = t.get_mut(index) {
            entry.1 = Some(Instant::now());
        }
    }

    /// Replaces a gateway's URL (after a restart on new ports).
    pub fn replace_gateway(&self, old: &str, new: &str) {
        let mut g = self.gateways.lock().unwrap_or_else(|p| p.into_inner());
        for url in g.iter_mut().filter(|u| *u == old) {
            *url = new.to_string();
        }
    }

    /// Stops probing and returns the report.
    pub async fn finish(mut self) -> ProbeReport {
        self.stop.cancel();
        match self.task.take() {
            Some(task) => task.await.unwrap_or_default(),
            None => ProbeReport::default(),
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Waits until every gateway refuses every token with 401.
pub async fn all_refused(gateways: &[String], tokens: &[String], limit: Duration) -> Result<()> {
    let http = reqwest::Client::new();
    for gw in gateways {
        for token in tokens {
            eventually(limit, "the revocation to be enforced", || async {
                let r = http
                    .get(format!("{gw}/echo/"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .ok()?;
                (r.status() == 401).then_some(())
            })
            .await?;
        }
    }
    Ok(())
}
