//! The load generator: keep-alive HTTP/1.1 connections, each writing one prebuilt request
//! and reading the answer by its `content-length`, on the calling thread's runtime. Two
//! ways to load a path:
//!
//! - [`max_rate`]: closed loop — every connection sends its next request as soon as the
//!   previous answer is read; what is counted is answers per second.
//! - [`fixed_rate`]: open loop — a pacer thread releases requests on a fixed timetable
//!   (`rate` per second, evenly spaced) into a queue that idle connections take from. A
//!   request's latency runs from the time the timetable gave it until its answer is read,
//!   so time spent waiting for a free connection behind a slow answer is counted, not
//!   hidden (no coordinated omission). The pacer sleeps with the OS timer, which wakes it
//!   a little late; that lateness is in every latency, for every path alike, and reported.
//!
//! Every answer must be `200`: any other status, or a broken connection, fails the run.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::http1;

/// One keep-alive connection to a path.
struct Client {
    address: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(address: SocketAddr) -> io::Result<Self> {
        let mut client = Self {
            address,
            stream: None,
            buf: Vec::with_capacity(16 * 1024),
        };
        client.stream = Some(client.open().await?);
        Ok(client)
    }

    async fn open(&self) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(self.address).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Sends `request` and reads the answer: `Ok(Err(what))` for an answer other than 200.
    async fn exchange(&mut self, request: &[u8]) -> io::Result<Result<(), String>> {
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => self.open().await?,
        };
        self.buf.clear();
        stream.write_all(request).await?;
        let answer = http1::read_message(&mut stream, &mut self.buf)
            .await?
            .ok_or_else(|| io::Error::other("the connection closed before an answer"))?;
        if !answer.close {
            self.stream = Some(stream);
        }
        Ok(match answer.status(&self.buf) {
            Some(200) => Ok(()),
            _ => Err(String::from_utf8_lossy(&self.buf[..answer.len.min(600)]).into_owned()),
        })
    }
}

/// What one run counted besides its measure.
#[derive(Debug, Default)]
struct Tally {
    /// 200 answers inside the measured window.
    counted: u64,
    /// Answers other than 200, and the first of them.
    refused: u64,
    first_refused: Option<String>,
}

impl Tally {
    fn add(&mut self, other: Self) {
        self.counted += other.counted;
        self.refused += other.refused;
        self.first_refused = self.first_refused.take().or(other.first_refused);
    }

    fn record(&mut self, answer: Result<(), String>, counted: bool) {
        match answer {
            Ok(()) => self.counted += u64::from(counted),
            Err(what) => {
                self.refused += 1;
                self.first_refused.get_or_insert(what);
            }
        }
    }

    /// Fails when any answer was not 200.
    fn check(&self) -> io::Result<()> {
        match &self.first_refused {
            None => Ok(()),
            Some(first) => Err(io::Error::other(format!(
                "{} answers were not 200; the first:\n{first}",
                self.refused
            ))),
        }
    }
}

/// Sends `request` until the path answers 200, for up to `patience`.
pub async fn wait_until_ok(
    address: SocketAddr,
    request: &[u8],
    patience: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        let last = match Client::connect(address).await {
            Ok(mut client) => client.exchange(request).await,
            Err(e) => Err(e),
        };
        match last {
            Ok(Ok(())) => return Ok(()),
            _ if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Err(answer)) => return Err(io::Error::other(format!("still answers:\n{answer}"))),
            Err(e) => return Err(e),
        }
    }
}

async fn connect_all(address: SocketAddr, connections: usize) -> io::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(Client::connect(address).await?);
    }
    Ok(clients)
}

/// Closed loop over `connections` connections for `warm_up` and then `measure`; returns the
/// 200 answers per second read during `measure`.
pub async fn max_rate(
    address: SocketAddr,
    request: Arc<[u8]>,
    connections: usize,
    warm_up: Duration,
    measure: Duration,
) -> io::Result<f64> {
    let clients = connect_all(address, connections).await?;
    let start = Instant::now() + warm_up;
    let end = start + measure;
    let mut tasks = tokio::task::JoinSet::new();
    for mut client in clients {
        let request = Arc::clone(&request);
        tasks.spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < end {
                let answer = client.exchange(&request).await?;
                let now = Instant::now();
                tally.record(answer, start <= now && now < end);
            }
            io::Result::Ok(tally)
        });
    }
    let tally = join(tasks).await?;
    tally.check()?;
    #[allow(clippy::cast_precision_loss)]
    Ok(tally.counted as f64 / measure.as_secs_f64())
}

/// What a fixed-rate run saw, each sorted.
#[derive(Debug)]
pub struct Latencies {
    /// Timetable slot → answer read, for requests of the measured window.
    pub latency: Vec<Duration>,
    /// How late the pacer woke for each slot.
    pub pacer_late: Vec<Duration>,
}

/// Open loop at `rate` requests per second over `connections` connections, for `warm_up`
/// and then `measure`; latencies of the requests timetabled during `measure`.
pub async fn fixed_rate(
    address: SocketAddr,
    request: Arc<[u8]>,
    connections: usize,
    rate: f64,
    warm_up: Duration,
    measure: Duration,
) -> io::Result<Latencies> {
    let clients = connect_all(address, connections).await?;
    let (slots, queue) = unbounded_channel::<Instant>();
    let queue = Arc::new(Mutex::new(queue));
    let first = Instant::now() + Duration::from_millis(5);
    let record_from = first + warm_up;
    let total = slots_in(rate, warm_up + measure);
    let pacer = std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || {
            let mut late = Vec::with_capacity(total);
            for i in 0..total {
                #[allow(clippy::cast_precision_loss)]
                let slot = first + Duration::from_secs_f64(i as f64 / rate);
                let now = Instant::now();
                if slot > now {
                    std::thread::sleep(slot - now);
                }
                late.push(Instant::now().saturating_duration_since(slot));
                if slots.send(slot).is_err() {
                    break;
                }
            }
            late
        })?;
    let mut tasks = tokio::task::JoinSet::new();
    for client in clients {
        let request = Arc::clone(&request);
        let queue = Arc::clone(&queue);
        tasks.spawn(take_slots(client, request, queue, record_from));
    }
    let mut latency = Vec::with_capacity(total);
    let mut tally = Tally::default();
    while let Some(done) = tasks.join_next().await {
        let (seen, part) = done.map_err(io::Error::other)??;
        latency.extend(seen);
        tally.add(part);
    }
    tally.check()?;
    let mut pacer_late = pacer
        .join()
        .map_err(|_| io::Error::other("the pacer panicked"))?;
    latency.sort_unstable();
    pacer_late.sort_unstable();
    Ok(Latencies {
        latency,
        pacer_late,
    })
}

/// One connection of a fixed-rate run: takes timetable slots while idle, until the pacer
/// is done.
async fn take_slots(
    mut client: Client,
    request: Arc<[u8]>,
    queue: Arc<Mutex<UnboundedReceiver<Instant>>>,
    record_from: Instant,
) -> io::Result<(Vec<Duration>, Tally)> {
    let mut seen = Vec::new();
    let mut tally = Tally::default();
    loop {
        let slot = queue.lock().await.recv().await;
        let Some(slot) = slot else {
            return Ok((seen, tally));
        };
        let answer = client.exchange(&request).await?;
        let latency = slot.elapsed();
        let counted = slot >= record_from;
        if counted && answer.is_ok() {
            seen.push(latency);
        }
        tally.record(answer, counted);
    }
}

#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]
fn slots_in(rate: f64, span: Duration) -> usize {
    (rate * span.as_secs_f64()).ceil() as usize
}

async fn join(mut tasks: tokio::task::JoinSet<io::Result<Tally>>) -> io::Result<Tally> {
    let mut tally = Tally::default();
    while let Some(done) = tasks.join_next().await {
        tally.add(done.map_err(io::Error::other)??);
    }
    Ok(tally)
}

/// The `p`th percentile of `sorted` (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
