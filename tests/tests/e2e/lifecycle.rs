//! The queue lifecycle through the edge: submit, status with position, result, output file,
//! cancel — and another tenant's key gets 404 on the same request id.

use tests::{Backend, RegionDef, Stack, eventually};

use crate::{DUBLIN, LONDON_IP, NEW_YORK, TENANTS};

/// Dublin with a single reserved slot, so that jobs wait in its queue.
const ONE_SLOT: RegionDef = RegionDef {
    reserved: 1,
    ..DUBLIN
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queued_job_goes_through_its_lifecycle_visible_only_to_its_tenant() {
    let stack = Stack::start(Backend::Embedded, &[ONE_SLOT], TENANTS, NEW_YORK).await;
    let acme = stack.key("acme").to_owned();
    let euro = stack.key("euro").to_owned();

    // Several jobs on one slot: the last waits behind the others.
    let mut ids = Vec::new();
    for _ in 0..6 {
        let a = stack
            .post(
                "/v1/queue/meridian/esrgan-x2",
                &acme,
                Some(LONDON_IP),
                serde_json::json!({"input": {"image": tests::small_png_base64(96)}}).to_string(),
            )
            .await;
        assert_eq!(a.status, 202, "{}", a.body);
        let id = a.body["request_id"].as_str().unwrap().to_owned();
        assert!(id.starts_with("eu-west."), "{id}");
        for url in ["status_url", "response_url", "cancel_url"] {
            assert!(
                a.body[url].as_str().is_some_and(|u| u.contains(&id)),
                "{}",
                a.body
            );
        }
        ids.push(id);
    }
    let last = ids.pop().unwrap();
    let status = stack
        .get(&format!("/v1/requests/{last}/status"), &acme)
        .await;
    assert_eq!(status.status, 200, "{}", status.body);
    assert_eq!(status.body["status"], "IN_QUEUE", "{}", status.body);
    assert!(
        status.body["queue_position"]
            .as_u64()
            .is_some_and(|p| p >= 1),
        "{}",
        status.body
    );

    // Cancelled while it waits.
    let cancelled = stack
        .put(&format!("/v1/requests/{last}/cancel"), &acme)
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.body["status"], "CANCELLED", "{}", cancelled.body);

    // The first completes: its result and its output file come back through the edge.
    let first = ids[0].clone();
    eventually("the first job completes", || async {
        let s = stack
            .get(&format!("/v1/requests/{first}/status"), &acme)
            .await;
        s.body["status"] == "COMPLETED"
    })
    .await;
    let result = stack.get(&format!("/v1/requests/{first}"), &acme).await;
    assert_eq!(result.status, 200, "{}", result.body);
    assert_eq!(result.region.as_deref(), Some("eu-west"));
    // The file's link is absolute, under the edge, and opens without a key.
    let link = result.body["output"]["image"]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(link.starts_with(stack.edge_base()), "{link}");
    let file = stack.http.get(&link).send().await.unwrap();
    assert_eq!(file.status(), 200);
    let png = file.bytes().await.unwrap();
    let image = image::load_from_memory(&png).unwrap();
    assert_eq!((image.width(), image.height()), (192, 192));

    // Another tenant's key: 404 on the same id, for every call, and nothing cancelled.
    for path in [
        format!("/v1/requests/{first}/status"),
        format!("/v1/requests/{first}"),
        format!("/v1/requests/{first}/files/image.png"),
    ] {
        let a = stack.get(&path, &euro).await;
        assert_eq!(a.status, 404, "{path}: {}", a.body);
    }
    let a = stack
        .put(&format!("/v1/requests/{}/cancel", ids[4]), &euro)
        .await;
    assert_eq!(a.status, 404, "{}", a.body);
}
