//! The agent's submission calls (`POST /v1/queue/…` and `POST /v1/run/…`, for every model it
//! serves here: the test model, ESRGAN, video upscaling, Silero VAD and the tiny-sd pipeline
//! test model) fed random JSON (bounded nesting, long strings, huge and odd numbers, wrong
//! types, unknown and repeated fields), valid bodies changed a little (a field dropped,
//! replaced or of another type; bytes flipped, cut, inserted or copied; nesting 10 000 deep)
//! and bad headers (tenant, content type, idempotency key, the tenant's job bound). The agent
//! never answers 5xx but a documented `503` refusal, every refusal has the contract's error
//! body, a refused body creates no job, the agent still answers `/healthz`, and the process's
//! peak memory stays bounded.
//!
//! `MERIDIAN_FUZZ_CASES` sets the number of submissions (256 by default, a few seconds);
//! README's testing section shows a longer run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use contract::{ErrorBody, headers};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use region_agent::models::audio_io::encode_wav_mono_i16;
use region_agent::serving::Model;
use region_agent::serving::test_model::TestModel;
use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};

use support::media::{peak_rss, small_png};
use support::{Agent, EDGE_TOKEN, config};

const ECHO: &str = "test/echo";
const ESRGAN: &str = "meridian/esrgan-x2";
const VIDEO: &str = "meridian/video-upscale-x2";
const VAD: &str = "meridian/silero-vad";
const SD: &str = "meridian/tiny-sd";
/// A model the agent does not serve (refused with `503 model_not_served`).
const UNKNOWN: &str = "meridian/nope";

/// Submissions sent: `MERIDIAN_FUZZ_CASES`, else 256.
fn cases() -> u32 {
    std::env::var("MERIDIAN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

// ---- JSON, written out by hand so that it can hold what `serde_json::Value` cannot ----

/// A JSON value as text is written: numbers as their text (`1e400`, 30 digits), objects as
/// lists of fields (a field may come twice).
#[derive(Debug, Clone)]
enum Json {
    Null,
    Bool(bool),
    Number(String),
    Text(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn write(&self, out: &mut String) {
        match self {
            Self::Null => out.push_str("null"),
            Self::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Self::Number(n) => out.push_str(n),
            Self::Text(s) => out.push_str(&Value::String(s.clone()).to_string()),
            Self::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Self::Object(fields) => {
                out.push('{');
                for (i, (name, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(name.clone()).to_string());
                    out.push(':');
                    value.write(out);
                }
                out.push('}');
            }
        }
    }

    fn text(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn from_value(value: &Value) -> Self {
        match value {
            Value::Null => Self::Null,
            Value::Bool(b) => Self::Bool(*b),
            Value::Number(n) => Self::Number(n.to_string()),
            Value::String(s) => Self::Text(s.clone()),
            Value::Array(items) => Self::Array(items.iter().map(Self::from_value).collect()),
            Value::Object(fields) => Self::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), Self::from_value(v)))
                    .collect(),
            ),
        }
    }
}

/// Numbers at and past the edges of every type a field might be read as.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        prop::sample::select(vec![
            "0",
            "-0",
            "1",
            "-1",
            "0.5",
            "1.0",
            "4",
            "16",
            "64",
            "1024",
            "1025",
            "4294967295",
            "4294967296",
            "9007199254740993",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775809",
            "123456789012345678901234567890",
            "1e308",
            "1.7976931348623157e309",
            "1e400",
            "-1e400",
            "1e-400",
            "5e-324",
            "0.30000000000000004",
        ])
        .prop_map(str::to_owned),
    ]
}

/// Text: short, long, odd characters, and the values the models look for.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,24}",
        "[a-z]{0,12}",
        prop::sample::select(vec![
            "",
            "high",
            "normal",
            "low",
            "HIGH",
            "text",
            "input",
            "image",
            "audio",
            "video",
            "prompt",
            "data:",
            "data:image/png;base64,",
            "data:,",
            "====",
            "AAAA",
            "\u{0}",
            "\u{FEFF}",
            "\u{10FFFF}",
            "%00",
        ])
        .prop_map(str::to_owned),
        (1usize..70_000).prop_map(|n| "A".repeat(n)),
    ]
}

fn json_leaf() -> impl Strategy<Value = Json> {
    prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        number().prop_map(Json::Number),
        text().prop_map(Json::Text),
    ]
}

/// Field names: the ones the bodies and models use, and others.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "input", "priority", "text", "group", "image", "video", "audio", "prompt", "steps",
            "seed", "width", "height", "guidance", "",
        ])
        .prop_map(str::to_owned),
        text(),
    ]
}

/// Any JSON, nested at most a few levels, each array or object at most 6 long.
fn json() -> impl Strategy<Value = Json> {
    json_leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            prop::collection::vec((field_name(), inner), 0..6).prop_map(Json::Object),
        ]
    })
}

// ---- The models and their valid inputs ----

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A valid input for each model the agent serves (small, so that one accepted runs fast).
fn valid_inputs() -> Vec<(&'static str, Value)> {
    let samples: Vec<f32> = (0..1600).map(|i| (i as f32 * 0.1).sin() * 0.3).collect();
    let wav = encode_wav_mono_i16(&samples, 16_000).unwrap();
    let png = small_png();
    vec![
        (ECHO, json!({"text": "hello", "group": "a"})),
        (ESRGAN, json!({"image": b64(&png)})),
        (
            VIDEO,
            json!({"video": format!("data:image/png;base64,{}", b64(&png))}),
        ),
        (VAD, json!({"audio": b64(&wav)})),
        (
            SD,
            json!({"prompt": "a lighthouse", "steps": 1, "seed": 7, "width": 16, "height": 16}),
        ),
    ]
}

// ---- Bodies ----

/// A change to a valid job body's JSON.
#[derive(Debug, Clone)]
enum Change {
    /// Drop the input field at this index (wrapping).
    DropInput(usize),
    /// Give the input field at this index (wrapping) another value.
    ReplaceInput(usize, Json),
    /// Add a field to the input.
    AddInput(String, Json),
    /// Give the input field at this index (wrapping) another text.
    ReplaceText(usize, String),
    /// Give the whole input another value.
    Input(Json),
    /// Set the body's priority.
    Priority(Json),
    /// Add a field to the body.
    Add(String, Json),
    /// Drop the `input` field.
    DropBody,
}

/// A change to a serialized body's bytes.
#[derive(Debug, Clone)]
enum Bytes {
    Flip { at: usize, mask: u8 },
    Truncate { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Splice { from: usize, len: usize, to: usize },
}

/// How deep nesting is opened.
#[derive(Debug, Clone, Copy)]
enum Nest {
    Array,
    Object,
}

/// A body to send.
#[derive(Debug, Clone)]
enum Body {
    /// The model's valid body.
    Valid,
    /// Any JSON as the whole body.
    Random(Json),
    /// `{"input": any, …}` with any extra fields.
    Shaped(Json, Vec<(String, Json)>),
    /// The model's valid body, changed.
    Changed(Vec<Change>),
    /// The model's valid body with its bytes changed.
    Mangled(Vec<Bytes>),
    /// `depth` openings as the input's field (closed or not), or as the whole body.
    Deep {
        nest: Nest,
        depth: usize,
        closed: bool,
        whole: bool,
    },
    /// Raw bytes.
    Raw(Vec<u8>),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        any::<usize>().prop_map(Change::DropInput),
        (any::<usize>(), json()).prop_map(|(i, v)| Change::ReplaceInput(i, v)),
        (any::<usize>(), text()).prop_map(|(i, v)| Change::ReplaceText(i, v)),
        (field_name(), json()).prop_map(|(k, v)| Change::AddInput(k, v)),
        json().prop_map(Change::Input),
        prop_oneof![
            prop::sample::select(vec!["high", "normal", "low"])
                .prop_map(|p| Json::Text(p.to_owned())),
            json(),
            text().prop_map(Json::Text)
        ]
        .prop_map(Change::Priority),
        (field_name(), json()).prop_map(|(k, v)| Change::Add(k, v)),
        Just(Change::DropBody),
    ]
}

fn byte_change() -> impl Strategy<Value = Bytes> {
    let at = any::<usize>();
    prop_oneof![
        (at, 1..=255u8).prop_map(|(at, mask)| Bytes::Flip { at, mask }),
        at.prop_map(|at| Bytes::Truncate { at }),
        (at, prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Bytes::Insert { at, bytes }),
        (at, 1..64usize, at).prop_map(|(from, len, to)| Bytes::Splice { from, len, to }),
    ]
}

fn body() -> impl Strategy<Value = Body> {
    let depth = prop_oneof![
        Just(126usize),
        Just(127),
        Just(128),
        Just(129),
        Just(10_000),
        Just(100_000),
        1usize..300,
    ];
    prop_oneof![
        1 => Just(Body::Valid),
        1 => json().prop_map(Body::Random),
        1 => (json(), prop::collection::vec((field_name(), json()), 0..3))
            .prop_map(|(input, extra)| Body::Shaped(input, extra)),
        3 => prop::collection::vec(change(), 1..4).prop_map(Body::Changed),
        2 => prop::collection::vec(byte_change(), 1..4).prop_map(Body::Mangled),
        1 => (
            prop_oneof![Just(Nest::Array), Just(Nest::Object)],
            depth,
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(nest, depth, closed, whole)| Body::Deep {
                nest,
                depth,
                closed,
                whole
            }),
        1 => prop::collection::vec(any::<u8>(), 0..256).prop_map(Body::Raw),
    ]
}

fn wrap(at: usize, len: usize) -> usize {
    at % len.max(1)
}

/// The bytes of `body` for a model whose valid input is `valid`.
fn render(body: &Body, valid: &Value) -> Vec<u8> {
    let valid_body = || Json::from_value(&json!({"input": valid, "priority": "normal"}));
    match body {
        Body::Valid => valid_body().text().into_bytes(),
        Body::Random(value) => value.text().into_bytes(),
        Body::Shaped(input, extra) => {
            let mut fields = vec![("input".to_owned(), input.clone())];
            fields.extend(extra.iter().cloned());
            Json::Object(fields).text().into_bytes()
        }
        Body::Changed(changes) => {
            let Json::Object(mut fields) = valid_body() else {
                unreachable!("a job body is an object")
            };
            for change in changes {
                let input = fields.iter_mut().find(|(k, _)| k == "input");
                match (change, input) {
                    (Change::DropInput(i), Some((_, Json::Object(inner)))) if !inner.is_empty() => {
                        inner.remove(wrap(*i, inner.len()));
                    }
                    (Change::ReplaceInput(i, v), Some((_, Json::Object(inner))))
                        if !inner.is_empty() =>
                    {
                        let at = wrap(*i, inner.len());
                        inner[at].1 = v.clone();
                    }
                    (Change::ReplaceText(i, v), Some((_, Json::Object(inner))))
                        if !inner.is_empty() =>
                    {
                        let at = wrap(*i, inner.len());
                        inner[at].1 = Json::Text(v.clone());
                    }
                    (Change::AddInput(k, v), Some((_, Json::Object(inner)))) => {
                        inner.push((k.clone(), v.clone()));
                    }
                    (Change::Input(v), Some((_, old))) => *old = v.clone(),
                    (Change::Priority(v), _) => {
                        fields.retain(|(k, _)| k != "priority");
                        fields.push(("priority".to_owned(), v.clone()));
                    }
                    (Change::Add(k, v), _) => fields.push((k.clone(), v.clone())),
                    (Change::DropBody, _) => fields.retain(|(k, _)| k != "input"),
                    _ => {}
                }
            }
            Json::Object(fields).text().into_bytes()
        }
        Body::Mangled(changes) => {
            let mut bytes = valid_body().text().into_bytes();
            for change in changes {
                let len = bytes.len();
                match change {
                    Bytes::Flip { at, mask } => {
                        if let Some(b) = bytes.get_mut(wrap(*at, len)) {
                            *b ^= mask;
                        }
                    }
                    Bytes::Truncate { at } => bytes.truncate(wrap(*at, len)),
                    Bytes::Insert { at, bytes: new } => {
                        let at = at % (len + 1);
                        bytes.splice(at..at, new.iter().copied());
                    }
                    Bytes::Splice { from, len: n, to } => {
                        let from = wrap(*from, len);
                        let piece: Vec<u8> = bytes.iter().skip(from).take(*n).copied().collect();
                        let to = to % (bytes.len() + 1);
                        bytes.splice(to..to, piece);
                    }
                }
            }
            bytes
        }
        Body::Deep {
            nest,
            depth,
            closed,
            whole,
        } => {
            let (open, close) = match nest {
                Nest::Array => ("[", "]"),
                Nest::Object => ("{\"a\":", "}"),
            };
            let mut inner = open.repeat(*depth);
            inner.push('1');
            if *closed {
                inner.push_str(&close.repeat(*depth));
            }
            let text = if *whole {
                inner
            } else {
                format!("{{\"input\":{{\"text\":{inner}}}}}")
            };
            text.into_bytes()
        }
        Body::Raw(bytes) => bytes.clone(),
    }
}

// ---- Headers ----

/// A header value: mostly a good one, else an odd one, any visible bytes (maybe not UTF-8)
/// or none.
fn header_value(
    good: &'static [&'static str],
    odd: &'static [&'static str],
) -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        16 => prop::sample::select(good).prop_map(|v| Some(v.as_bytes().to_vec())),
        1 => prop::sample::select(odd).prop_map(|v| Some(v.as_bytes().to_vec())),
        1 => Just(None),
        1 => prop::collection::vec(
            prop_oneof![0x20..0x7Fu8, 0x80..=0xFFu8, Just(b'\t')],
            0..300
        )
        .prop_map(Some),
        1 => "[ -~]{0,80}".prop_map(|s| Some(s.into_bytes())),
    ]
}

/// An optional header: mostly absent, else a likely or odd value.
fn optional_header(likely: &'static [&'static str]) -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        12 => Just(None),
        4 => prop::sample::select(likely).prop_map(|v| Some(v.as_bytes().to_vec())),
        1 => prop::collection::vec(
            prop_oneof![0x20..0x7Fu8, 0x80..=0xFFu8],
            0..300
        )
        .prop_map(Some),
        1 => "[ -~]{0,300}".prop_map(|s| Some(s.into_bytes())),
    ]
}

/// The headers of a submission, `None` where absent.
#[derive(Debug, Clone)]
struct Headers {
    tenant: Option<Vec<u8>>,
    content_type: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    max_jobs: Option<Vec<u8>>,
    elsewhere: Option<Vec<u8>>,
}

fn submission_headers() -> impl Strategy<Value = Headers> {
    const NUMBERS: &[&str] = &[
        "0",
        "1",
        "2",
        "1000",
        "-1",
        "+3",
        " 5",
        "5 ",
        "1.5",
        "1e3",
        "4294967295",
        "4294967296",
        "99999999999999999999999",
        "",
        "ten",
    ];
    (
        header_value(
            &["acme", "globex", "a", "a-1"],
            &[
                "",
                "Acme",
                "1abc",
                "a_b",
                "acme ",
                "-a",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            ],
        ),
        header_value(
            &[
                "application/json",
                "application/json; charset=utf-8",
                "APPLICATION/JSON",
            ],
            &["text/plain", "application/json-seq", "application", ";", ""],
        ),
        optional_header(&["k1", "k2", "k3", "key with spaces", " ", "é"]),
        optional_header(NUMBERS),
        optional_header(NUMBERS),
    )
        .prop_map(|(tenant, content_type, key, max_jobs, elsewhere)| Headers {
            tenant,
            content_type,
            key,
            max_jobs,
            elsewhere,
        })
}

// ---- A submission and what the agent must answer ----

#[derive(Debug, Clone)]
struct Submission {
    run: bool,
    model: usize,
    body: Body,
    headers: Headers,
}

fn submission(models: usize) -> impl Strategy<Value = Submission> {
    (any::<bool>(), 0..models + 1, body(), submission_headers()).prop_map(
        |(run, model, body, headers)| Submission {
            run,
            model,
            body,
            headers,
        },
    )
}

/// The agent's default largest body (`max_body_bytes`).
const MAX_BODY_BYTES: usize = 32 << 20;

/// The tiniest JSON values.
const TINY: [&str; 4] = ["0", "[]", "{}", "\"\""];

/// A valid job body for the test model, just under `limit` bytes, holding millions of
/// `tiny` values beside its text.
fn wide_body(tiny: &str, limit: usize) -> Vec<u8> {
    let mut body = br#"{"input":{"text":"x","n":["#.to_vec();
    let item = format!("{tiny},");
    while body.len() + item.len() + 8 < limit {
        body.extend_from_slice(item.as_bytes());
    }
    body.extend_from_slice(b"0]}}");
    body
}

/// Jobs the agent has created: one directory each under `<data_dir>/jobs`.
fn jobs(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("jobs")).map_or(0, |d| d.count())
}

/// Tallies of what the agent answered.
#[derive(Debug, Default)]
struct Tally {
    by_status: std::collections::BTreeMap<u16, u32>,
    by_error: std::collections::BTreeMap<String, u32>,
}

async fn send(
    agent: &Agent,
    data_dir: &Path,
    inputs: &[(&'static str, Value)],
    s: &Submission,
    tally: &std::sync::Mutex<Tally>,
) -> Result<(), TestCaseError> {
    let (model, valid) = inputs
        .get(s.model)
        .map_or((UNKNOWN, &inputs[0].1), |(m, v)| (*m, v));
    let route = if s.run { "run" } else { "queue" };
    let bytes = render(&s.body, valid);
    let mut request = agent
        .http
        .post(format!("{}/v1/{route}/{model}", agent.base))
        .header(headers::EDGE_TOKEN, EDGE_TOKEN)
        .body(bytes);
    let named = [
        (headers::TENANT, &s.headers.tenant),
        ("content-type", &s.headers.content_type),
        (headers::IDEMPOTENCY_KEY, &s.headers.key),
        (headers::TENANT_MAX_JOBS, &s.headers.max_jobs),
        (headers::TENANT_JOBS_ELSEWHERE, &s.headers.elsewhere),
    ];
    for (name, value) in named {
        // A value HTTP cannot carry (a control character) is not sent at all.
        if let Some(value) = value
            .as_deref()
            .and_then(|v| HeaderValue::from_bytes(v).ok())
        {
            request = request.header(HeaderName::from_static(name), value);
        }
    }
    let before = jobs(data_dir);
    let response = request.send().await;
    let response = response.map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
    let status = response.status().as_u16();
    let refused = response
        .headers()
        .get(headers::REFUSED)
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let region = response.headers().get(headers::REGION).cloned();
    let text = response
        .bytes()
        .await
        .map_err(|e| TestCaseError::fail(format!("no body: {e}")))?;
    let after = jobs(data_dir);
    tally
        .lock()
        .unwrap()
        .by_status
        .entry(status)
        .and_modify(|n| *n += 1)
        .or_insert(1);
    let shown = String::from_utf8_lossy(&text[..text.len().min(400)]).into_owned();
    prop_assert!(region.is_some(), "{status} without x-meridian-region");
    match status {
        200..=299 => {
            let body: Value = serde_json::from_slice(&text)
                .map_err(|e| TestCaseError::fail(format!("{status} not JSON: {e}: {shown}")))?;
            prop_assert!(body["request_id"].is_string(), "{status}: {shown}");
            prop_assert_eq!(status, if s.run { 200 } else { 202 }, "{}", shown);
            let expected = if s.headers.key.is_some() {
                before..=before + 1
            } else {
                before + 1..=before + 1
            };
            prop_assert!(
                expected.contains(&after),
                "{status}: {before} jobs before, {after} after"
            );
        }
        400..=499 | 503 => {
            let body: ErrorBody = serde_json::from_slice(&text).map_err(|e| {
                TestCaseError::fail(format!("{status} without an error body: {e}: {shown}"))
            })?;
            prop_assert!(!body.error.kind.is_empty() && !body.error.message.is_empty());
            *tally
                .lock()
                .unwrap()
                .by_error
                .entry(body.error.kind.clone())
                .or_default() += 1;
            if status == 503 {
                prop_assert_eq!(body.error.kind.as_str(), "refused", "{}", shown);
                prop_assert!(refused.is_some(), "503 without x-meridian-refused: {shown}");
                prop_assert_eq!(&body.error.reason, &refused, "{}", shown);
            }
            prop_assert_eq!(before, after, "{} created a job: {}", status, shown);
        }
        _ => prop_assert!(false, "{status}: {shown}"),
    }
    Ok(())
}

/// Starts an agent serving every model above (real weights for ESRGAN, video and VAD; the
/// pipeline test model for tiny-sd; the in-code test model).
async fn start(dir: &Path) -> Agent {
    let esrgan = support::fetch_models("esrgan-slim");
    let vad = support::fetch_models("silero-vad");
    let models = format!(
        "[[models]]\nid = \"{ECHO}\"\nweights_dir = \"unused\"\n\
         [[models]]\nid = \"{ESRGAN}\"\nweights_dir = \"{e}\"\n\
         [[models]]\nid = \"{VIDEO}\"\nweights_dir = \"{e}\"\n\
         [[models]]\nid = \"{VAD}\"\nweights_dir = \"{v}\"\n\
         [[models]]\nid = \"{SD}\"\npipeline_test = true\n",
        e = esrgan.display(),
        v = vad.display()
    );
    let prices = [
        (ECHO, "image", 0.25),
        (ESRGAN, "megapixel", 0.01),
        (VIDEO, "megapixel", 0.01),
        (VAD, "audio_second", 0.001),
        (SD, "megapixel_step", 0.001),
    ];
    let config = config(dir, &models, "", &prices);
    let mut builtin = config.clone();
    builtin.models.retain(|m| m.id.as_str() != ECHO);
    let mut models: Vec<Arc<dyn Model>> = region_agent::serving::builtin::build(&builtin).unwrap();
    models.push(Arc::new(TestModel::new(ECHO)));
    Agent::start(config, models).await
}

#[test]
fn random_and_mutated_bodies_and_headers_never_get_a_5xx_nor_create_a_job_when_refused() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent = runtime.block_on(start(dir.path()));
    let inputs = valid_inputs();

    // Every valid body is accepted (so the models are loaded before memory is measured,
    // and the changes above start from bodies the agent takes).
    for (model, input) in &inputs {
        runtime.block_on(async {
            let response = agent
                .call(Method::POST, &format!("/v1/run/{model}"))
                .json(&json!({ "input": input }))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let text = response.text().await.unwrap();
            assert_eq!(status, 200, "{model}: {text}");
            assert_eq!(
                serde_json::from_str::<Value>(&text).unwrap()["status"],
                "COMPLETED",
                "{model}: {text}"
            );
        });
    }
    let before = peak_rss();

    let tally = std::sync::Mutex::new(Tally::default());
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    runner
        .run(&submission(inputs.len()), |s| {
            runtime.block_on(send(&agent, dir.path(), &inputs, &s, &tally))
        })
        .unwrap();

    let (health, body) = runtime.block_on(agent.get("/healthz"));
    assert_eq!(health, 200, "{body}");
    let grown = peak_rss().saturating_sub(before);
    let tally = tally.into_inner().unwrap();
    println!(
        "{} submissions, answered {:?} (errors {:?}); peak RSS grew by {:.1} MiB",
        cases(),
        tally.by_status,
        tally.by_error,
        grown as f64 / f64::from(1 << 20)
    );
    // Bodies here are at most ~140 KiB (a 70 000-character string written twice over), so
    // the parsed JSON, the job's stored input and the answers take a few MiB; the models
    // were loaded, and ran once on inputs of the sizes accepted here, before `before`.
    assert!(grown < 64 << 20, "peak RSS grew by {grown} bytes");

    // The widest bodies under the body limit: millions of tiny values, each of which would
    // take tens of bytes parsed. Refused before parsing, they take no more than their bytes.
    for tiny in TINY {
        let wide = wide_body(tiny, MAX_BODY_BYTES);
        runtime.block_on(async {
            let jobs_before = jobs(dir.path());
            let response = agent
                .call(Method::POST, &format!("/v1/queue/{ECHO}"))
                .header("content-type", "application/json")
                .body(wide)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: ErrorBody = response.json().await.unwrap();
            assert_eq!(status, 400, "{body:?}");
            assert_eq!(jobs(dir.path()), jobs_before);
        });
    }

    let wide_grown = peak_rss().saturating_sub(before);
    println!(
        "bodies of {} MiB of tiny values: peak RSS grew by {:.1} MiB in all",
        MAX_BODY_BYTES >> 20,
        wide_grown as f64 / f64::from(1 << 20)
    );
    // This process holds such a body twice (the client's copy and the agent's, read into a
    // buffer that grows by doubling: up to twice its size), never its parsed form (about
    // twenty times its size: 679 MiB grown when it was parsed).
    assert!(
        wide_grown < 3 * MAX_BODY_BYTES as u64 + (32 << 20),
        "peak RSS grew by {wide_grown} bytes"
    );
    assert_eq!(runtime.block_on(agent.get("/healthz")).0, 200);
    runtime.block_on(agent.stop());
}
