//! The fleet: every gateway publishes its status on NATS, on a subject that names it, and the
//! authz-server keeps the view of who is running and how fresh each one is.
//!
//! A gateway may publish only on its own subject (`gateway.status.v1.<identity>`, by the NATS
//! permissions of its certificate's identity), and the authz-server takes a status only when
//! the identity it names is the one in the subject: one gateway cannot speak for another.

use serde::{Deserialize, Serialize};

/// Subjects of the gateways' statuses: `gateway.status.v1.<identity>`.
pub const STATUS_SUBJECT_PREFIX: &str = "gateway.status.v1";

/// The only status version this code writes and understands.
pub const STATUS_VERSION: u32 = 1;

/// Largest status message read.
pub const MAX_STATUS_BYTES: usize = 4096;

/// The subject on which the gateway `identity` publishes.
pub fn status_subject(identity: &str) -> String {
    format!("{STATUS_SUBJECT_PREFIX}.{identity}")
}

/// What one gateway says of itself, every status period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayStatus {
    /// Format version, [`STATUS_VERSION`].
    pub v: u32,
    /// Its NATS identity (the `inbox_name` of its configuration).
    pub gateway: String,
    /// Random per process: a restarted gateway is a new instance.
    pub instance: String,
    /// The gateway's version.
    pub version: String,
    /// Unix milliseconds: when this process started, and when it sent this status.
    pub started_at_ms: u64,
    pub sent_at_ms: u64,
    /// The stream epoch and the last sequence its revocation set has applied.
    pub epoch: u64,
    pub last_sequence: u64,
    /// How old its proof of freshness is (none before the first heartbeat).
    pub staleness_ms: Option<u64>,
    /// Whether it vouches for tokens, and if not, why (`/readyz`'s reasons).
    pub ready: bool,
    pub reasons: Vec<String>,
    /// Whether it accepts tokens at all now: its gates pass for at least one issuer. Not the
    /// same as `ready`: a draining gateway, or one missing one issuer's keys, is not ready and
    /// still accepts tokens. `None` (a status that does not say): assume it does.
    #[serde(default)]
    pub accepts_tokens: Option<bool>,
    /// Its `on_stale` policy is `serve`: it keeps accepting tokens while stale, so no
    /// staleness bound makes it refuse a revoked one. `None`: assume it does.
    #[serde(default)]
    pub serves_when_stale: Option<bool>,
    /// Its `status_interval_ms` (a status at least this often) and `max_staleness_ms`.
    #[serde(default)]
    pub status_interval_ms: Option<u64>,
    #[serde(default)]
    pub max_staleness_ms: Option<u64>,
    /// Revocation rules held.
    pub rules: u64,
}

impl GatewayStatus {
    /// Whether this gateway may be accepting tokens (so that a revocation counts as enforced
    /// only once it has applied it).
    pub fn may_accept_tokens(&self) -> bool {
        self.accepts_tokens.unwrap_or(true)
    }

    /// Whether a staleness bound makes this gateway refuse tokens once it misses heartbeats
    /// (its policy is `reject`, as it says).
    pub fn bounded_by_staleness(&self) -> bool {
        self.serves_when_stale == Some(false) && self.max_staleness_ms.is_some()
    }

    /// The status published on `subject`, checked: size, version, and the identity it names
    /// being the one of the subject (the only subject its author may publish on).
    pub fn decode(subject: &str, payload: &[u8]) -> Result<Self, &'static str> {
        if payload.len() > MAX_STATUS_BYTES {
            return Err("oversized");
        }
        let status: GatewayStatus =
            serde_json::from_slice(payload).map_err(|_| "not a gateway status")?;
        if status.v != STATUS_VERSION {
            return Err("unknown status version");
        }
        let named = subject
            .strip_prefix(STATUS_SUBJECT_PREFIX)
            .and_then(|rest| rest.strip_prefix('.'));
        if named != Some(status.gateway.as_str()) || status.gateway.is_empty() {
            return Err("the status names another gateway than its subject");
        }
        if status.gateway.len() > 128 || status.instance.len() > 128 || status.reasons.len() > 16 {
            return Err("fields out of range");
        }
        Ok(status)
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Strings, numbers and booleans always serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(gateway: &str) -> GatewayStatus {
        GatewayStatus {
            v: STATUS_VERSION,
            gateway: gateway.into(),
            instance: "i-1".into(),
            version: "0.1.0".into(),
            started_at_ms: 1,
            sent_at_ms: 2,
            epoch: 3,
            last_sequence: 4,
            staleness_ms: Some(5),
            ready: true,
            reasons: vec![],
            accepts_tokens: Some(true),
            serves_when_stale: Some(false),
            status_interval_ms: Some(1000),
            max_staleness_ms: Some(5000),
            rules: 6,
        }
    }

    /// A status is taken only on its own subject, in its version, within its size.
    #[test]
    fn a_status_speaks_only_for_its_subject() {
        let own = status("gateway-1");
        let json = own.to_json();
        assert_eq!(
            GatewayStatus::decode("gateway.status.v1.gateway-1", &json),
            Ok(own.clone())
        );
        for subject in [
            "gateway.status.v1.gateway-2",
            "gateway.status.v1.gateway-1.x",
            "gateway.status.v1",
            "gateway.status.v2.gateway-1",
            "gateway.status.v1gateway-1",
        ] {
            assert!(GatewayStatus::decode(subject, &json).is_err(), "{subject}");
        }
        let mut newer = own.clone();
        newer.v = 2;
        assert!(GatewayStatus::decode("gateway.status.v1.gateway-1", &newer.to_json()).is_err());
        let mut chatty = own.clone();
        chatty.reasons = vec!["x".into(); 17];
        assert!(GatewayStatus::decode("gateway.status.v1.gateway-1", &chatty.to_json()).is_err());
        assert!(GatewayStatus::decode("gateway.status.v1.gateway-1", &[b' '; 5000]).is_err());
        assert!(GatewayStatus::decode("gateway.status.v1.gateway-1", b"{}").is_err());
        let empty = status("");
        assert!(GatewayStatus::decode("gateway.status.v1.", &empty.to_json()).is_err());
    }
}
