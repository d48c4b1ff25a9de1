//! An open-loop load on the edge (requests leave on a fixed schedule, whatever the answers
//! of earlier ones), what each request got, the queued jobs followed to their end, and the
//! accounting of every request sent.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use contract::headers::{IDEMPOTENCY_KEY, REGION, REQUEST_ID};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::MODEL;

/// The call a request makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `POST /v1/run/…`: runs the job and waits for it.
    Run,
    /// `POST /v1/queue/…`: queues the job; it is followed to its end afterwards.
    Queue,
}

/// The load to hold.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Requests per second.
    pub rate: u32,
    /// How long requests keep leaving.
    pub duration: Duration,
    /// The client's address (sent as X-Forwarded-For): where the edge places it.
    pub from: &'static str,
    /// Side of the square input picture, in pixels (the job's size).
    pub image_size: u32,
    /// The calls made, in turn.
    pub calls: &'static [Call],
}

impl Plan {
    /// How many requests it sends.
    pub fn requests(&self) -> usize {
        usize::try_from(u128::from(self.rate) * self.duration.as_millis() / 1000).unwrap()
    }

    /// `20 req/s × 4.0 s`.
    pub fn describe(&self) -> String {
        format!("{} req/s × {:.1} s", self.rate, self.duration.as_secs_f64())
    }
}

/// How long a scenario holds its load: `default`, or `MERIDIAN_CHAOS_SOAK_S` seconds when
/// set (the long variants).
pub fn soak(default: Duration) -> Duration {
    std::env::var("MERIDIAN_CHAOS_SOAK_S")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(default, Duration::from_secs)
}

/// How a followed job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Completed,
    /// `FAILED`, with its error's type.
    Failed(String),
    Cancelled,
    /// Unknown id, or no final state within the patience: the job vanished.
    Vanished(String),
}

/// One request and what it got.
#[derive(Debug, Clone)]
pub struct Sent {
    pub call: Call,
    /// The `Idempotency-Key` it carried (unique to it).
    pub key: String,
    /// The first answer's status and error type, when it was sent again with its key after
    /// an answer that did not say how its job ended (the fields below hold the last answer).
    pub first: Option<(Option<u16>, Option<String>)>,
    /// Whether the job that answered the second send was queued before it: the first send
    /// had created it.
    pub made_by_first: bool,
    /// When it left, since the load started.
    pub at: Duration,
    /// When its answer came, since the load started; `None` when none came.
    pub answered: Option<Duration>,
    pub status: Option<u16>,
    /// `x-meridian-region`.
    pub region: Option<String>,
    /// The request id (`x-request-id`, or the queue answer's `request_id`).
    pub id: Option<String>,
    /// The error body's `type`, or why no answer came.
    pub error: Option<String>,
    /// The error body's message.
    pub message: Option<String>,
    /// How the job ended, for followed jobs.
    pub end: Option<End>,
}

impl Sent {
    /// Whether the client saw it fail before any region accepted it (anything but a
    /// success, an accepted job, or a gateway error that says the job may exist).
    pub fn refused(&self) -> bool {
        !matches!(self.first_status(), Some(200 | 202 | 502 | 504))
    }

    /// The status of the first answer it got.
    pub fn first_status(&self) -> Option<u16> {
        self.first
            .as_ref()
            .map_or(self.status, |(status, _)| *status)
    }

    /// Whether it was sent again with its key.
    pub fn resent(&self) -> bool {
        self.first.is_some()
    }

    /// Whether it ended in a success: a synchronous result, or a queued job completed.
    pub fn completed(&self) -> bool {
        self.status == Some(200) || self.end == Some(End::Completed)
    }

    /// The instance its request id names (the one that holds its job), if any.
    pub fn instance(&self) -> Option<String> {
        let id = contract::RequestId::new(self.id.as_deref()?).ok()?;
        id.instance().map(str::to_owned)
    }
}

/// What a load's requests have got so far.
#[derive(Debug, Default)]
struct Progress {
    /// Requests answered (or given up on), whatever the answer.
    answered: usize,
    /// Requests served (2xx), per region and per `<region>.<instance>`.
    served: BTreeMap<String, usize>,
    /// The request ids of the jobs accepted, as their answers came.
    accepted: Vec<String>,
}

type Served = Arc<Mutex<Progress>>;

/// A load in flight.
pub struct Load {
    started: Instant,
    served: Served,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<Sent>>,
    pub plan: Plan,
}

impl Load {
    /// Starts sending `plan`'s requests to the edge at `base` with `key`.
    pub fn start(base: &str, key: &str, plan: Plan) -> Self {
        let started = Instant::now();
        let served = Served::default();
        let stop = CancellationToken::new();
        let http = testkit::edge::client();
        let body = job_body(plan.image_size);
        let prefix = format!("chaos-{:x}", rand_prefix());
        let (base, key, served_by, schedule, stopped) = (
            base.to_owned(),
            key.to_owned(),
            served.clone(),
            plan.clone(),
            stop.clone(),
        );
        let task = tokio::spawn(async move {
            let mut requests = JoinSet::new();
            let every = Duration::from_secs(1) / schedule.rate;
            for i in 0..schedule.requests() {
                let call = schedule.calls[i % schedule.calls.len()];
                let due = started + every * u32::try_from(i).unwrap();
                tokio::select! {
                    () = stopped.cancelled() => break,
                    () = tokio::time::sleep_until(due) => {}
                }
                let path = match call {
                    Call::Run => format!("{base}/v1/run/{MODEL}"),
                    Call::Queue => format!("{base}/v1/queue/{MODEL}"),
                };
                let idempotency = format!("{prefix}-{i}");
                let request =
                    submission(&http, &path, &key, schedule.from, &idempotency).body(body.clone());
                let served = served_by.clone();
                requests.spawn(async move {
                    let at = started.elapsed();
                    let mut sent = answer(call, at, started, request.send().await).await;
                    sent.key = idempotency;
                    count(&served, &sent);
                    sent
                });
            }
            let mut all = Vec::new();
            while let Some(sent) = requests.join_next().await {
                all.push(sent.unwrap());
            }
            all.sort_by_key(|s| s.at);
            all
        });
        Self {
            started,
            served,
            stop,
            task,
            plan,
        }
    }

    /// Stops sending before the plan's end (requests already sent still get their
    /// answers).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Time since the load started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Requests `region` has served (2xx) so far.
    pub fn served_by(&self, region: &str) -> usize {
        let progress = self.served.lock().unwrap();
        progress.served.get(region).copied().unwrap_or(0)
    }

    /// Requests instance `instance` of `region` has served (2xx) so far, by their ids.
    pub fn served_by_instance(&self, region: &str, instance: &str) -> usize {
        self.served_by(&format!("{region}.{instance}"))
    }

    /// Requests answered so far (or given up on), whatever the answer.
    pub fn answered(&self) -> usize {
        self.served.lock().unwrap().answered
    }

    /// The request ids of the jobs accepted so far.
    pub fn accepted(&self) -> Vec<String> {
        self.served.lock().unwrap().accepted.clone()
    }

    /// Waits until every request has left and has its answer (each within the client's
    /// patience).
    pub async fn finish(self) -> Vec<Sent> {
        self.task.await.unwrap()
    }
}

/// Counts `sent`'s answer: whom it was served by, and its job.
fn count(served: &Served, sent: &Sent) {
    let mut progress = served.lock().unwrap();
    progress.answered += 1;
    if let (Some(200 | 202), Some(region)) = (sent.status, &sent.region) {
        *progress.served.entry(region.clone()).or_default() += 1;
        if let Some(instance) = sent.instance() {
            let by = format!("{region}.{instance}");
            *progress.served.entry(by).or_default() += 1;
        }
        progress.accepted.extend(sent.id.clone());
    }
}

async fn answer(
    call: Call,
    at: Duration,
    started: Instant,
    response: reqwest::Result<reqwest::Response>,
) -> Sent {
    let mut sent = Sent {
        call,
        key: String::new(),
        first: None,
        made_by_first: false,
        at,
        answered: None,
        status: None,
        region: None,
        id: None,
        error: None,
        message: None,
        end: None,
    };
    let response = match response {
        Ok(response) => response,
        Err(e) => {
            sent.error = Some(format!("no answer: {e}"));
            return sent;
        }
    };
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    sent.status = Some(response.status().as_u16());
    sent.region = header(REGION);
    sent.id = header(REQUEST_ID);
    let body = match response.text().await {
        Ok(text) => serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
        Err(e) => {
            sent.error = Some(format!("body cut: {e}"));
            return sent;
        }
    };
    sent.answered = Some(started.elapsed());
    if let Some(id) = body["request_id"].as_str() {
        sent.id = Some(id.to_owned());
    }
    sent.error = body["error"]["type"].as_str().map(str::to_owned);
    sent.message = body["error"]["message"].as_str().map(str::to_owned);
    sent
}

/// A job submission's body: a `size` × `size` picture.
fn job_body(size: u32) -> String {
    json!({"input": {"image": crate::small_png_base64(size)}}).to_string()
}

/// A submission to `url` with `key`, from `from`, with its `Idempotency-Key`.
fn submission(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    from: &str,
    idempotency: &str,
) -> reqwest::RequestBuilder {
    http.post(url)
        .header("authorization", format!("Key {key}"))
        .header("content-type", "application/json")
        .header("x-forwarded-for", from)
        .header(IDEMPOTENCY_KEY, idempotency)
}

/// A random prefix for the load's idempotency keys.
fn rand_prefix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// Sends again, with the same `Idempotency-Key` and body, every request whose answer did
/// not say how its job ended — a 5xx without a job id, or no answer — as a client that
/// lost an answer does: the key makes it safe (the job the first send may have created
/// answers; nothing new is made when one exists).
pub async fn resend_unsettled(base: &str, key: &str, plan: &Plan, sent: &mut [Sent]) {
    let http = testkit::edge::client();
    let body = job_body(plan.image_size);
    for s in sent.iter_mut() {
        let unsettled = s.status.is_none_or(|status| status >= 500) && s.id.is_none();
        if !unsettled {
            continue;
        }
        let path = match s.call {
            Call::Run => format!("{base}/v1/run/{MODEL}"),
            Call::Queue => format!("{base}/v1/queue/{MODEL}"),
        };
        let request = submission(&http, &path, key, plan.from, &s.key).body(body.clone());
        let resent_at_ms = crate::now_ms();
        let again = answer(s.call, s.at, Instant::now(), request.send().await).await;
        let made_by_first = match &again.id {
            Some(id) => queued_at_ms(&http, base, key, id)
                .await
                .is_some_and(|queued| queued < resent_at_ms),
            None => false,
        };
        *s = Sent {
            key: std::mem::take(&mut s.key),
            first: Some((s.status, s.error.clone())),
            made_by_first,
            at: s.at,
            answered: s.answered,
            ..again
        };
    }
}

/// When job `id` was queued (Unix ms), from its status.
async fn queued_at_ms(http: &reqwest::Client, base: &str, key: &str, id: &str) -> Option<u64> {
    let status: Value = http
        .get(format!("{base}/v1/requests/{id}/status"))
        .header("authorization", format!("Key {key}"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    status["timings"]["queued_at_ms"].as_u64()
}

/// Follows every request that has a job id but no result yet (queued, or timed out while
/// running) through the edge until its job ends; bounded by the patience.
pub async fn follow(base: &str, key: &str, sent: &mut [Sent]) {
    let http = testkit::edge::client();
    let mut follows = JoinSet::new();
    for (i, s) in sent.iter().enumerate() {
        let Some(id) = s.id.clone() else { continue };
        if s.status == Some(200) {
            continue;
        }
        let url = format!("{base}/v1/requests/{id}/status");
        let (http, key) = (http.clone(), key.to_owned());
        follows.spawn(async move { (i, end_of(&http, &url, &key).await) });
    }
    while let Some(done) = follows.join_next().await {
        let (i, end) = done.unwrap();
        sent[i].end = Some(end);
    }
}

async fn end_of(http: &reqwest::Client, url: &str, key: &str) -> End {
    let deadline = Instant::now() + testkit::patience();
    let mut last = String::new();
    while Instant::now() < deadline {
        let answer = http
            .get(url)
            .header("authorization", format!("Key {key}"))
            .send()
            .await;
        if let Ok(response) = answer {
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            match (status, body["status"].as_str()) {
                (200, Some("COMPLETED")) => return End::Completed,
                (200, Some("CANCELLED")) => return End::Cancelled,
                (200, Some("FAILED")) => {
                    let why = body["error"]["type"].as_str().unwrap_or("no reason");
                    return End::Failed(why.to_owned());
                }
                (404, _) => return End::Vanished(format!("404: {body}")),
                _ => last = format!("{status}: {body}"),
            }
        }
        // The region holding it may be down until it restarts: ask again.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    End::Vanished(format!("no final state; last answer {last}"))
}

/// The accounting of every request a scenario sent.
#[derive(Debug, Default)]
pub struct Tally {
    pub scenario: String,
    pub load: String,
    pub faults: String,
    pub sent: usize,
    /// Jobs a region accepted, as the client saw (a result, a queued job, a job id).
    pub accepted: usize,
    pub completed: usize,
    /// Requests that ended in a failure with a reason, per reason.
    pub failed: BTreeMap<String, usize>,
    /// Requests with no answer, an answer without a reason, or a job that vanished.
    pub lost: Vec<String>,
    /// Figures the scenario adds (failover time, usage).
    pub figures: Vec<String>,
}

impl Tally {
    /// Accounts for every request in `sent`.
    pub fn of(scenario: &str, plan: &Plan, faults: &str, sent: &[Sent]) -> Self {
        let mut tally = Self {
            scenario: scenario.to_owned(),
            load: plan.describe(),
            faults: faults.to_owned(),
            sent: sent.len(),
            ..Self::default()
        };
        for s in sent {
            tally.count(s);
        }
        let resent: Vec<&Sent> = sent.iter().filter(|s| s.resent()).collect();
        if !resent.is_empty() {
            let mut first = BTreeMap::<String, usize>::new();
            for s in &resent {
                let (status, error) = s.first.clone().unwrap_or_default();
                let status = status.map_or("no answer".to_owned(), |s| s.to_string());
                let why = format!("{status} {}", error.unwrap_or_default());
                *first.entry(why.trim().to_owned()).or_default() += 1;
            }
            let first: Vec<String> = first.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let completed = resent.iter().filter(|s| s.completed()).count();
            let existed = resent.iter().filter(|s| s.made_by_first).count();
            tally.figure(format!(
                "first answers unsettled ({}), sent again with their Idempotency-Key: {} → \
                 {completed} completed, {existed} of them by the job the first send had made",
                first.join(", "),
                resent.len()
            ));
        }
        tally
    }

    fn count(&mut self, s: &Sent) {
        let Some(status) = s.status else {
            let why = s.error.clone().unwrap_or_default();
            self.lost.push(format!("request at {:?}: {why}", s.at));
            return;
        };
        if status == 200 || s.id.is_some() {
            self.accepted += 1;
        }
        if status == 200 {
            self.completed += 1;
            return;
        }
        match (&s.id, &s.end, &s.error) {
            (Some(_), Some(End::Completed), _) => self.completed += 1,
            (Some(_), Some(End::Failed(why)), _) => self.fail(&format!("job {why}")),
            (Some(_), Some(End::Cancelled), _) => self.fail("cancelled"),
            (Some(id), Some(End::Vanished(why)), _) => self.lost.push(format!("{id}: {why}")),
            (Some(id), None, _) => self.lost.push(format!("{id}: not followed")),
            (None, _, Some(error)) => self.fail(&format!("{status} {error}")),
            (None, _, None) => self
                .lost
                .push(format!("request at {:?}: {status} without a reason", s.at)),
        }
    }

    fn fail(&mut self, why: &str) {
        *self.failed.entry(why.to_owned()).or_default() += 1;
    }

    /// Requests that failed with a reason.
    pub fn failed_total(&self) -> usize {
        self.failed.values().sum()
    }

    /// Adds a figure to the printed line.
    pub fn figure(&mut self, figure: String) {
        self.figures.push(figure);
    }

    /// Prints the accounting as one table line (with `--nocapture`).
    pub fn print(&self) {
        let mut line = format!(
            "chaos | {} | {} | {} | sent {} | accepted {} | completed {} | failed {}",
            self.scenario,
            self.load,
            self.faults,
            self.sent,
            self.accepted,
            self.completed,
            self.failed_total()
        );
        if !self.failed.is_empty() {
            let reasons: Vec<String> = self
                .failed
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = write!(line, " ({})", reasons.join(", "));
        }
        let _ = write!(line, " | lost {}", self.lost.len());
        for figure in &self.figures {
            let _ = write!(line, " | {figure}");
        }
        eprintln!("{line}");
        for lost in &self.lost {
            eprintln!("chaos | {} | lost: {lost}", self.scenario);
        }
    }

    /// Every request is accounted for, and none is lost.
    pub fn assert_nothing_lost(&self) {
        assert_eq!(
            self.completed + self.failed_total() + self.lost.len(),
            self.sent,
            "every request is counted once"
        );
        assert!(
            self.lost.is_empty(),
            "{}: {} lost: {:?}",
            self.scenario,
            self.lost.len(),
            self.lost
        );
    }
}
