//! The route table: (host, path prefix) -> upstreams and policy.
//!
//! A route matches when its prefix starts the path and, if it names a host, the request's
//! host (without port, case-insensitive) is that host. The longest matching prefix wins; at
//! equal length a route naming the host wins over one that does not.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::Uri;

use crate::config::RouteConfig;
use crate::upstream::Upstream;

/// One route, ready to use.
#[derive(Debug)]
pub struct Route {
    /// Shared: the metrics and the access log name the route by it on every request.
    pub prefix: std::sync::Arc<str>,
    /// Only requests for this host (lower case, no port) match.
    pub host: Option<String>,
    /// The upstreams, used in turn, each with its idle connections.
    pub upstreams: Vec<Arc<Upstream>>,
    next: AtomicUsize,
    pub public: bool,
    pub scopes: Vec<String>,
    /// Audiences accepted on this route; `None`: the gateway's.
    pub audiences: Option<Vec<String>>,
    /// Remove the prefix from the path before forwarding.
    pub strip_prefix: bool,
    /// Forward the client's `Authorization` header to the upstream.
    pub forward_token: bool,
}

impl Route {
    /// The next upstream, round-robin.
    pub fn upstream(&self) -> &Arc<Upstream> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.upstreams[i % self.upstreams.len()]
    }

    /// The path to send upstream.
    pub fn upstream_path<'a>(&self, path: &'a str) -> std::borrow::Cow<'a, str> {
        if !self.strip_prefix {
            return path.into();
        }
        let rest = &path[self.prefix.len().min(path.len())..];
        if rest.starts_with('/') {
            rest.into()
        } else {
            format!("/{rest}").into()
        }
    }
}

/// Routes sorted longest prefix first, host-specific first at equal length.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(configs: &[RouteConfig]) -> Result<Self, String> {
        let mut routes = configs
            .iter()
            .map(|c| {
                let upstreams = c
                    .upstream_urls()
                    .iter()
                    .map(|u| {
                        let uri = u
                            .parse::<Uri>()
                            .map_err(|e| format!("route {}: upstream {u}: {e}", c.prefix))?;
                        Upstream::new(&uri).map(Arc::new)
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                if upstreams.is_empty() {
                    return Err(format!("route {}: no upstream", c.prefix));
                }
                Ok(Route {
                    prefix: c.prefix.as_str().into(),
                    host: c.host.as_ref().map(|h| h.to_ascii_lowercase()),
                    upstreams,
                    next: AtomicUsize::new(0),
                    public: c.public,
                    scopes: c.scopes.clone(),
                    audiences: c.audiences.clone(),
                    strip_prefix: c.strip_prefix,
                    forward_token: c.forward_token,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        routes.sort_by_key(|r| (std::cmp::Reverse(r.prefix.len()), r.host.is_none()));
        Ok(RouteTable { routes })
    }

    /// Every route's upstreams.
    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.routes.iter().flat_map(|r| &r.upstreams)
    }

    /// The route for `host` (as sent, port included or not) and `path`, if any.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        let host = host.map(|h| {
            h.rsplit_once(':').map_or(h, |(name, port)| {
                // "[::1]:80" and "example.com:80" lose the port; a bare IPv6 literal has none.
                if port.chars().all(|c| c.is_ascii_digit()) {
                    name
                } else {
                    h
                }
            })
        });
        self.routes.iter().find(|r| {
            path.starts_with(&*r.prefix)
                && r.host
                    .as_deref()
                    .is_none_or(|want| host.is_some_and(|h| h.eq_ignore_ascii_case(want)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, host: Option<&str>, public: bool) -> RouteConfig {
        RouteConfig {
            prefix: prefix.into(),
            host: host.map(Into::into),
            upstream: Some("http://127.0.0.1:1".into()),
            upstreams: vec![],
            public,
            scopes: vec![],
            audiences: None,
            strip_prefix: false,
            forward_token: false,
        }
    }

    /// The longest prefix wins; unmatched paths have no route.
    #[test]
    fn longest_prefix() {
        let table = RouteTable::new(&[
            route("/api/", None, false),
            route("/api/public/", None, true),
        ])
        .unwrap();
        assert!(table.find(None, "/api/public/x").unwrap().public);
        assert!(!table.find(None, "/api/x").unwrap().public);
        assert!(table.find(None, "/other").is_none());
    }

    /// A host-specific route matches its host only (any port, any case) and wins ties.
    #[test]
    fn hosts() {
        let table = RouteTable::new(&[
            route("/", None, false),
            route("/", Some("Public.Example"), true),
        ])
        .unwrap();
        assert!(
            table
                .find(Some("public.example:8080"), "/x")
                .unwrap()
                .public
        );
        assert!(table.find(Some("PUBLIC.example"), "/x").unwrap().public);
        assert!(!table.find(Some("other.example"), "/x").unwrap().public);
        assert!(!table.find(None, "/x").unwrap().public);
    }

    /// Upstreams are used in turn; the prefix is stripped when asked.
    #[test]
    fn round_robin_and_strip() {
        let mut config = route("/svc/", None, false);
        config.upstream = None;
        config.upstreams = vec!["http://a:1".into(), "http://b:2".into()];
        config.strip_prefix = true;
        let table = RouteTable::new(&[config]).unwrap();
        let r = table.find(None, "/svc/x").unwrap();
        let picks: Vec<&str> = (0..4).map(|_| r.upstream().address()).collect();
        assert_eq!(picks, ["a:1", "b:2", "a:1", "b:2"]);
        assert_eq!(r.upstream_path("/svc/x/y"), "/x/y");
        assert_eq!(r.upstream_path("/svc/"), "/");
    }
}
