//! The route table: path prefix -> upstream and policy; the longest matching prefix wins.

use http::Uri;

use crate::config::RouteConfig;

/// One route, ready to use.
#[derive(Debug, Clone)]
pub struct Route {
    pub prefix: String,
    /// Scheme and authority of the upstream.
    pub upstream: Uri,
    pub public: bool,
    pub scopes: Vec<String>,
}

/// Routes sorted longest prefix first.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(configs: &[RouteConfig]) -> Result<Self, String> {
        let mut routes = configs
            .iter()
            .map(|c| {
                let upstream: Uri = c
                    .upstream
                    .parse()
                    .map_err(|e| format!("route {}: upstream: {e}", c.prefix))?;
                Ok(Route {
                    prefix: c.prefix.clone(),
                    upstream,
                    public: c.public,
                    scopes: c.scopes.clone(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(RouteTable { routes })
    }

    /// The route for `path`, if any.
    pub fn find(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| path.starts_with(&r.prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest prefix wins; unmatched paths have no route.
    #[test]
    fn longest_prefix() {
        let route = |prefix: &str, public| RouteConfig {
            prefix: prefix.into(),
            upstream: "http://127.0.0.1:1".into(),
            public,
            scopes: vec![],
        };
        let table = RouteTable::new(&[route("/api/", false), route("/api/public/", true)]).unwrap();
        assert!(table.find("/api/public/x").unwrap().public);
        assert!(!table.find("/api/x").unwrap().public);
        assert!(table.find("/other").is_none());
    }
}
