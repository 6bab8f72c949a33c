//! The route table: (host, path prefix) -> upstreams and policy.
//!
//! Paths are matched after normalisation ([`crate::path`]), ignoring ASCII case. A route
//! matches when its prefix starts the path at a segment boundary — `/api` matches `/api` and `/api/x`, not `/apix`;
//! `/api/` also matches `/api`, so that the protected spelling without its slash is not left
//! to a broader route — and, if it names a host, the request's host is that host (compared
//! without port or trailing dot, case-insensitive). The longest matching prefix wins; at
//! equal length a route naming the host wins over one that does not.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{HeaderValue, Method, Uri};

use crate::config::{EncodedSlashes, RouteConfig};
use crate::upstream::Upstream;

/// The `Allow` header of a route that lists no methods: every method but CONNECT and TRACE.
pub const DEFAULT_ALLOW: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

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
    /// Audiences accepted on this route; `None`: the token issuer's.
    pub audiences: Option<Vec<String>>,
    /// Issuers whose tokens pass on this route; `None`: every configured issuer's.
    pub issuers: Option<Vec<String>>,
    /// Remove the prefix from the path before forwarding.
    pub strip_prefix: bool,
    /// Forward the client's `Authorization` header to the upstream.
    pub forward_token: bool,
    /// The methods allowed; `None`: every method but CONNECT and TRACE.
    methods: Option<Vec<Method>>,
    /// The `Allow` header of this route's 405 responses.
    pub allow: HeaderValue,
    /// Whether `%2F` and `%5C` in the path are forwarded or refused.
    pub encoded_slashes: EncodedSlashes,
    /// WebSocket upgrades are allowed (authenticated like any request).
    pub websocket: bool,
}

impl Route {
    /// The next upstream, round-robin.
    pub fn upstream(&self) -> &Arc<Upstream> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.upstreams[i % self.upstreams.len()]
    }

    /// Whether `method` may be used on this route.
    pub fn allows(&self, method: &Method) -> bool {
        match &self.methods {
            Some(methods) => methods.contains(method),
            None => *method != Method::CONNECT && *method != Method::TRACE,
        }
    }

    /// Whether this route's prefix covers `path`, at a segment boundary and whatever the
    /// case: Express and ASP.NET route `/ECHO/x` to `/echo/x`, so the gateway must apply
    /// `/echo/`'s policy to it.
    fn covers(&self, path: &str) -> bool {
        let (prefix, path) = (self.prefix.as_bytes(), path.as_bytes());
        match path.get(..prefix.len()) {
            Some(head) if head.eq_ignore_ascii_case(prefix) => {
                let rest = &path[prefix.len()..];
                prefix.ends_with(b"/") || rest.is_empty() || rest.starts_with(b"/")
            }
            // `/api/` covers `/api`.
            _ => {
                prefix.len() > 1
                    && prefix
                        .strip_suffix(b"/")
                        .is_some_and(|p| p.eq_ignore_ascii_case(path))
            }
        }
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
    /// Routes to `http://` upstreams only.
    pub fn new(configs: &[RouteConfig]) -> Result<Self, String> {
        Self::with_tls(configs, None)
    }

    /// Routes whose `https://` upstreams are reached with `tls`.
    pub fn with_tls(
        configs: &[RouteConfig],
        tls: Option<&tokio_rustls::TlsConnector>,
    ) -> Result<Self, String> {
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
                        Upstream::with_tls(&uri, tls).map(Arc::new)
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                if upstreams.is_empty() {
                    return Err(format!("route {}: no upstream", c.prefix));
                }
                let methods = c
                    .methods
                    .as_ref()
                    .map(|names| {
                        names
                            .iter()
                            .map(|m| {
                                m.parse::<Method>()
                                    .map_err(|_| format!("route {}: method {m:?}", c.prefix))
                            })
                            .collect::<Result<Vec<_>, String>>()
                    })
                    .transpose()?;
                let allow = match &methods {
                    Some(methods) => methods
                        .iter()
                        .map(Method::as_str)
                        .collect::<Vec<_>>()
                        .join(", "),
                    None => DEFAULT_ALLOW.into(),
                };
                Ok(Route {
                    prefix: c.prefix.as_str().into(),
                    host: c.host.as_deref().map(crate::host::route_name),
                    upstreams,
                    next: AtomicUsize::new(0),
                    public: c.public,
                    scopes: c.scopes.clone(),
                    audiences: c.audiences.clone(),
                    issuers: c.issuers.clone(),
                    strip_prefix: c.strip_prefix,
                    forward_token: c.forward_token,
                    allow: HeaderValue::from_str(&allow)
                        .map_err(|_| format!("route {}: methods", c.prefix))?,
                    methods,
                    encoded_slashes: c.encoded_slashes,
                    websocket: c.websocket,
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

    /// The route for the host name `host` (lower case, without port or trailing dot: see
    /// [`crate::host`]) and the normalised `path`, if any.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.covers(path) && r.host.as_deref().is_none_or(|want| host == Some(want)))
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
            public,
            ..Default::default()
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

    /// Prefixes match at segment boundaries; a prefix with its slash also covers the path
    /// without it.
    #[test]
    fn segment_boundaries() {
        let table = RouteTable::new(&[
            route("/", None, true),
            route("/api", None, false),
            route("/echo/", None, false),
        ])
        .unwrap();
        let public = |path| table.find(None, path).unwrap().public;
        for protected in [
            "/api", "/api/", "/api/x", "/echo", "/echo/", "/echo/x", "/API/x", "/Echo", "/eChO/x",
        ] {
            assert!(!public(protected), "{protected}");
        }
        for open in ["/apix", "/api.json", "/echoes", "/ech", "/", "/x/api"] {
            assert!(public(open), "{open}");
        }
    }

    /// A host-specific route matches its host only and wins ties; the configured host is
    /// compared without case or trailing dot.
    #[test]
    fn hosts() {
        let table = RouteTable::new(&[
            route("/", None, false),
            route("/", Some("Public.Example."), true),
        ])
        .unwrap();
        assert!(table.find(Some("public.example"), "/x").unwrap().public);
        assert!(!table.find(Some("other.example"), "/x").unwrap().public);
        assert!(!table.find(None, "/x").unwrap().public);
    }

    /// Methods: the configured ones, or all but CONNECT and TRACE; `Allow` lists them.
    #[test]
    fn methods() {
        let table = RouteTable::new(&[route("/", None, false)]).unwrap();
        let r = table.find(None, "/").unwrap();
        for m in [Method::GET, Method::POST, Method::DELETE, Method::OPTIONS] {
            assert!(r.allows(&m), "{m}");
        }
        assert!(!r.allows(&Method::TRACE));
        assert!(!r.allows(&Method::CONNECT));
        let mut config = route("/", None, false);
        config.methods = Some(vec!["GET".into(), "TRACE".into()]);
        let table = RouteTable::new(&[config]).unwrap();
        let r = table.find(None, "/").unwrap();
        assert!(r.allows(&Method::GET) && r.allows(&Method::TRACE));
        assert!(!r.allows(&Method::POST));
        assert_eq!(r.allow, "GET, TRACE");
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
        assert_eq!(r.upstream_path("/svc"), "/");
    }
}
