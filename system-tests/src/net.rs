//! Loopback networking: free ports, listeners, and a TCP proxy a test can cut like a
//! network partition.

use super::*;

/// `n` distinct free loopback ports (bound, read, released: good enough on a test machine).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(listeners
        .iter()
        .filter_map(|l| l.local_addr().ok().map(|a| a.port()))
        .collect())
}

/// A TCP proxy on loopback that the test can cut without closing anything: while cut, bytes
/// in both directions are swallowed and new connections are held open unanswered, the way a
/// network partition looks to both ends. Healing closes the connections that saw the cut and
/// forwards new ones again.
pub struct TcpProxy {
    pub port: u16,
    cut: Arc<std::sync::atomic::AtomicBool>,
    generation: Arc<std::sync::atomic::AtomicU64>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: u16) -> Result<TcpProxy> {
        use std::sync::atomic::Ordering;
        let listener = bind().await?;
        let port = listener.local_addr()?.port();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (cut2, gen2) = (cut.clone(), generation.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (cut, generation) = (cut2.clone(), gen2.clone());
                tokio::spawn(async move {
                    let born = generation.load(Ordering::SeqCst);
                    // Held unanswered while cut.
                    while cut.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    if generation.load(Ordering::SeqCst) != born {
                        return;
                    }
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let born = generation.load(Ordering::SeqCst);
                    let a = pump(cr, sw, cut.clone(), generation.clone(), born);
                    let b = pump(sr, cw, cut, generation, born);
                    tokio::select! { _ = a => {}, _ = b => {} }
                });
            }
        });
        Ok(TcpProxy {
            port,
            cut,
            generation,
            task,
        })
    }

    /// `tls://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    /// Starts swallowing everything.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes the connections that saw the cut and forwards again.
    pub fn heal(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<std::sync::atomic::AtomicBool>,
    generation: Arc<std::sync::atomic::AtomicU64>,
    born: u64,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::time::timeout(Duration::from_millis(50), from.read(&mut buf)).await;
        if generation.load(Ordering::SeqCst) != born {
            return;
        }
        match read {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => {
                if cut.load(Ordering::SeqCst) {
                    continue;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Binds a loopback listener on a dynamic port.
pub async fn bind() -> Result<TcpListener> {
    Ok(TcpListener::bind("127.0.0.1:0").await?)
}
