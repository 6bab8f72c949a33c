//! The client's request body on its way upstream: the size limit, checked on the declared
//! length before anything is sent and enforced as the body streams, and a watch that tells
//! the client's failures (too large, malformed, silent) from the upstream's.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http::Request;

use crate::error::GatewayError;
use crate::upstream::SendError;

/// Refuses a body declared larger than `max` bytes (413), and cuts off at `max` one that
/// declares no length, as it streams ([`BodyWatch::blame`] then answers 413 too).
pub fn limit(request: Request<Body>, max: u64) -> Result<Request<Body>, GatewayError> {
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(GatewayError::PayloadTooLarge);
    }
    Ok(request.map(|body| Body::new(http_body_util::Limited::new(body, max as usize))))
}

/// Wraps `body` so that its failure is noted: a body that sends nothing for `idle` fails.
pub fn watch(body: Body, idle: Duration) -> (Body, BodyWatch) {
    let watch = BodyWatch::default();
    let body = Body::new(WatchedBody {
        inner: body,
        failed: watch.failed.clone(),
        timed_out: watch.timed_out.clone(),
        idle,
        silent: None,
    });
    (body, watch)
}

/// What happened to a watched body.
#[derive(Default)]
pub struct BodyWatch {
    failed: Arc<AtomicBool>,
    timed_out: Arc<AtomicBool>,
}

impl BodyWatch {
    /// The client's fault behind a failed exchange with the upstream, when its body caused
    /// it: too large (413), silent (408) or malformed (400). `None`: the upstream's fault.
    pub fn blame(&self, error: &SendError) -> Option<GatewayError> {
        if let SendError::Http(e) = error {
            if too_large(e) {
                return Some(GatewayError::PayloadTooLarge);
            }
        }
        if self.timed_out.load(Ordering::Acquire) {
            return Some(GatewayError::BodyTimeout);
        }
        if self.failed.load(Ordering::Acquire) {
            return Some(GatewayError::BadBody);
        }
        None
    }
}

/// The client's request body, noting whether it failed (a malformed chunk, a connection cut
/// mid-body), so that the failure is answered as the client's (400) and not the upstream's;
/// a body that sends nothing for `idle` fails (408), as nginx's `client_body_timeout`: a
/// client trickling an upload would otherwise hold its request for as long as the upstream
/// keeps reading.
struct WatchedBody {
    inner: Body,
    failed: Arc<AtomicBool>,
    timed_out: Arc<AtomicBool>,
    idle: Duration,
    /// Running while the body waits on the client.
    silent: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl hyper::body::Body for WatchedBody {
    type Data = hyper::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.silent = None;
                if let Some(Err(_)) = &frame {
                    this.failed.store(true, Ordering::Release);
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let idle = this.idle;
                let silent = this
                    .silent
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                std::task::ready!(std::future::Future::poll(silent.as_mut(), cx));
                this.timed_out.store(true, Ordering::Release);
                this.failed.store(true, Ordering::Release);
                Poll::Ready(Some(Err(axum::Error::new(
                    "the request body stopped arriving",
                ))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether the request failed because the client's body passed the size limit.
fn too_large(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = e.source();
    }
    false
}
