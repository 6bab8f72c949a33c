//! The operators' console (`[console]`): its configuration and its sessions.
//!
//! An admin client logs in once with its credentials (`POST /console/login`, the same client
//! authentication and failure budget as every admin call) and gets a session: a random
//! 256-bit id in an `HttpOnly`, `SameSite=Strict` cookie, and a CSRF token the page sends
//! back in `X-CSRF-Token` with every call. Sessions live in this process's memory only: a
//! restart, or another replica, asks for a new login. Only a SHA-256 digest of each session
//! id is kept, so the table lookup compares digests (nothing an attacker can steer byte by
//! byte) and a memory dump holds no usable cookie.
//!
//! A session ends when it has been idle (no call but the page's background refreshes) for
//! `idle_timeout_s`, `max_lifetime_s` after login,
//! at logout, when the table is full and it is the longest idle (at most `max_sessions`), and
//! as soon as its client is removed, loses `admin` or gets a new secret
//! ([`crate::http`] checks that on every call).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SecureRandom as _;
use base64::Engine as _;
use serde::Deserialize;

/// `[console]`: the console on the admin listener. Absent: no console (`/console` is 404).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Seconds a session may go unused before it ends: an operator's action (a search, a
    /// revocation) is use; the page's own refreshes of the fleet and of a receipt are not,
    /// so an unattended console logs itself out.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_s: u64,
    /// Seconds a session lasts after login, however busy.
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime_s: u64,
    /// Sessions held at once; a login past it ends the longest idle one.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Whether the cookie is `Secure` (named `__Host-console`): the browser then sends it
    /// only over HTTPS, or to a loopback address. Turn it off only to reach a plain-HTTP
    /// admin listener on a private network that is not loopback.
    #[serde(default = "default_secure_cookie")]
    pub secure_cookie: bool,
    /// The `Host` values (`name:port`) the admin listener answers browsers on: the console,
    /// and any call a browser makes; any other is refused ([`Hosts`]). Default: the admin
    /// listener's own address, and `localhost` with its port.
    #[serde(default)]
    pub hosts: Vec<String>,
}

fn default_idle_timeout() -> u64 {
    900
}
fn default_max_lifetime() -> u64 {
    8 * 3600
}
fn default_max_sessions() -> usize {
    32
}
fn default_secure_cookie() -> bool {
    true
}

impl ConsoleConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(10..=86_400).contains(&self.idle_timeout_s) {
            return Err("console.idle_timeout_s: must be between 10 and 86400".into());
        }
        if !(self.idle_timeout_s..=7 * 86_400).contains(&self.max_lifetime_s) {
            return Err("console.max_lifetime_s: must be between idle_timeout_s and 604800".into());
        }
        if !(1..=1024).contains(&self.max_sessions) {
            return Err("console.max_sessions: must be between 1 and 1024".into());
        }
        if self.hosts.iter().any(|h| {
            h.is_empty() || h.len() > 255 || h.contains(|c: char| c.is_whitespace() || c == '/')
        }) {
            return Err("console.hosts: each must be a host name or address with its port, e.g. \"ops.example:9091\"".into());
        }
        Ok(())
    }

    /// The session cookie's name: with the `__Host-` prefix when it is `Secure`, so that the
    /// browser also refuses one set with a `Domain` or another `Path`.
    pub fn cookie_name(&self) -> &'static str {
        if self.secure_cookie {
            "__Host-console"
        } else {
            "console"
        }
    }
}

/// A logged-in admin client.
#[derive(Clone)]
pub struct Session {
    pub client_id: String,
    /// The client's secret hash at login: a new secret ends the session.
    pub secret_hash: String,
    /// What `X-CSRF-Token` must carry.
    pub csrf: String,
    created: Instant,
    used: Instant,
}

/// The `Host` values the admin listener answers browsers on (`console.hosts`, or by default
/// its own address and `localhost` with its port; for an unspecified address `127.0.0.1`,
/// `[::1]` and `localhost` with its port). A page on any other name that a DNS rebinding
/// points at the listener is same-origin with itself and would pass every other check.
/// Compared without case and without a default port (`:80`, `:443`), which browsers leave
/// out of `Host`.
pub struct Hosts(Vec<String>);

impl Hosts {
    pub fn new(configured: &[String], listen: std::net::SocketAddr) -> Self {
        let port = listen.port();
        let hosts: Vec<String> = if !configured.is_empty() {
            configured.to_vec()
        } else if listen.ip().is_unspecified() {
            vec![
                format!("127.0.0.1:{port}"),
                format!("[::1]:{port}"),
                format!("localhost:{port}"),
            ]
        } else {
            vec![listen.to_string(), format!("localhost:{port}")]
        };
        Hosts(hosts.iter().map(|h| Self::normal(h)).collect())
    }

    fn normal(host: &str) -> String {
        let host = host.to_ascii_lowercase();
        match host
            .strip_suffix(":443")
            .or_else(|| host.strip_suffix(":80"))
        {
            Some(bare) => bare.to_string(),
            None => host,
        }
    }

    /// Whether `host` (a `Host` header's value) is one of them.
    pub fn allow(&self, host: &str) -> bool {
        let host = Self::normal(host);
        self.0.contains(&host)
    }
}

/// The sessions of this process.
pub struct Sessions {
    config: ConsoleConfig,
    /// By SHA-256 of the session id.
    table: Mutex<HashMap<[u8; 32], Session>>,
}

/// 32 random bytes, base64url without padding.
fn random_token() -> Result<String, &'static str> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system random number generator failed")?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn digest(id: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Sessions {
    pub fn new(config: ConsoleConfig) -> Self {
        Sessions {
            config,
            table: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &ConsoleConfig {
        &self.config
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn alive(&self, session: &Session, now: Instant) -> bool {
        now.saturating_duration_since(session.used)
            < Duration::from_secs(self.config.idle_timeout_s)
            && now.saturating_duration_since(session.created)
                < Duration::from_secs(self.config.max_lifetime_s)
    }

    /// A new session for `client_id`: its id (the cookie's value) and the session.
    pub fn create(
        &self,
        client_id: &str,
        secret_hash: &str,
        now: Instant,
    ) -> Result<(String, Session), &'static str> {
        let id = random_token()?;
        let session = Session {
            client_id: client_id.to_string(),
            secret_hash: secret_hash.to_string(),
            csrf: random_token()?,
            created: now,
            used: now,
        };
        let mut table = self.table();
        table.retain(|_, s| self.alive(s, now));
        while table.len() >= self.config.max_sessions {
            let Some(oldest) = table.iter().min_by_key(|(_, s)| s.used).map(|(k, _)| *k) else {
                break;
            };
            table.remove(&oldest);
        }
        table.insert(digest(&id), session.clone());
        Ok((id, session))
    }

    /// The live session whose id is `id` at `now`; an expired one is removed. Finding it
    /// does not count as use: [`Sessions::touch`] does, once the call is known to be the
    /// page's own (its CSRF token matched).
    pub fn get(&self, id: &str, now: Instant) -> Option<Session> {
        let key = digest(id);
        let mut table = self.table();
        let session = table.get(&key)?;
        if !self.alive(session, now) {
            table.remove(&key);
            return None;
        }
        Some(session.clone())
    }

    /// Marks the session whose id is `id` used at `now`.
    pub fn touch(&self, id: &str, now: Instant) {
        if let Some(session) = self.table().get_mut(&digest(id)) {
            session.used = session.used.max(now);
        }
    }

    /// Ends the session whose id is `id`, if there is one.
    pub fn end(&self, id: &str) {
        self.table().remove(&digest(id));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

    use super::*;

    fn sessions(max: usize) -> Sessions {
        Sessions::new(ConsoleConfig {
            idle_timeout_s: 60,
            max_lifetime_s: 300,
            max_sessions: max,
            secure_cookie: true,
            hosts: Vec::new(),
        })
    }

    /// Ids and CSRF tokens are 256 random bits each, all different.
    #[test]
    fn ids_are_random_and_distinct() {
        let s = sessions(8);
        let now = Instant::now();
        let (a, sa) = s.create("admin", "h", now).unwrap();
        let (b, sb) = s.create("admin", "h", now).unwrap();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert_ne!(sa.csrf, sb.csrf);
        assert_ne!(a, sa.csrf);
        assert_eq!(s.get(&a, now).unwrap().csrf, sa.csrf);
        // The table holds digests, not ids.
        assert!(!s.table().contains_key(a.as_bytes()));
    }

    /// Idle past the timeout, or older than the lifetime however busy: gone.
    #[test]
    fn sessions_expire_idle_and_absolute() {
        let s = sessions(8);
        let t0 = Instant::now();
        let (id, _) = s.create("admin", "h", t0).unwrap();
        // Looking a session up is not using it: only touch is.
        assert!(s.get(&id, t0 + Duration::from_secs(59)).is_some());
        assert!(s.get(&id, t0 + Duration::from_secs(61)).is_none());
        let (used, _) = s.create("admin", "h", t0).unwrap();
        s.touch(&used, t0 + Duration::from_secs(59));
        assert!(s.get(&used, t0 + Duration::from_secs(118)).is_some());
        assert!(s.get(&used, t0 + Duration::from_secs(119)).is_none());
        let (busy, _) = s.create("admin", "h", t0).unwrap();
        for minute in 1..5 {
            let at = t0 + Duration::from_secs(minute * 59);
            assert!(s.get(&busy, at).is_some());
            s.touch(&busy, at);
        }
        assert!(s.get(&busy, t0 + Duration::from_secs(300)).is_none());
    }

    /// A full table loses its longest idle session; logout ends one; unknown ids are None.
    #[test]
    fn the_table_is_bounded_and_logout_ends() {
        let s = sessions(2);
        let t0 = Instant::now();
        let (a, _) = s.create("a", "h", t0).unwrap();
        let (b, _) = s.create("b", "h", t0 + Duration::from_secs(1)).unwrap();
        s.touch(&a, t0 + Duration::from_secs(2));
        let (c, _) = s.create("c", "h", t0 + Duration::from_secs(3)).unwrap();
        assert_eq!(s.table().len(), 2);
        assert!(
            s.get(&b, t0 + Duration::from_secs(3)).is_none(),
            "b was idle longest"
        );
        assert!(s.get(&a, t0 + Duration::from_secs(3)).is_some());
        s.end(&c);
        assert!(s.get(&c, t0 + Duration::from_secs(3)).is_none());
        assert!(s.get("", t0).is_none());
        assert!(s.get(&"A".repeat(43), t0).is_none());
    }

    /// Browsers are answered on the listener's address and localhost with its port, or on
    /// the configured names only; case and a default port do not matter, another port does.
    #[test]
    fn browsers_are_answered_on_the_listeners_own_names() {
        let own = Hosts::new(&[], "127.0.0.1:9091".parse().unwrap());
        for host in ["127.0.0.1:9091", "localhost:9091", "LOCALHOST:9091"] {
            assert!(own.allow(host), "{host}");
        }
        for host in [
            "127.0.0.1",
            "127.0.0.1:9092",
            "evil.example:9091",
            "",
            "localhost.:9091",
            "127.0.0.1:9091 ",
        ] {
            assert!(!own.allow(host), "{host}");
        }
        let configured = Hosts::new(&["Ops.Example:443".into()], "0.0.0.0:9091".parse().unwrap());
        for host in ["ops.example", "ops.example:443", "OPS.example"] {
            assert!(configured.allow(host), "{host}");
        }
        for host in ["localhost:9091", "ops.example:9091", "ops.example.evil"] {
            assert!(!configured.allow(host), "{host}");
        }
        let any = Hosts::new(&[], "0.0.0.0:9091".parse().unwrap());
        for host in ["127.0.0.1:9091", "[::1]:9091", "localhost:9091"] {
            assert!(any.allow(host), "{host}");
        }
        assert!(!any.allow("0.0.0.0:9091"));
    }

    #[test]
    fn configuration_bounds() {
        let mut c = sessions(1).config.clone();
        assert!(c.validate().is_ok());
        c.max_lifetime_s = 30;
        assert!(c.validate().unwrap_err().contains("max_lifetime_s"));
        c.max_lifetime_s = 300;
        c.max_sessions = 0;
        assert!(c.validate().unwrap_err().contains("max_sessions"));
        c.max_sessions = 1;
        c.idle_timeout_s = 1;
        assert!(c.validate().unwrap_err().contains("idle_timeout_s"));
        c.idle_timeout_s = 60;
        for bad in ["", "a b:1", "http://x:1"] {
            c.hosts = vec![bad.into()];
            assert!(c.validate().unwrap_err().contains("console.hosts"), "{bad}");
        }
    }
}
