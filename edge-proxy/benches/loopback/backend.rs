//! The one backend that every path reaches: a stand-in for a region agent, not the real
//! agent. It speaks HTTP/1.1 with keep-alive and answers every request with `200` and the
//! same small result, shaped as an agent's answer to `POST /v1/run/{owner}/{model}`
//! (region-agent/API.md: the status fields plus `output`, `units`, `cost`, `capacity`, and
//! the `x-request-id`, `x-meridian-region` and `x-meridian-cost` headers). It runs no model
//! and checks no token, so what is measured is the way to it, not the work behind it. It
//! serves on its own thread with a single-threaded runtime and counts its answers, so the
//! bench can check that every path really reached it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::http1;

const ID: &str = "eu-west.00000000000000000000000000000001";

/// The stand-in agent, serving until dropped.
pub struct Backend {
    pub address: SocketAddr,
    answered: Arc<AtomicU64>,
    shutdown: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts serving on a free loopback port.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the backend");
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let answered = Arc::new(AtomicU64::new(0));
        let shutdown = CancellationToken::new();
        let thread = {
            let answered = Arc::clone(&answered);
            let shutdown = shutdown.clone();
            std::thread::Builder::new()
                .name("backend".into())
                .spawn(move || serve(listener, &answered, &shutdown))
                .unwrap()
        };
        Self {
            address,
            answered,
            shutdown,
            thread: Some(thread),
        }
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The answer to every request.
fn answer() -> Arc<[u8]> {
    let body = format!(
        r#"{{"request_id":"{ID}","model":"meridian/esrgan-x4","region":"eu-west","status":"COMPLETED","timings":{{"queued_at_ms":0,"queue_ms":0,"inference_ms":3}},"error":null,"output":{{"image":{{"name":"image.png","content_type":"image/png","url":"/v1/requests/{ID}/files/image.png","bytes":68}}}},"units":0.000004,"cost":0.000000008,"capacity":"reserved"}}"#
    );
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         x-request-id: {ID}\r\nx-meridian-region: eu-west\r\nx-meridian-cost: 0.000000008\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
    .into()
}

fn serve(listener: std::net::TcpListener, answered: &Arc<AtomicU64>, shutdown: &CancellationToken) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answer = answer();
    runtime.block_on(async {
        let listener = TcpListener::from_std(listener).unwrap();
        loop {
            let stream = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let answered = Arc::clone(answered);
            let answer = Arc::clone(&answer);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    _ = connection(stream, &answered, &answer) => {}
                }
            });
        }
    });
}

/// Answers the requests of one connection until the peer closes it.
async fn connection(
    mut stream: TcpStream,
    answered: &AtomicU64,
    answer: &[u8],
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(16 * 1024);
    while let Some(request) = http1::read_message(&mut stream, &mut buf).await? {
        buf.drain(..request.len);
        stream.write_all(answer).await?;
        answered.fetch_add(1, Ordering::Relaxed);
        if request.close {
            break;
        }
    }
    Ok(())
}
