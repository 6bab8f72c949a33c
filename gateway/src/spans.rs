//! The gateway's traces, when `[tracing]` is configured: a span per proxied request, and a
//! span per revocation applied live, in the revocation's own trace.
//!
//! A request's span continues the caller's trace only when the peer is a trusted proxy
//! (`trusted_proxies`). Anyone else's `traceparent` and `tracestate` are ignored, and never
//! reach the upstream ([`crate::sanitize::DEFAULT_UNTRUSTED`]): an outsider cannot choose
//! trace ids or force sampling (a trusted proxy can: it decides for what it passes on). The
//! upstream gets the request's span as its parent.
//!
//! Attributes follow OpenTelemetry's HTTP conventions where they have one (`http.route`,
//! `http.response.status_code`, `error.type`, `client.address`); the gateway's own are under
//! `gateway.` (`gateway.upstream.address`, `gateway.auth.decision`). A span carries the
//! reason a token was refused, never the token, nor the query string.

use std::sync::Arc;

use axum::body::Body;
use http::Request;
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, Span};
use revocation::feed::{ApplyObserver, LiveApply};
use service_kit::traces::{self, Tracing};

use crate::error::GatewayError;
use crate::proxy::Peer;
use crate::routes::Route;

/// One proxied request's span, from its arrival to its response head.
pub struct RequestSpan {
    /// Boxed: the SDK's span is a few hundred bytes, and the request's future carries an
    /// `Option<RequestSpan>` whether tracing is on or not.
    span: Box<Span>,
    method: &'static str,
    /// What the token checks decided, once they have.
    decision: Option<&'static str>,
    public: bool,
}

impl RequestSpan {
    /// Starts the span of `request` from `peer`: a child of the caller's span if the peer is
    /// a trusted proxy that sent one, the root of a new trace otherwise.
    pub fn start(tracing: &Tracing, request: &Request<Body>, peer: &Peer) -> RequestSpan {
        let parent = peer
            .trusted
            .then(|| traces::parent_from_headers(request.headers()))
            .flatten();
        let cx = match parent {
            Some(parent) => Context::new().with_remote_span_context(parent),
            None => Context::new(),
        };
        let method = traces::method_name(request.method());
        let mut span = tracing
            .tracer
            .span_builder(method)
            .with_kind(SpanKind::Server)
            .start_with_context(&tracing.tracer, &cx);
        // Unsampled spans record nothing: skip building their attributes.
        if span.is_recording() {
            let path = request.uri().path();
            // A path is at most a few kilobytes (the head's limit); a span keeps its first
            // 1,024 characters.
            let kept = path
                .char_indices()
                .nth(1024)
                .map_or(path, |(i, _)| &path[..i]);
            let peer_attribute = if peer.trusted {
                "network.peer.address"
            } else {
                "client.address"
            };
            span.set_attributes([
                KeyValue::new("http.request.method", method),
                KeyValue::new("url.path", kept.to_string()),
                KeyValue::new(peer_attribute, peer.addr.ip().to_string()),
                KeyValue::new("gateway.trusted_peer", peer.trusted),
            ]);
            if method == "_OTHER" {
                let original = request.method().as_str();
                let original = original.get(..64).unwrap_or(original);
                span.set_attribute(KeyValue::new(
                    "http.request.method_original",
                    original.to_string(),
                ));
            }
        }
        RequestSpan {
            span: Box::new(span),
            method,
            decision: None,
            public: false,
        }
    }

    /// The span's context: the upstream's parent.
    pub fn context(&self) -> SpanContext {
        self.span.span_context().clone()
    }

    /// The request found `route`.
    pub fn routed(&mut self, route: &Route) {
        self.public = route.public;
        if self.span.is_recording() {
            self.span
                .update_name(format!("{} {}", self.method, route.prefix));
            self.span
                .set_attribute(KeyValue::new("http.route", route.prefix.to_string()));
        }
    }

    /// The token checks passed (or the route is public).
    pub fn admitted(&mut self) {
        self.decision = Some(if self.public { "public" } else { "accepted" });
    }

    /// The request goes to the upstream at `address`.
    pub fn forwarding(&mut self, address: &str) {
        if self.span.is_recording() {
            self.span.set_attribute(KeyValue::new(
                "gateway.upstream.address",
                address.to_string(),
            ));
        }
    }

    /// The upstream answered with `status`.
    pub fn answered(&mut self, status: http::StatusCode) {
        if self.span.is_recording() {
            self.span.set_attribute(KeyValue::new(
                "gateway.upstream.status_code",
                i64::from(status.as_u16()),
            ));
        }
    }

    /// The gateway refused the request, or could not get the upstream's answer.
    pub fn refused(&mut self, error: &GatewayError) {
        let decision = match error {
            GatewayError::InvalidToken(reason) => reason.as_str(),
            GatewayError::NoCredentials
            | GatewayError::InvalidRequest(_)
            | GatewayError::InsufficientScope(_)
            | GatewayError::NotReady(_) => error.kind(),
            _ => "",
        };
        if !decision.is_empty() {
            self.decision = Some(decision);
        }
        if self.span.is_recording() {
            self.span
                .set_attribute(KeyValue::new("error.type", error.kind()));
        }
    }

    /// Ends the span with the status of the response sent.
    pub fn finish(mut self, status: u16) {
        if !self.span.is_recording() {
            return;
        }
        if let Some(decision) = self.decision {
            self.span
                .set_attribute(KeyValue::new("gateway.auth.decision", decision));
        }
        self.span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        // A server span is in error for 5xx only (a 4xx is the client's).
        if status >= 500 {
            self.span.set_status(Status::error(""));
        }
        self.span.end();
    }
}

/// The feed's observer: a consumer span for each live revocation applied whose message
/// carries a trace context, a child of the authz-server's publish span (and linked to it),
/// so the revocation's one trace shows every gateway that applied it. `identity` is the
/// gateway's NATS identity (`gateway.identity`).
pub fn apply_observer(tracing: Arc<Tracing>, identity: String) -> ApplyObserver {
    Arc::new(move |applied: &LiveApply<'_>| {
        let Some(parent) = traces::parent_from_headers(applied.headers) else {
            return;
        };
        let tracer: &SdkTracer = &tracing.tracer;
        let id = applied
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        let mut span = tracer
            .span_builder("revocation.apply")
            .with_kind(SpanKind::Consumer)
            .with_start_time(applied.started)
            .with_links(vec![Link::with_context(parent.clone())])
            .with_attributes([
                KeyValue::new("messaging.system", "nats"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.operation.name", "process"),
                KeyValue::new("messaging.destination.name", applied.subject.to_string()),
                KeyValue::new("messaging.message.id", id),
                KeyValue::new("revocation.stream_sequence", applied.sequence as i64),
                KeyValue::new("revocation.outcome", applied.outcome),
                KeyValue::new("gateway.identity", identity.clone()),
            ])
            .start_with_context(tracer, &Context::new().with_remote_span_context(parent));
        // A message the gateway could not read is not a revocation applied.
        if !matches!(applied.outcome, "applied" | "duplicate" | "expired") {
            span.set_status(Status::error(applied.outcome));
        }
        span.end();
    })
}
