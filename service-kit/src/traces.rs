//! Traces: OpenTelemetry spans, exported by OTLP over HTTP/protobuf. Off unless configured.
//!
//! - [`TraceConfig`]: the `[tracing]` section both services read.
//! - [`Tracing::start`]: the tracer and its export. New traces are sampled at the configured
//!   ratio; a span with a parent follows the parent's decision. An ended span is queued,
//!   never waited for: when the queue is full (the collector is slow or gone) the span is
//!   dropped and counted. A task sends the queue in batches.
//! - [`TraceMetrics`]: spans exported, dropped and lost to failed exports, for `/metrics`.
//! - [`parent_from_headers`], [`traceparent`]: the W3C trace context (`traceparent`,
//!   `tracestate`) read and written by the SDK's propagator, over any header map.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter as _, SpanProcessor,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The `[tracing]` section: where spans go and how many traces are kept.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceConfig {
    /// The collector's OTLP/HTTP traces URL, e.g. `http://127.0.0.1:4318/v1/traces`. https,
    /// or http on loopback unless `insecure_http` is set.
    pub otlp_endpoint: String,
    /// The share of new traces kept, from 0 to 1. A span whose parent was sampled (a trusted
    /// proxy's request, a revocation traced by the authz-server) follows its parent.
    #[serde(default = "default_ratio")]
    pub sampling_ratio: f64,
    /// `service.name` of the spans; the binary's name by default.
    pub service_name: Option<String>,
    /// Spans waiting for export; past this, ended spans are dropped and counted.
    #[serde(default = "default_queue")]
    pub queue_spans: usize,
    /// Spans sent in one export at most.
    #[serde(default = "default_batch")]
    pub batch_spans: usize,
    /// Milliseconds a span may wait for its batch to fill before the batch is sent.
    #[serde(default = "default_batch_interval")]
    pub batch_interval_ms: u64,
    /// Milliseconds one export may take; then it is abandoned and its spans counted lost.
    #[serde(default = "default_export_timeout")]
    pub export_timeout_ms: u64,
    /// Headers sent with every export (a collector's API key, say). Never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Allow an http endpoint that is not on loopback: spans, and `headers`, then cross the
    /// network in the clear.
    #[serde(default)]
    pub insecure_http: bool,
}

// The headers may hold secrets: Debug shows their names only.
impl std::fmt::Debug for TraceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceConfig")
            .field("otlp_endpoint", &self.otlp_endpoint)
            .field("sampling_ratio", &self.sampling_ratio)
            .field("service_name", &self.service_name)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn default_ratio() -> f64 {
    1.0
}
fn default_queue() -> usize {
    2048
}
fn default_batch() -> usize {
    512
}
fn default_batch_interval() -> u64 {
    1000
}
fn default_export_timeout() -> u64 {
    10_000
}

impl TraceConfig {
    /// Checks what serde cannot; the message names the key under `tracing.`.
    pub fn validate(&self) -> Result<(), String> {
        let url = url::Url::parse(&self.otlp_endpoint)
            .map_err(|e| format!("tracing.otlp_endpoint: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("tracing.otlp_endpoint: must be an http or https URL".into());
        }
        if !self.insecure_http {
            crate::jwks::trusted_url("tracing.otlp_endpoint", &self.otlp_endpoint)
                .map_err(|e| format!("{e}; or set tracing.insecure_http = true"))?;
        }
        // Credentials go in `headers`, which are never shown; a URL is logged.
        if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
            return Err(
                "tracing.otlp_endpoint: no credentials or query in the URL (use tracing.headers)"
                    .into(),
            );
        }
        if url.path() == "/" {
            return Err(
                "tracing.otlp_endpoint: name the collector's traces path, e.g. http://127.0.0.1:4318/v1/traces"
                    .into(),
            );
        }
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return Err("tracing.sampling_ratio: must be between 0 and 1".into());
        }
        if self
            .service_name
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            return Err("tracing.service_name: must not be empty".into());
        }
        if !(1..=1_000_000).contains(&self.queue_spans)
            || !(1..=self.queue_spans.min(100_000)).contains(&self.batch_spans)
        {
            return Err(
                "tracing.queue_spans: 1 to 1000000; batch_spans: 1 to queue_spans (at most 100000)"
                    .into(),
            );
        }
        if !(1..=60_000).contains(&self.batch_interval_ms)
            || !(1..=60_000).contains(&self.export_timeout_ms)
        {
            return Err("tracing.batch_interval_ms and export_timeout_ms: 1 to 60000".into());
        }
        for (name, value) in &self.headers {
            let Ok(header) = http::HeaderName::try_from(name.as_str()) else {
                return Err(format!("tracing.headers: {name:?} is not a header name"));
            };
            if http::HeaderValue::try_from(value.as_str()).is_err() {
                return Err(format!(
                    "tracing.headers: the value of {name:?} is not a header value"
                ));
            }
            // The exporter's own framing is not the configuration's to change.
            let framing = [
                http::header::CONTENT_TYPE,
                http::header::CONTENT_LENGTH,
                http::header::CONTENT_ENCODING,
                http::header::TRANSFER_ENCODING,
                http::header::HOST,
                http::header::CONNECTION,
            ];
            if framing.contains(&header) {
                return Err(format!("tracing.headers: {name:?} is set by the exporter"));
            }
        }
        Ok(())
    }
}

/// What the export did with ended spans.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpanOutcome {
    outcome: &'static str,
}

/// `trace_spans{outcome}`: `exported`, `dropped` (the queue was full) or `failed` (their
/// export failed or timed out).
#[derive(Debug, Default)]
pub struct TraceMetrics {
    pub spans: Family<SpanOutcome, Counter>,
}

impl TraceMetrics {
    const EXPORTED: SpanOutcome = SpanOutcome {
        outcome: "exported",
    };
    const DROPPED: SpanOutcome = SpanOutcome { outcome: "dropped" };
    const FAILED: SpanOutcome = SpanOutcome { outcome: "failed" };

    /// Registers `trace_spans_total` in `registry` (under its prefix).
    pub fn register(self: &Arc<Self>, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "trace_spans",
            "Ended spans by outcome: exported, dropped (export queue full), failed (export failed)",
            self.spans.clone(),
        );
    }

    fn count(&self, outcome: SpanOutcome, spans: usize) {
        self.spans.get_or_create(&outcome).inc_by(spans as u64);
    }
}

/// A running tracer and its export task.
pub struct Tracing {
    /// Kept alive: the tracer's spans go through its processor.
    _provider: SdkTracerProvider,
    pub tracer: SdkTracer,
    stop: CancellationToken,
    export: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing").finish_non_exhaustive()
    }
}

impl Tracing {
    /// The tracer `config` asks for (none without a `[tracing]` section), started; its
    /// counters are registered in `registry` either way.
    pub fn configured(
        config: Option<&TraceConfig>,
        service: &str,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Result<Option<Arc<Tracing>>, String> {
        let metrics = Arc::new(TraceMetrics::default());
        metrics.register(registry);
        config
            .map(|c| Tracing::start(c, service, metrics).map(Arc::new))
            .transpose()
    }

    /// Builds the tracer and starts the export task (on the current Tokio runtime).
    /// `service` is the default `service.name`.
    pub fn start(
        config: &TraceConfig,
        service: &str,
        metrics: Arc<TraceMetrics>,
    ) -> Result<Tracing, String> {
        let timeout = Duration::from_millis(config.export_timeout_ms);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            // The endpoint is the collector's: no proxy from the environment sees the spans
            // or `headers`.
            .no_proxy()
            .build()
            .map_err(|e| format!("tracing: {e}"))?;
        let headers = config
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(OtlpClient(client))
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(config.otlp_endpoint.clone())
            .with_timeout(timeout)
            .with_headers(headers)
            // A failed batch is dropped and counted, never retried: without the exporter's
            // `tokio` feature its backoff sleeps the calling thread, which here is a runtime
            // worker serving requests.
            .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled())
            .build()
            .map_err(|e| format!("tracing: {e}"))?;
        let name = config
            .service_name
            .clone()
            .unwrap_or_else(|| service.into());
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(name)
            .build();
        exporter.set_resource(&resource);
        let (queue, spans) = mpsc::channel(config.queue_spans);
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Queue {
                spans: queue,
                metrics: metrics.clone(),
            })
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sampling_ratio,
            ))))
            .with_resource(resource)
            .build();
        let stop = CancellationToken::new();
        let export = tokio::spawn(export(
            spans,
            exporter,
            Batching {
                spans: config.batch_spans,
                interval: Duration::from_millis(config.batch_interval_ms),
                timeout,
            },
            metrics,
            stop.clone(),
        ));
        Ok(Tracing {
            tracer: provider.tracer(service.to_string()),
            _provider: provider,
            stop,
            export: tokio::sync::Mutex::new(Some(export)),
        })
    }

    /// Sends what is queued (one last export) and stops the export; a collector that does
    /// not answer holds a shutdown up for 5 s at most. Spans ended afterwards are dropped
    /// and counted.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        if let Some(mut task) = self.export.lock().await.take() {
            if tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

/// The SDK's processor: each ended, sampled span is queued without waiting; a full queue
/// drops it. (The SDK's own batch processor counts its drops but does not expose them.)
#[derive(Debug)]
struct Queue {
    spans: mpsc::Sender<SpanData>,
    metrics: Arc<TraceMetrics>,
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.spans.try_send(span).is_err() {
            self.metrics.count(TraceMetrics::DROPPED, 1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

struct Batching {
    spans: usize,
    interval: Duration,
    timeout: Duration,
}

/// The export task: waits for a span, gives its batch `interval` to fill, sends it; on
/// `stop`, sends what is left and ends. One export at a time: while it runs, the queue
/// takes what the services end, up to its size.
async fn export(
    mut queue: mpsc::Receiver<SpanData>,
    exporter: opentelemetry_otlp::SpanExporter,
    batching: Batching,
    metrics: Arc<TraceMetrics>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(batching.spans);
    let mut failing = false;
    loop {
        let more = tokio::select! {
            _ = stop.cancelled() => false,
            n = queue.recv_many(&mut batch, batching.spans) => n > 0,
        };
        if !more {
            break;
        }
        let full_by = tokio::time::Instant::now() + batching.interval;
        while batch.len() < batching.spans {
            let room = batching.spans - batch.len();
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(full_by) => break,
                n = queue.recv_many(&mut batch, room) => if n == 0 { break },
            }
        }
        failing = send(&exporter, &mut batch, &batching, &metrics, failing).await;
    }
    // Stopping: what is queued now goes in one last round of exports.
    queue.close();
    while queue.recv_many(&mut batch, batching.spans).await > 0 {
        failing = send(&exporter, &mut batch, &batching, &metrics, failing).await;
    }
}

/// Exports `batch` (emptying it); returns whether it failed. A failure is logged when the
/// exports start failing and when they recover, not for every batch.
async fn send(
    exporter: &opentelemetry_otlp::SpanExporter,
    batch: &mut Vec<SpanData>,
    batching: &Batching,
    metrics: &TraceMetrics,
    was_failing: bool,
) -> bool {
    let spans = batch.len();
    let sent = tokio::time::timeout(batching.timeout, exporter.export(std::mem::take(batch))).await;
    let error = match sent {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("timed out".to_string()),
    };
    match error {
        None => {
            metrics.count(TraceMetrics::EXPORTED, spans);
            if was_failing {
                tracing::info!("trace export recovered");
            }
            false
        }
        Some(error) => {
            metrics.count(TraceMetrics::FAILED, spans);
            if !was_failing {
                tracing::warn!(%error, spans, "trace export failed; spans are counted as failed until it recovers");
            }
            true
        }
    }
}

/// The exporter's HTTP client: the kit's reqwest (rustls), answers read up to 1 MiB.
#[derive(Debug)]
struct OtlpClient(reqwest::Client);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        const MAX_ANSWER: usize = 1 << 20;
        let request = reqwest::Request::try_from(request)?;
        let mut answer = self.0.execute(request).await?;
        let mut response = http::Response::builder().status(answer.status());
        if let Some(headers) = response.headers_mut() {
            *headers = answer.headers().clone();
        }
        let mut body = Vec::new();
        while let Some(chunk) = answer.chunk().await? {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(Box::new(opentelemetry_http::ResponseBodyTooLarge::new()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(response.body(bytes::Bytes::from(body))?)
    }
}

/// Header maps the trace context is read from and written to: HTTP's, NATS's.
pub trait TraceHeaders {
    /// The header's value, if it is present exactly once and is text.
    fn single(&self, name: &str) -> Option<&str>;
    fn set(&mut self, name: &'static str, value: String);
}

impl TraceHeaders for http::HeaderMap {
    fn single(&self, name: &str) -> Option<&str> {
        let mut values = self.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(value), None) => value.to_str().ok(),
            _ => None,
        }
    }

    fn set(&mut self, name: &'static str, value: String) {
        if let Ok(value) = http::HeaderValue::try_from(value) {
            self.insert(http::HeaderName::from_static(name), value);
        }
    }
}

impl TraceHeaders for async_nats::HeaderMap {
    fn single(&self, name: &str) -> Option<&str> {
        let mut values = self.get_all(name);
        match (values.next(), values.next()) {
            (Some(value), None) => Some(value.as_str()),
            _ => None,
        }
    }

    fn set(&mut self, name: &'static str, value: String) {
        self.insert(name, value.as_str());
    }
}

struct Reader<'a, H: ?Sized>(&'a H);

impl<H: TraceHeaders + ?Sized> Extractor for Reader<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        // W3C's 32 members of at most 256 characters each; anything longer is dropped whole.
        self.0
            .single(key)
            .filter(|v| key != "tracestate" || v.len() <= 8192)
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

struct Writer<'a, H: ?Sized>(&'a mut H);

impl<H: TraceHeaders + ?Sized> Injector for Writer<'_, H> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator writes an empty `tracestate` when there is none: leave it out.
        let name = match key {
            "traceparent" => "traceparent",
            "tracestate" if !value.is_empty() => "tracestate",
            _ => return,
        };
        self.0.set(name, value);
    }
}

/// A request method as a span names it: one of HTTP's standard methods, or `_OTHER` for one
/// a client invented (OpenTelemetry's HTTP conventions), so that span names stay few.
pub fn method_name(method: &http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "CONNECT" => "CONNECT",
        _ => "_OTHER",
    }
}

/// The remote parent `headers` name (`traceparent`, with `tracestate`), as the W3C Trace
/// Context says: a header given twice, or malformed, names none.
pub fn parent_from_headers<H: TraceHeaders + ?Sized>(headers: &H) -> Option<SpanContext> {
    // Version 00 exactly, before the SDK's parser (which takes short or signed ids and
    // splits any length): 2, 32, 16 and 2 lowercase hex digits between dashes.
    let parent = headers.single("traceparent")?.as_bytes();
    let hex = |range: std::ops::Range<usize>| {
        parent[range]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let well_formed = parent.len() == 55
        && parent.starts_with(b"00-")
        && parent[35] == b'-'
        && parent[52] == b'-'
        && hex(3..35)
        && hex(36..52)
        && hex(53..55);
    if !well_formed {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&Reader(headers));
    let span = cx.span();
    let parent = span.span_context();
    parent.is_valid().then(|| parent.clone())
}

/// Writes `traceparent` (and `tracestate`, if any) naming `span` as the parent.
pub fn traceparent<H: TraceHeaders + ?Sized>(span: &SpanContext, headers: &mut H) {
    let cx = Context::new().with_remote_span_context(span.clone());
    TraceContextPropagator::new().inject_context(&cx, &mut Writer(headers));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: &str) -> TraceConfig {
        TraceConfig {
            otlp_endpoint: endpoint.into(),
            sampling_ratio: 1.0,
            service_name: None,
            queue_spans: default_queue(),
            batch_spans: default_batch(),
            batch_interval_ms: default_batch_interval(),
            export_timeout_ms: default_export_timeout(),
            headers: BTreeMap::new(),
            insecure_http: false,
        }
    }

    #[test]
    fn endpoints_are_https_or_loopback_unless_allowed() {
        assert!(config("http://127.0.0.1:4318/v1/traces").validate().is_ok());
        assert!(config("https://collector.example/v1/traces")
            .validate()
            .is_ok());
        let remote = config("http://collector.example/v1/traces");
        assert!(remote.validate().unwrap_err().contains("insecure_http"));
        let allowed = TraceConfig {
            insecure_http: true,
            ..remote
        };
        assert!(allowed.validate().is_ok());
        for bad in ["ftp://127.0.0.1/", "not a url", "file:///tmp/x"] {
            assert!(config(bad).validate().is_err(), "{bad}");
        }
        for ratio in [-0.1, 1.5, f64::NAN] {
            let c = TraceConfig {
                sampling_ratio: ratio,
                ..config("http://127.0.0.1:4318/v1/traces")
            };
            assert!(c.validate().is_err(), "{ratio}");
        }
        let c = TraceConfig {
            batch_spans: 10,
            queue_spans: 5,
            ..config("http://127.0.0.1:4318/v1/traces")
        };
        assert!(c.validate().is_err());
        let endpoint = "http://127.0.0.1:4318/v1/traces";
        for bad in [
            ("bad name", "x"),
            ("content-type", "text/plain"),
            ("Host", "x"),
            ("x-key", "a\nb"),
        ] {
            let mut c = config(endpoint);
            c.headers.insert(bad.0.into(), bad.1.into());
            assert!(c.validate().is_err(), "{bad:?}");
        }
        for bad in [
            "http://127.0.0.1:4318",
            "http://127.0.0.1:4318/",
            "http://user:pass@127.0.0.1:4318/v1/traces",
            "http://127.0.0.1:4318/v1/traces?api_key=s3cret",
        ] {
            assert!(config(bad).validate().is_err(), "{bad}");
        }
        for (queue, batch) in [(0, 1), (2_000_000, 10), (10, 0)] {
            let c = TraceConfig {
                queue_spans: queue,
                batch_spans: batch,
                ..config(endpoint)
            };
            assert!(c.validate().is_err(), "{queue} {batch}");
        }
        let c = TraceConfig {
            service_name: Some(" ".into()),
            ..config(endpoint)
        };
        assert!(c.validate().is_err());
        let mut c = config(endpoint);
        c.headers
            .insert("authorization".into(), "Bearer s3cret".into());
        assert!(c.validate().is_ok());
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn the_parent_is_read_only_from_one_wellformed_traceparent() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", PARENT.parse().unwrap());
        headers.insert("tracestate", "vendor=abc".parse().unwrap());
        let parent = parent_from_headers(&headers).expect("a parent");
        assert_eq!(
            parent.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(parent.is_sampled() && parent.is_remote());
        assert_eq!(parent.trace_state().header(), "vendor=abc");

        let mut twice = headers.clone();
        twice.append("traceparent", PARENT.parse().unwrap());
        assert!(parent_from_headers(&twice).is_none());
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c80319cXX-b7ad6b7169203331-01",
            "00-1-1-01",
            "00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-001",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
            "00-00af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            let mut h = http::HeaderMap::new();
            h.insert("traceparent", bad.parse().unwrap());
            assert!(parent_from_headers(&h).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_context_round_trips_through_nats_headers() {
        let mut http_headers = http::HeaderMap::new();
        http_headers.insert("traceparent", PARENT.parse().unwrap());
        let parent = parent_from_headers(&http_headers).unwrap();
        let mut nats = async_nats::HeaderMap::new();
        traceparent(&parent, &mut nats);
        assert_eq!(nats.get("traceparent").map(|v| v.as_str()), Some(PARENT));
        // No trace state: no empty header.
        assert!(nats.get("tracestate").is_none());
        assert_eq!(parent_from_headers(&nats), Some(parent));
    }
}
