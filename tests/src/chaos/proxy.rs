//! A TCP proxy on a link between the edge and an agent: it forwards both ways until told to
//! black-hole, then it accepts and reads but never answers, and stops forwarding on the
//! connections it already holds — a link that stops answering rather than refusing.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A forwarding proxy that can black-hole.
pub struct LinkProxy {
    /// Where clients connect.
    pub address: SocketAddr,
    holes: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl LinkProxy {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (holes, black) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let black = black.clone();
                tokio::spawn(async move {
                    if *black.borrow() {
                        swallow(client).await;
                    } else {
                        forward(client, target, black).await;
                    }
                });
            }
        });
        Self {
            address,
            holes,
            task,
        }
    }

    /// From now on nothing passes, either way, on new connections or held ones.
    pub fn black_hole(&self) {
        self.holes.send_replace(true);
    }

    /// New connections are forwarded again (the dark ones stay dark).
    pub fn heal(&self) {
        self.holes.send_replace(false);
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads whatever `client` sends and never answers, until it hangs up.
async fn swallow(mut client: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// Forwards between `client` and `target` until either side closes or the link turns
/// black; then only swallows what the client sends.
async fn forward(client: TcpStream, target: SocketAddr, mut black: watch::Receiver<bool>) {
    let Ok(upstream) = TcpStream::connect(target).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut up_read, mut up_write) = upstream.into_split();
    let went_dark = async {
        let mut from_client = vec![0u8; 16 * 1024];
        let mut from_up = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                read = client_read.read(&mut from_client) => match read {
                    Ok(n) if n > 0 => {
                        if up_write.write_all(&from_client[..n]).await.is_err() {
                            return false;
                        }
                    }
                    _ => return false,
                },
                read = up_read.read(&mut from_up) => match read {
                    Ok(n) if n > 0 => {
                        if client_write.write_all(&from_up[..n]).await.is_err() {
                            return false;
                        }
                    }
                    _ => return false,
                },
                changed = black.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                    let dark = *black.borrow_and_update();
                    if dark {
                        return true;
                    }
                }
            }
        }
    };
    if went_dark.await {
        // Held open, read, never answered: the client sees silence, not a reset.
        let mut buf = vec![0u8; 16 * 1024];
        while matches!(client_read.read(&mut buf).await, Ok(n) if n > 0) {}
        drop(client_write);
    }
}
