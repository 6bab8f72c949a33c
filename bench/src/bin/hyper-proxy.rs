//! `hyper-proxy --listen ADDR --upstream ADDR`: the least a reverse proxy built on hyper does,
//! as `edge-bench`'s `hyper-proxy` contestant. It measures the floor under the gateway's proxy
//! path: hyper's HTTP/1 server and client, one current-thread runtime, idle upstream
//! connections kept in a list, mimalloc; nothing else (no authentication, no header
//! rewriting, no timeouts, no smuggling guard, no metrics). Whatever this costs per request,
//! a gateway on hyper costs at least as much. Not for use outside the benchmark.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use clap::Parser;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: String,
    /// `host:port` of the upstream.
    #[arg(long)]
    upstream: String,
}

/// The upstream and its idle connections.
struct Pool {
    address: String,
    idle: Mutex<Vec<SendRequest<Incoming>>>,
}

impl Pool {
    async fn send(self: &Arc<Self>, request: Request<Incoming>) -> Response<Proxied> {
        match self.try_send(request).await {
            Ok(response) => response,
            Err(e) => {
                eprintln!("upstream: {e}");
                let mut response = Response::new(Proxied::Empty);
                *response.status_mut() = StatusCode::BAD_GATEWAY;
                response
            }
        }
    }

    async fn try_send(
        self: &Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<Proxied>, Box<dyn std::error::Error + Send + Sync>> {
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            std::iter::from_fn(|| idle.pop()).find(SendRequest::is_ready)
        };
        let mut sender = match idle {
            Some(sender) => sender,
            None => {
                let stream = tokio::net::TcpStream::connect(&self.address).await?;
                stream.set_nodelay(true)?;
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(connection);
                sender
            }
        };
        let response = sender.send_request(request).await?;
        let pool = Arc::clone(self);
        Ok(response.map(|body| Proxied::Body {
            body,
            conn: Some((sender, pool)),
        }))
    }
}

/// The upstream's response body; its connection goes back to the pool at the body's end.
enum Proxied {
    Empty,
    Body {
        body: Incoming,
        conn: Option<(SendRequest<Incoming>, Arc<Pool>)>,
    },
}

impl Body for Proxied {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Proxied::Body { body, conn } = &mut *self else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(&mut *body).poll_frame(cx));
        let ended = match &frame {
            None => true,
            Some(Ok(_)) => body.is_end_stream(),
            Some(Err(_)) => {
                *conn = None;
                false
            }
        };
        if ended {
            if let Some((sender, pool)) = conn.take() {
                pool.idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(sender);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Proxied::Empty => true,
            Proxied::Body { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Proxied::Empty => SizeHint::with_exact(0),
            Proxied::Body { body, .. } => body.size_hint(),
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen).await?;
        let pool = Arc::new(Pool {
            address: args.upstream,
            idle: Mutex::new(Vec::new()),
        });
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let pool = Arc::clone(&pool);
            let service = hyper::service::service_fn(move |request| {
                let pool = Arc::clone(&pool);
                async move { Ok::<_, Infallible>(pool.send(request).await) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    })
}
