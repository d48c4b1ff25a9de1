//! A tenant limited to the EU is served in the EU — failover included — and refused with a
//! clear error, never served elsewhere, when no EU region can take it.

use tests::{Backend, Stack};

use crate::{ASHBURN, DUBLIN, FRANKFURT, LONDON_IP, NEW_YORK, SEATTLE_IP, TENANTS};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_eu_tenant_is_served_only_in_the_eu_also_when_its_regions_die() {
    let mut stack = Stack::start(
        Backend::Etcd,
        &[DUBLIN, FRANKFURT, ASHBURN],
        TENANTS,
        NEW_YORK,
    )
    .await;
    let euro = stack.key("euro").to_owned();
    let acme = stack.key("acme").to_owned();

    let a = stack.submit("run", &euro, Some(LONDON_IP)).await;
    assert_eq!(
        (a.status, a.region.as_deref()),
        (200, Some("eu-west")),
        "{}",
        a.body
    );
    // A client near Seattle is still served in the EU; an unrestricted one is not.
    let a = stack.submit("run", &euro, Some(SEATTLE_IP)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        matches!(a.region.as_deref(), Some("eu-west" | "eu-central")),
        "{:?}",
        a.region
    );
    let a = stack.submit("run", &acme, Some(SEATTLE_IP)).await;
    assert_eq!(
        (a.status, a.region.as_deref()),
        (200, Some("us-east")),
        "{}",
        a.body
    );

    // Dublin dies: the next EU region takes over, with no failed request.
    stack.kill_agent("eu-west").await;
    for _ in 0..5 {
        let a = stack.submit("run", &euro, Some(LONDON_IP)).await;
        assert_eq!(
            (a.status, a.region.as_deref()),
            (200, Some("eu-central")),
            "{}",
            a.body
        );
    }

    // Frankfurt dies too: refused with a reason, never sent to the US region that is up.
    stack.kill_agent("eu-central").await;
    for _ in 0..3 {
        let a = stack.submit("run", &euro, Some(LONDON_IP)).await;
        assert_eq!(a.status, 503, "{}", a.body);
        assert_eq!(a.region, None, "served after all: {}", a.body);
        let message = a.body["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "no reason given: {}", a.body);
    }
    let a = stack.submit("run", &acme, Some(LONDON_IP)).await;
    assert_eq!(
        (a.status, a.region.as_deref()),
        (200, Some("us-east")),
        "{}",
        a.body
    );

    // A tenant whose jurisdiction holds no region: 451, saying so.
    let nippon = stack.key("nippon").to_owned();
    let a = stack.submit("run", &nippon, Some(LONDON_IP)).await;
    assert_eq!(a.status, 451, "{}", a.body);
    assert!(a.body["error"]["message"].as_str().is_some(), "{}", a.body);
}
