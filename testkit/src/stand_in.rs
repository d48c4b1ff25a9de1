//! A stand-in for a region agent, for testing the edge alone: an HTTP server that follows
//! region-agent/API.md as far as the edge needs — accept jobs, refuse them with `503` +
//! `x-meridian-refused`, be down, hold answers back until released, stream statuses, show a
//! request only to the tenant that created it, and refuse a job with `429
//! concurrency_limited` when the edge's job bound headers say the tenant has no room (its
//! jobs here, which never end, plus those elsewhere). It speaks the contract's headers and
//! ids. The real agent is used in the end-to-end suite.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::task::JoinHandle;

use contract::{ErrorBody, Nanos, Refusal, headers};

use crate::tokens::AGENT_EDGE;

/// How a stand-in agent answers job submissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Accepts every job.
    Accept,
    /// Refuses every job with `503` and `x-meridian-refused: queue_full`.
    Refuse,
    /// Nothing listens on its port.
    Down,
}

/// What a stand-in agent saw of one call.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub tenant: Option<String>,
    pub edge_token: Option<String>,
    pub authorization: bool,
    pub body: Bytes,
    /// Every header of the call.
    pub headers: HeaderMap,
}

/// What the stand-in charges for every job it runs.
pub const STAND_IN_COST: Nanos = Nanos(2_000_000);

/// A stand-in for a region agent.
pub struct StandInAgent {
    pub endpoint: String,
    refuse: Arc<AtomicBool>,
    /// While set, job submissions wait for [`StandInAgent::release`] before answering.
    hold: Arc<AtomicBool>,
    gate: Arc<tokio::sync::Semaphore>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: Option<JoinHandle<()>>,
}

impl StandInAgent {
    /// Starts the stand-in of `region` on a free loopback port; its request ids name no
    /// instance.
    pub async fn start(region: &str, behaviour: Behaviour) -> Self {
        Self::start_as(region, "", behaviour).await
    }

    /// Starts the stand-in of `instance` of `region` (its request ids name it; empty: none)
    /// on a free loopback port.
    pub async fn start_as(region: &str, instance: &str, behaviour: Behaviour) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let address = listener.local_addr().expect("a bound address");
        let refuse = Arc::new(AtomicBool::new(behaviour == Behaviour::Refuse));
        let hold = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = if behaviour == Behaviour::Down {
            drop(listener);
            None
        } else {
            let agent = Arc::new(AgentState {
                region: region.to_owned(),
                holder: if instance.is_empty() {
                    region.to_owned()
                } else {
                    format!("{region}.{instance}")
                },
                refuse: Arc::clone(&refuse),
                hold: Arc::clone(&hold),
                gate: Arc::clone(&gate),
                seen: Arc::clone(&seen),
                jobs: Mutex::new(HashMap::new()),
                next: AtomicU64::new(1),
            });
            let app = axum::Router::new().fallback(
                move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                    let agent = Arc::clone(&agent);
                    async move { agent.handle(&method, &uri, &headers, &body).await }
                },
            );
            Some(tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }))
        };
        Self {
            endpoint: format!("http://{address}"),
            refuse,
            hold,
            gate,
            seen,
            task,
        }
    }

    /// Every call this agent received, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Makes job submissions and status streams wait for [`StandInAgent::release`].
    pub fn hold(&self) {
        self.hold.store(true, Ordering::SeqCst);
    }

    /// Lets one held answer go on.
    pub fn release(&self) {
        self.gate.add_permits(1);
    }

    /// Starts or stops refusing jobs.
    pub fn set_refusing(&self, refuse: bool) {
        self.refuse.store(refuse, Ordering::SeqCst);
    }
}

impl Drop for StandInAgent {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct AgentState {
    region: String,
    /// What its request ids start with: the region, and the instance if it has one.
    holder: String,
    refuse: Arc<AtomicBool>,
    hold: Arc<AtomicBool>,
    gate: Arc<tokio::sync::Semaphore>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Request id → the tenant that created it.
    jobs: Mutex<HashMap<String, String>>,
    next: AtomicU64,
}

impl AgentState {
    /// Whether the edge's job bound headers leave `tenant` no room for another job here.
    fn over_job_bound(&self, tenant: &str, header: &impl Fn(&str) -> Option<String>) -> bool {
        let number = |name| header(name).and_then(|v| v.parse::<u64>().ok());
        let Some(max) = number(headers::TENANT_MAX_JOBS) else {
            return false;
        };
        let elsewhere = number(headers::TENANT_JOBS_ELSEWHERE).unwrap_or(0);
        let here = lock(&self.jobs).values().filter(|t| *t == tenant).count() as u64;
        here + elsewhere >= max
    }

    /// Waits for a release while the agent is held.
    async fn wait_if_held(&self) {
        if self.hold.load(Ordering::SeqCst)
            && let Ok(permit) = self.gate.acquire().await
        {
            permit.forget();
        }
    }

    async fn handle(
        self: Arc<Self>,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Response {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let tenant = header(headers::TENANT);
        lock(&self.seen).push(Seen {
            method: method.to_string(),
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            tenant: tenant.clone(),
            edge_token: header(headers::EDGE_TOKEN),
            authorization: headers.contains_key("authorization"),
            body: body.clone(),
            headers: headers.clone(),
        });
        if header(headers::EDGE_TOKEN).as_deref() != Some(AGENT_EDGE) {
            return error(StatusCode::UNAUTHORIZED, "unauthorized");
        }
        let Some(tenant) = tenant else {
            return error(StatusCode::BAD_REQUEST, "bad_request");
        };
        let path = uri.path();
        let region = [(headers::REGION, self.region.clone())];
        if *method == Method::POST {
            if self.refuse.load(Ordering::SeqCst) {
                let refusal = Refusal::QueueFull;
                let body =
                    ErrorBody::new("refused", refusal.message()).with_reason(refusal.reason());
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(headers::REFUSED, refusal.reason())],
                    body.to_json(),
                )
                    .into_response();
            }
            if self.over_job_bound(&tenant, &header) {
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "1")],
                    ErrorBody::new("concurrency_limited", "the tenant's jobs are at its bound")
                        .to_json(),
                )
                    .into_response();
            }
            let id = format!(
                "{}.{:032x}",
                self.holder,
                self.next.fetch_add(1, Ordering::SeqCst)
            );
            self.wait_if_held().await;
            lock(&self.jobs).insert(id.clone(), tenant.clone());
            let body = json!({"request_id": id, "region": self.region, "tenant": tenant});
            let status = if path.starts_with("/v1/queue/") {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            return (
                status,
                [
                    (headers::REQUEST_ID, id.clone()),
                    (headers::COST, STAND_IN_COST.to_string()),
                ],
                region,
                body.to_string(),
            )
                .into_response();
        }
        let id = path
            .strip_prefix("/v1/requests/")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default()
            .to_owned();
        if lock(&self.jobs).get(&id) != Some(&tenant) {
            return error(StatusCode::NOT_FOUND, "not_found");
        }
        if header("accept").as_deref() == Some("text/event-stream") {
            return self.status_stream(id);
        }
        let body = json!({"request_id": id, "region": self.region, "status": "COMPLETED"});
        (
            StatusCode::OK,
            [(headers::REQUEST_ID, id)],
            region,
            body.to_string(),
        )
            .into_response()
    }
}

impl AgentState {
    /// An SSE stream of statuses: `IN_PROGRESS` at once, `COMPLETED` once released.
    fn status_stream(self: Arc<Self>, id: String) -> Response {
        let (events, body) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let event = |status: &str| {
            let data = json!({"request_id": id, "status": status});
            Ok(Bytes::from(format!("event: status\ndata: {data}\n\n")))
        };
        let first = event("IN_PROGRESS");
        let last = event("COMPLETED");
        tokio::spawn(async move {
            let _ = events.send(first).await;
            self.wait_if_held().await;
            let _ = events.send(last).await;
        });
        let stream = ReceiverStream(body);
        (
            [("content-type", "text/event-stream")],
            axum::body::Body::from_stream(stream),
        )
            .into_response()
    }
}

/// A channel's receiving end as a stream of body chunks.
struct ReceiverStream(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures_core::Stream for ReceiverStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

fn error(status: StatusCode, kind: &str) -> Response {
    (status, ErrorBody::new(kind, kind).to_json()).into_response()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
