//! A demo upstream: every request is answered with a JSON echo of its method, path, query and
//! headers, so that a person (or a test) can see exactly what the gateway forwarded.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};
use axum::Json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

async fn echo(
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Json<serde_json::Value> {
    let headers: serde_json::Map<String, serde_json::Value> = headers
        .keys()
        .map(|name| {
            let values: Vec<serde_json::Value> = headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned().into())
                .collect();
            let value = if values.len() == 1 {
                values[0].clone()
            } else {
                values.into()
            };
            (name.as_str().to_string(), value)
        })
        .collect();
    Json(serde_json::json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "headers": headers,
        "body_bytes": body.len(),
    }))
}

/// The echo, counting every request it receives in `requests`.
pub fn app(requests: Arc<AtomicU64>) -> axum::Router {
    axum::Router::new()
        .fallback(echo)
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                requests.fetch_add(1, Ordering::SeqCst);
                next.run(request)
            },
        ))
}

/// Serves the echo on `listener` until `shutdown` is cancelled.
pub async fn run(listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
    run_counting(listener, shutdown, Arc::default()).await
}

/// Like [`run`], counting every request it receives in `requests` (tests use it to prove that
/// a refused request never reached the upstream).
pub async fn run_counting(
    listener: TcpListener,
    shutdown: CancellationToken,
    requests: Arc<AtomicU64>,
) -> std::io::Result<()> {
    axum::serve(listener, app(requests))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
