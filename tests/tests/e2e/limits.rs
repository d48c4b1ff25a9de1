//! 401 for bad and revoked keys, 429 over the rate, 413 for oversize bodies — through the
//! whole stack.

use tests::{Backend, Stack, eventually};

use crate::{DUBLIN, LONDON_IP, NEW_YORK, TENANTS};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_keys_rates_and_sizes_are_refused_with_their_status() {
    let stack = Stack::start(Backend::Embedded, &[DUBLIN], TENANTS, NEW_YORK).await;

    // A key that was never issued, and a malformed one.
    let forged = "mk_live_AAAAAAAAAAAA_0000000000000000000000000000000000000000";
    for key in [forged, "not-a-key"] {
        let a = stack.submit("run", key, Some(LONDON_IP)).await;
        assert_eq!(a.status, 401, "{}", a.body);
    }

    // Over the rate: the second request within five seconds gets 429 with Retry-After.
    let slow = stack.key("slow").to_owned();
    let a = stack.submit("run", &slow, Some(LONDON_IP)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = stack.submit("run", &slow, Some(LONDON_IP)).await;
    assert_eq!(a.status, 429, "{}", a.body);
    let retry_after: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry_after), "Retry-After {retry_after}");

    // A body over the edge's limit (256 KiB here).
    let acme = stack.key("acme").to_owned();
    let huge = format!("{{\"input\":{{\"image\":\"{}\"}}}}", "A".repeat(300 * 1024));
    let a = stack
        .post("/v1/run/meridian/esrgan-x2", &acme, Some(LONDON_IP), huge)
        .await;
    assert_eq!(a.status, 413, "{}", a.body);

    // A revoked key stops working within a moment.
    let a = stack.submit("run", &acme, Some(LONDON_IP)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    stack.revoke_keys("acme").await;
    eventually("the revoked key is refused", || async {
        stack.submit("run", &acme, Some(LONDON_IP)).await.status == 401
    })
    .await;
}
