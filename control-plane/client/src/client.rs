//! [`ControlPlane`]: typed calls of the control plane's HTTP API with one bearer token.
//!
//! Which calls succeed depends on the token: an edge's token reads snapshots, an agent's
//! registers, sends heartbeats and usage, the admin's manages the catalog and keys.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::wire::{
    AgentCatalog, AgentReport, CreatedKey, ErrorBody, ErrorInfo, KeyView, Listed, NewKeyRequest,
    Registration, Snapshot, SpendReport, UsageBatch, UsageReceipt, UsageRecordPage, UsageReport,
};

/// What a usage report covers and how it is grouped; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UsageQuery {
    /// Only this tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Only this model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Only this region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// First UTC day, `YYYY-MM-DD`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Last UTC day, `YYYY-MM-DD` (included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Comma list of `tenant`, `model`, `region`, `day` (default all four).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
}

/// Which per-job usage records to read, from the region that keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecordQuery {
    /// The region whose agent keeps the records (required).
    pub region: String,
    /// Only this tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Only this model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Only jobs finished at or after this time, Unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<u64>,
    /// Only jobs finished before this time, Unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_ms: Option<u64>,
    /// Where the previous page ended (its `next`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Most records in the page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The control plane answered with an error.
    #[error("control plane answered {status}: {} ({})", .error.message, .error.kind)]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error body.
        error: ErrorInfo,
    },
    /// The control plane could not be reached, or the answer could not be read.
    #[error("control plane unreachable: {0}")]
    Transport(#[from] reqwest::Error),
}

impl ClientError {
    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            Self::Transport(_) => None,
        }
    }

    /// The error's `type` (e.g. `conflict`, `not_registered`), for an error answer.
    pub fn kind(&self) -> Option<&str> {
        match self {
            Self::Api { error, .. } => Some(&error.kind),
            Self::Transport(_) => None,
        }
    }
}

/// A client result.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A record with the store revision it was last written at (its `ETag`).
#[derive(Debug, Clone, PartialEq)]
pub struct Revisioned<T> {
    /// The record.
    pub record: T,
    /// Its mod revision, for `If-Match`.
    pub revision: i64,
}

/// The control plane at one base URL, called with one token.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// Extra time a long poll's HTTP request gets over the wait it asks for.
const POLL_SLACK: Duration = Duration::from_secs(10);

impl ControlPlane {
    /// A client of the control plane at `base` (e.g. `http://10.0.0.2:7070`) using `token`;
    /// `timeout` bounds each call (long polls get their wait on top).
    pub fn new(base: &str, token: &str, timeout: Duration) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .build()?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http,
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    // --- edges ---

    /// The whole current snapshot.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        json(
            self.request(Method::GET, "/edge/v1/snapshot")
                .send()
                .await?,
        )
        .await
    }

    /// The next snapshot after revision `after`, waiting up to `wait` for a change;
    /// `None` when nothing changed in that time.
    pub async fn poll_snapshot(&self, after: i64, wait: Duration) -> Result<Option<Snapshot>> {
        let response = self
            .request(
                Method::GET,
                &format!("/edge/v1/snapshot?after={after}&wait={}", wait.as_secs()),
            )
            .timeout(wait + POLL_SLACK)
            .send()
            .await?;
        if response.status() == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        json(response).await.map(Some)
    }

    // --- region agents ---

    /// Registers region `region`'s agent with its first report.
    pub async fn register(&self, region: &str, report: &AgentReport) -> Result<Registration> {
        let path = format!("/agent/v1/regions/{region}/register");
        json(
            self.request(Method::POST, &path)
                .json(report)
                .send()
                .await?,
        )
        .await
    }

    /// Sends a heartbeat; an error of kind `not_registered` means: register again.
    pub async fn heartbeat(&self, region: &str, report: &AgentReport) -> Result<Registration> {
        let path = format!("/agent/v1/regions/{region}/heartbeat");
        json(
            self.request(Method::POST, &path)
                .json(report)
                .send()
                .await?,
        )
        .await
    }

    /// Removes the live status of `region`'s agent `instance` at once (an agent shutting
    /// down); an empty `instance` is the region's only agent.
    pub async fn deregister(&self, region: &str, instance: &str) -> Result<()> {
        let path = format!("/agent/v1/regions/{region}/deregister");
        let mut request = self.request(Method::POST, &path);
        if !instance.is_empty() {
            request = request.query(&[("instance", instance)]);
        }
        empty(request.send().await?).await
    }

    /// The agent catalog of `region`: its pools and prices as in force now.
    pub async fn agent_catalog(&self, region: &str) -> Result<AgentCatalog> {
        let path = format!("/agent/v1/regions/{region}/catalog");
        json(self.request(Method::GET, &path).send().await?).await
    }

    /// Sends a numbered usage batch; safe to resend (the control plane applies each
    /// sequence number once).
    pub async fn report_usage(&self, batch: &UsageBatch) -> Result<UsageReceipt> {
        json(
            self.request(Method::POST, "/agent/v1/usage")
                .json(batch)
                .send()
                .await?,
        )
        .await
    }

    // --- admin ---

    /// Every record of a collection (`jurisdictions`, `regions`, `models`, `tenants`).
    pub async fn list<T: DeserializeOwned>(&self, collection: &str) -> Result<Listed<T>> {
        let path = format!("/admin/v1/{collection}");
        json(self.request(Method::GET, &path).send().await?).await
    }

    /// One record and its revision; `None` when it does not exist.
    pub async fn get<T: DeserializeOwned>(
        &self,
        collection: &str,
        id: &str,
    ) -> Result<Option<Revisioned<T>>> {
        let path = format!("/admin/v1/{collection}/{id}");
        let response = self.request(Method::GET, &path).send().await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let revision = etag(&response);
        let record = json(response).await?;
        Ok(Some(Revisioned { record, revision }))
    }

    /// Creates or replaces a record; with `if_match`, only if its revision is still that.
    /// Returns the new revision.
    pub async fn put<T: Serialize>(
        &self,
        collection: &str,
        id: &str,
        record: &T,
        if_match: Option<i64>,
    ) -> Result<i64> {
        let path = format!("/admin/v1/{collection}/{id}");
        let mut request = self.request(Method::PUT, &path).json(record);
        if let Some(revision) = if_match {
            request = request.header("If-Match", format!("\"{revision}\""));
        }
        let response = ok(request.send().await?).await?;
        Ok(etag(&response))
    }

    /// Deletes a record; with `if_match`, only if its revision is still that.
    pub async fn delete(&self, collection: &str, id: &str, if_match: Option<i64>) -> Result<()> {
        let path = format!("/admin/v1/{collection}/{id}");
        let mut request = self.request(Method::DELETE, &path);
        if let Some(revision) = if_match {
            request = request.header("If-Match", format!("\"{revision}\""));
        }
        empty(request.send().await?).await
    }

    /// Creates an API key for `tenant`; the answer's `key` is shown this once.
    pub async fn create_key(&self, tenant: &str, label: Option<String>) -> Result<CreatedKey> {
        let path = format!("/admin/v1/tenants/{tenant}/keys");
        let body = NewKeyRequest { label };
        json(self.request(Method::POST, &path).json(&body).send().await?).await
    }

    /// The tenant's keys (never their secrets).
    pub async fn keys(&self, tenant: &str) -> Result<Listed<KeyView>> {
        let path = format!("/admin/v1/tenants/{tenant}/keys");
        json(self.request(Method::GET, &path).send().await?).await
    }

    /// Usage totals per group over a range of UTC days.
    pub async fn usage(&self, query: &UsageQuery) -> Result<UsageReport> {
        json(
            self.request(Method::GET, "/admin/v1/usage")
                .query(query)
                .send()
                .await?,
        )
        .await
    }

    /// One page of the per-job usage records a region keeps.
    pub async fn usage_records(&self, query: &RecordQuery) -> Result<UsageRecordPage> {
        json(
            self.request(Method::GET, "/admin/v1/usage/records")
                .query(query)
                .send()
                .await?,
        )
        .await
    }

    /// A tenant's spend in a UTC month (`YYYY-MM`; `None`: the current month).
    pub async fn spend(&self, tenant: &str, month: Option<&str>) -> Result<SpendReport> {
        let mut request = self.request(Method::GET, &format!("/admin/v1/tenants/{tenant}/spend"));
        if let Some(month) = month {
            request = request.query(&[("month", month)]);
        }
        json(request.send().await?).await
    }

    /// Revokes one of the tenant's keys.
    pub async fn revoke_key(&self, tenant: &str, id: &str) -> Result<KeyView> {
        let path = format!("/admin/v1/tenants/{tenant}/keys/{id}");
        json(self.request(Method::DELETE, &path).send().await?).await
    }
}

/// The response if it is a success, else its error.
async fn ok(response: Response) -> Result<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await?;
    let error = serde_json::from_str::<ErrorBody>(&text)
        .map(|b| b.error)
        .unwrap_or_else(|_| ErrorBody::new("unknown", text).error);
    Err(ClientError::Api {
        status: status.as_u16(),
        error,
    })
}

async fn json<T: DeserializeOwned>(response: Response) -> Result<T> {
    Ok(ok(response).await?.json().await?)
}

async fn empty(response: Response) -> Result<()> {
    ok(response).await.map(drop)
}

fn etag(response: &Response) -> i64 {
    response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_matches('"').parse().ok())
        .unwrap_or(0)
}
