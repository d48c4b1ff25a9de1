//! A TCP proxy on a link between the edge and an agent. It forwards both ways until told
//! otherwise; then it either black-holes (accepts and reads, never answers, and stops
//! forwarding on the connections it holds: a link that stops answering rather than
//! refusing), or cuts (lets requests through to the agent, drops each connection when the
//! agent starts answering, and refuses new ones: an agent whose machine died after it took
//! a job). Healed, it forwards new connections again.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the link does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    BlackHole,
    Cut,
}

/// A forwarding proxy that can black-hole or cut.
pub struct LinkProxy {
    /// Where clients connect.
    pub address: SocketAddr,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl LinkProxy {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (mode, modes) = watch::channel(Mode::Forward);
        let task = tokio::spawn(serve(listener, address, target, modes));
        Self {
            address,
            mode,
            task,
        }
    }

    /// From now on nothing passes, either way, on new connections or held ones.
    pub fn black_hole(&self) {
        self.mode.send_replace(Mode::BlackHole);
    }

    /// From now on requests still reach the agent, but every connection is dropped when the
    /// agent starts answering, and new connections are refused.
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// New connections are forwarded again (the dark ones stay dark).
    pub fn heal(&self) {
        self.mode.send_replace(Mode::Forward);
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts while the link is not cut; while it is, listens on nothing (connections are
/// refused) until it heals, then listens on the same address again.
async fn serve(
    listener: TcpListener,
    address: SocketAddr,
    target: SocketAddr,
    mut modes: watch::Receiver<Mode>,
) {
    let mut listener = Some(listener);
    loop {
        let Some(bound) = &listener else {
            if modes.wait_for(|m| *m != Mode::Cut).await.is_err() {
                return;
            }
            listener = TcpListener::bind(address).await.ok();
            continue;
        };
        tokio::select! {
            accepted = bound.accept() => {
                let Ok((client, _)) = accepted else { return };
                let modes = modes.clone();
                tokio::spawn(async move {
                    if *modes.borrow() == Mode::BlackHole {
                        swallow(client).await;
                    } else {
                        forward(client, target, modes).await;
                    }
                });
            }
            changed = modes.changed() => {
                if changed.is_err() {
                    return;
                }
                let cut = *modes.borrow_and_update() == Mode::Cut;
                if cut {
                    listener = None;
                }
            }
        }
    }
}

/// Reads whatever `client` sends and never answers, until it hangs up.
async fn swallow(mut client: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// Forwards between `client` and `target` until either side closes, the link turns black
/// (then it only swallows what the client sends), or it is cut and the agent answers (then
/// both connections are dropped, the answer unsent).
async fn forward(client: TcpStream, target: SocketAddr, mut modes: watch::Receiver<Mode>) {
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
                        let cut = *modes.borrow() == Mode::Cut;
                        if cut || client_write.write_all(&from_up[..n]).await.is_err() {
                            return false;
                        }
                    }
                    _ => return false,
                },
                changed = modes.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                    let dark = *modes.borrow_and_update() == Mode::BlackHole;
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
