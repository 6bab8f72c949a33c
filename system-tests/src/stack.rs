//! NATS, the authz-server, the demo upstream and ready gateways, started together.

use super::*;

/// NATS, the authz-server, the demo upstream and `gateways` ready gateways.
pub struct Stack {
    pub gateways: Vec<Gateway>,
    pub upstream: Upstream,
    pub authz: Authz,
    pub nats: Nats,
    pub dir: tempfile::TempDir,
}

impl Stack {
    pub async fn start(gateways: usize) -> Result<Stack> {
        let nats = Nats::start()?;
        let dir = tempfile::tempdir()?;
        let authz = Authz::start(dir.path(), &[nats.url()]).await?;
        let upstream = Upstream::start().await?;
        let mut started = Vec::new();
        for id in GATEWAY_IDS.iter().take(gateways) {
            let gw = Gateway::start(id, &[nats.url()], &authz, &upstream).await?;
            gw.wait_ready().await?;
            started.push(gw);
        }
        Ok(Stack {
            gateways: started,
            upstream,
            authz,
            nats,
            dir,
        })
    }
}

impl Stack {
    /// Starts a gateway as identity `id` on this stack's NATS, authz-server and demo
    /// upstream, with `extra` configuration (see [`Gateway::start_with`]), and waits until
    /// it is ready.
    pub async fn ready_gateway(&self, id: &str, extra: &str) -> Result<Gateway> {
        let gw = Gateway::start_with(
            id,
            id,
            &[self.nats.url()],
            &self.authz,
            &self.upstream,
            extra,
        )
        .await?;
        gw.wait_ready().await?;
        Ok(gw)
    }
}
