//! The body of each surface's webhook: the native result, fal's `{request_id,
//! gateway_request_id, status, payload, error}` and Replicate's prediction, with file links
//! signed under the public URL the job was submitted under.

use serde_json::{Value, json};

use super::Event;
use crate::api::compat::{fal, replicate};
use crate::api::links::{FileLinks, now_s};
use crate::jobs::{JobRecord, Webhook, WebhookStyle, now_ms};

/// The body of `event` of `record` for `webhook`.
pub(super) fn body(
    links: &FileLinks,
    record: &JobRecord,
    webhook: &Webhook,
    event: Event,
) -> Value {
    let public = webhook.public_url.as_deref();
    match webhook.style {
        WebhookStyle::Native => {
            let mut body = record.result_json(now_ms());
            links.sign_output(&mut body["output"], public, &record.id, now_s());
            body["event"] = json!(event);
            body
        }
        WebhookStyle::Fal => match fal::failure_of(record) {
            None => json!({
                "request_id": record.id, "gateway_request_id": record.id,
                "status": "OK", "payload": fal::output(links, public, record), "error": null,
            }),
            Some((kind, message)) => json!({
                "request_id": record.id, "gateway_request_id": record.id,
                "status": "ERROR", "payload": {"detail": message, "error_type": kind},
                "error": message,
            }),
        },
        WebhookStyle::Replicate => replicate::prediction(links, public, record),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{JobState, Priority};

    fn record(state: JobState) -> JobRecord {
        let id = "eu-west.0123456789abcdef0123456789abcdef";
        serde_json::from_value(json!({
            "id": id, "tenant": "acme", "model": "meridian/esrgan-x2", "region": "eu-west",
            "priority": Priority::Normal, "seq": 1, "state": state, "queued_at_ms": 1000,
            "started_at_ms": 2000, "finished_at_ms": 3500,
            "output": {"image": {"name": "image.png", "content_type": "image/png",
                       "url": format!("/v1/requests/{id}/files/image.png"), "bytes": 9,
                       "width": 4, "height": 2}},
        }))
        .unwrap()
    }

    fn webhook(style: WebhookStyle) -> Webhook {
        Webhook {
            url: "https://hooks.example/in".into(),
            style,
            on_start: false,
            public_url: Some("https://edge.example".into()),
        }
    }

    #[test]
    fn each_surface_gets_its_shape_with_links_under_the_public_url() {
        let links = FileLinks::with_key([2; 32]);
        let done = record(JobState::Completed);
        let fal = body(&links, &done, &webhook(WebhookStyle::Fal), Event::Completed);
        assert_eq!(fal["status"], "OK");
        assert_eq!(fal["request_id"], fal["gateway_request_id"]);
        assert_eq!(fal["payload"]["image"]["width"], 4);
        let url = fal["payload"]["image"]["url"].as_str().unwrap();
        assert!(
            url.starts_with("https://edge.example/v1/requests/"),
            "{url}"
        );
        let replicate = body(
            &links,
            &done,
            &webhook(WebhookStyle::Replicate),
            Event::Completed,
        );
        assert_eq!(replicate["status"], "succeeded");
        assert!(
            replicate["output"]["image"]
                .as_str()
                .unwrap()
                .contains("signature=")
        );
        let native = body(
            &links,
            &done,
            &webhook(WebhookStyle::Native),
            Event::Completed,
        );
        assert_eq!(native["status"], "COMPLETED");
        assert_eq!(native["event"], "completed");
        let cancelled = record(JobState::Cancelled);
        let fal = body(
            &links,
            &cancelled,
            &webhook(WebhookStyle::Fal),
            Event::Completed,
        );
        assert_eq!(fal["status"], "ERROR");
        assert_eq!(fal["payload"]["error_type"], "request_cancelled");
    }
}
