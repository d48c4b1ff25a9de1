//! With the control plane stopped, the edge keeps serving on its last snapshot — also after
//! its own restart, from the snapshot it kept on disk.

use tests::{Backend, Stack};

use crate::{ASHBURN, DUBLIN, LONDON_IP, NEW_YORK, TENANTS};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_edge_serves_while_the_control_plane_is_down_and_after_its_own_restart() {
    let mut stack = Stack::start(Backend::Embedded, &[DUBLIN, ASHBURN], TENANTS, NEW_YORK).await;
    let acme = stack.key("acme").to_owned();
    let a = stack.submit("run", &acme, Some(LONDON_IP)).await;
    assert_eq!(
        (a.status, a.region.as_deref()),
        (200, Some("eu-west")),
        "{}",
        a.body
    );

    stack.stop_control_plane().await;
    // Longer than the catalog's heartbeat timeout (6 s): the snapshot's reports are old now.
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    let a = stack.submit("run", &acme, Some(LONDON_IP)).await;
    assert_eq!(
        (a.status, a.region.as_deref()),
        (200, Some("eu-west")),
        "{}",
        a.body
    );

    stack.stop_edge().await;
    stack.start_edge().await;
    for _ in 0..3 {
        let a = stack.submit("run", &acme, Some(LONDON_IP)).await;
        assert_eq!(
            (a.status, a.region.as_deref()),
            (200, Some("eu-west")),
            "{}",
            a.body
        );
    }
}
