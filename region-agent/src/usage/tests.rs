//! The ledger on disk: journal appends, reads and pages; torn tails; batches, their outbox
//! across crashes, exact totals; retention.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use contract::{ModelId, Nanos, TenantId, charge};
use control_plane_client::wire::{Capacity, MAX_USAGE_ROWS, Outcome};
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::journal::HOUR_MS;
use super::*;

/// 2026-03-01T10:00:00Z.
const T0: u64 = 1_772_359_200_000;

fn region() -> RegionId {
    RegionId::new("eu-west").unwrap()
}

fn record(n: u64, tenant: &str, model: &str, finished_at_ms: u64) -> UsageRecord {
    let units = 0.25 + n as f64 / 1000.0;
    UsageRecord {
        job_id: format!("eu-west.{n:032x}"),
        tenant: tenant.into(),
        model: model.into(),
        region: "eu-west".into(),
        capacity: Capacity::Reserved,
        outcome: Outcome::Completed,
        error: None,
        unit: "megapixel".into(),
        units_nanos: Nanos::from_amount(units),
        gpu_nanos: Nanos::from_amount(0.1),
        price_per_unit: 0.002,
        cost_nanos: charge(units, 0.002),
        catalog_revision: 7,
        finished_at_ms,
    }
}

/// Appends `record` as if at its finish time.
fn append(ledger: &Ledger, record: &UsageRecord) {
    ledger
        .journal
        .append(record, record.finished_at_ms)
        .unwrap();
}

fn ids(records: &[UsageRecord]) -> Vec<String> {
    records.iter().map(|r| r.job_id.clone()).collect()
}

#[test]
fn records_are_read_back_page_by_page_oldest_first_with_filters() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path(), &region()).unwrap();
    let mut all = Vec::new();
    for n in 0..7 {
        let tenant = if n % 2 == 0 { "acme" } else { "globex" };
        let r = record(n, tenant, "meridian/esrgan-x2", T0 + n * HOUR_MS / 2);
        append(&ledger, &r);
        all.push(r);
    }
    // Pages of 3, each continuing where the last ended; the last one has no `next`.
    let everything = RecordFilter::default();
    let (first, next) = ledger.page(&everything, None, 3).unwrap();
    assert_eq!(ids(&first), ids(&all[..3]));
    let next = audit::decode_cursor(&audit::encode_cursor(next.unwrap()));
    let (second, next) = ledger.page(&everything, next, 3).unwrap();
    assert_eq!(ids(&second), ids(&all[3..6]));
    let (third, next) = ledger.page(&everything, next, 3).unwrap();
    assert_eq!((ids(&third), next), (ids(&all[6..]), None));
    assert_eq!(first[0], all[0], "a record reads back as written");

    let acme = RecordFilter {
        tenant: Some(TenantId::new("acme").unwrap()),
        from_ms: Some(T0 + HOUR_MS / 2),
        to_ms: Some(T0 + 3 * HOUR_MS),
        ..RecordFilter::default()
    };
    let (page, next) = ledger.page(&acme, None, 10).unwrap();
    assert_eq!(
        (ids(&page), next),
        (ids(&[all[2].clone(), all[4].clone()]), None)
    );
    let other_model = RecordFilter {
        model: Some(ModelId::new("meridian/tiny-sd").unwrap()),
        ..RecordFilter::default()
    };
    assert!(ledger.page(&other_model, None, 10).unwrap().0.is_empty());
    for bad in ["", "1-", "-1", "a-1", "1-2-3", "99999999999999999999999-1"] {
        assert_eq!(audit::decode_cursor(bad), None, "{bad}");
    }
}

#[test]
fn a_torn_last_line_is_never_read_and_is_cut_off_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path(), &region()).unwrap();
    let kept = record(1, "acme", "meridian/esrgan-x2", T0);
    append(&ledger, &kept);
    let file = dir.path().join(format!("usage/journal/{T0:013}.jsonl"));
    let whole = std::fs::metadata(&file).unwrap().len();
    // A crash in the middle of the next append leaves half a line.
    let torn = serde_json::to_vec(&record(2, "acme", "meridian/esrgan-x2", T0)).unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.extend_from_slice(&torn[..torn.len() / 2]);
    std::fs::write(&file, &bytes).unwrap();
    let (page, _) = ledger.page(&RecordFilter::default(), None, 10).unwrap();
    assert_eq!(
        page,
        std::slice::from_ref(&kept),
        "readers stop at the last complete line"
    );
    let batch = ledger.pending_batch().unwrap().unwrap();
    assert_eq!(batch.rows[0].jobs, 1);
    drop(ledger);

    let ledger = Ledger::open(dir.path(), &region()).unwrap();
    assert_eq!(
        std::fs::metadata(&file).unwrap().len(),
        whole,
        "the torn part is cut off"
    );
    let again = record(2, "acme", "meridian/esrgan-x2", T0 + 1);
    append(&ledger, &again);
    let (page, _) = ledger.page(&RecordFilter::default(), None, 10).unwrap();
    assert_eq!(page, [kept, again]);
    ledger.acknowledge(1).unwrap();
    let next = ledger.pending_batch().unwrap().unwrap();
    assert_eq!(
        (next.seq, next.rows[0].jobs),
        (2, 1),
        "the re-appended job is in the next batch"
    );
}

#[test]
fn a_batch_resent_after_a_crash_keeps_its_seq_and_rows() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path(), &region()).unwrap();
    assert!(
        ledger.pending_batch().unwrap().is_none(),
        "nothing to send yet"
    );
    append(&ledger, &record(1, "acme", "meridian/esrgan-x2", T0));
    append(&ledger, &record(2, "acme", "meridian/esrgan-x2", T0 + 10));
    let sent = ledger.pending_batch().unwrap().unwrap();
    assert_eq!((sent.seq, sent.rows.len(), sent.rows[0].jobs), (1, 1, 2));
    assert_eq!(sent.ledger, ledger.id());
    assert_eq!(sent.rows[0].hour_ms, T0);

    // The agent dies before the receipt comes back; more jobs finished meanwhile.
    let id = ledger.id().to_owned();
    drop(ledger);
    let ledger = Ledger::open(dir.path(), &region()).unwrap();
    assert_eq!(ledger.id(), id, "the ledger id survives a restart");
    append(&ledger, &record(3, "globex", "meridian/esrgan-x2", T0 + 20));
    let resent = ledger.pending_batch().unwrap().unwrap();
    assert_eq!(resent, sent, "same seq, same rows");
    assert!(
        !ledger.acknowledge(9).unwrap(),
        "a receipt for another batch changes nothing"
    );
    assert!(ledger.acknowledge(1).unwrap());

    let next = ledger.pending_batch().unwrap().unwrap();
    assert_eq!((next.seq, next.rows.len()), (2, 1));
    assert_eq!(next.rows[0].tenant, "globex");
    assert!(ledger.acknowledge(2).unwrap());
    assert!(ledger.pending_batch().unwrap().is_none());
}

#[test]
fn an_outbox_the_cursor_already_covers_is_dropped_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path(), &region()).unwrap();
    append(&ledger, &record(1, "acme", "meridian/esrgan-x2", T0));
    let batch = ledger.pending_batch().unwrap().unwrap();
    let outbox = std::fs::read(dir.path().join("usage/outbox.json")).unwrap();
    ledger.acknowledge(batch.seq).unwrap();
    drop(ledger);
    // A crash between moving the cursor and removing the outbox entry.
    std::fs::write(dir.path().join("usage/outbox.json"), outbox).unwrap();
    let ledger = Ledger::open(dir.path(), &region()).unwrap();
    assert!(ledger.pending_batch().unwrap().is_none());
    append(&ledger, &record(2, "acme", "meridian/esrgan-x2", T0 + 1));
    assert_eq!(ledger.pending_batch().unwrap().unwrap().seq, 2);
}

#[test]
fn batches_hold_at_most_the_rows_allowed_and_sum_exactly_to_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path(), &region()).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut records = Vec::new();
    for n in 0..400 {
        let tenant = format!("t{}", rng.random_range(0..9));
        let model = ["meridian/esrgan-x2", "meridian/tiny-sd"][rng.random_range(0..2)];
        let mut r = record(
            n,
            &tenant,
            model,
            T0 + rng.random_range(0..6) * HOUR_MS / 2 + n,
        );
        r.units_nanos = Nanos::from_amount(rng.random_range(0.0..3.0));
        r.cost_nanos = charge(r.units_nanos.as_amount(), 0.0038);
        r.gpu_nanos = Nanos(rng.random_range(0..2_000_000_000));
        if rng.random_bool(0.1) {
            (r.outcome, r.cost_nanos, r.units_nanos) = (Outcome::Failed, Nanos::ZERO, Nanos::ZERO);
        }
        if rng.random_bool(0.3) {
            r.capacity = Capacity::OnDemand;
        }
        append(&ledger, &r);
        records.push(r);
    }
    let mut totals: HashMap<&str, (u64, u64, u64, u64, u64)> = HashMap::new();
    let mut seq = 0;
    while let Some(batch) = ledger.pending_batch().unwrap() {
        seq += 1;
        assert_eq!(batch.seq, seq, "numbered from 1 without gaps");
        assert!(batch.rows.len() <= MAX_USAGE_ROWS);
        for row in &batch.rows {
            assert_eq!(row.hour_ms % HOUR_MS, 0);
            let t = totals.entry("rows").or_default();
            *t = (
                t.0 + row.jobs,
                t.1 + row.failed_jobs,
                t.2 + row.units_nanos.0,
                t.3 + row.gpu_nanos.0,
                t.4 + row.cost_nanos.0,
            );
        }
        ledger.acknowledge(batch.seq).unwrap();
    }
    assert!(seq > 1, "more rows than one batch holds");
    for r in &records {
        let t = totals.entry("records").or_default();
        let failed = u64::from(r.outcome == Outcome::Failed);
        *t = (
            t.0 + 1,
            t.1 + failed,
            t.2 + r.units_nanos.0,
            t.3 + r.gpu_nanos.0,
            t.4 + r.cost_nanos.0,
        );
    }
    assert_eq!(totals["rows"], totals["records"]);
}

#[test]
fn the_retention_sweep_never_deletes_records_not_yet_sent() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path(), &region()).unwrap();
    let day = Duration::from_secs(86_400);
    for n in 0..3 {
        append(
            &ledger,
            &record(n, "acme", "meridian/esrgan-x2", T0 + n * 2 * HOUR_MS),
        );
    }
    let much_later = T0 + 30 * 86_400_000;
    // Nothing is sent yet: everything is kept however old.
    assert_eq!(ledger.sweep(much_later, day, true).unwrap(), 0);
    // Sent up to the second file: only the first file may go.
    let batch = ledger.pending_batch().unwrap().unwrap();
    ledger.acknowledge(batch.seq).unwrap();
    append(
        &ledger,
        &record(9, "acme", "meridian/esrgan-x2", T0 + 4 * HOUR_MS + 5),
    );
    assert!(ledger.pending_batch().unwrap().is_some());
    assert_eq!(
        ledger.sweep(much_later, day, true).unwrap(),
        2,
        "the sent files before the cursor's"
    );
    let (left, _) = ledger.page(&RecordFilter::default(), None, 10).unwrap();
    assert_eq!(left.len(), 2, "the cursor's file stays: {:?}", ids(&left));
    // Within the retention time nothing goes; without a control plane age alone decides.
    let dir = tempfile::tempdir().unwrap();
    let alone = Ledger::open(dir.path(), &region()).unwrap();
    for n in 0..3 {
        append(
            &alone,
            &record(n, "acme", "meridian/esrgan-x2", T0 + n * 2 * HOUR_MS),
        );
    }
    assert_eq!(alone.sweep(T0 + 12 * HOUR_MS, day, false).unwrap(), 0);
    assert_eq!(alone.sweep(much_later, day, false).unwrap(), 2);
}

#[test]
fn journaled_finds_ids_in_the_hours_since_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path(), &region()).unwrap();
    let early = record(1, "acme", "meridian/esrgan-x2", T0);
    let late = record(2, "acme", "meridian/esrgan-x2", T0 + 3 * HOUR_MS);
    append(&ledger, &early);
    append(&ledger, &late);
    let ask: HashSet<String> = [early.job_id.clone(), late.job_id.clone(), "x".into()].into();
    let found = ledger.journaled(&ask, T0 + 2 * HOUR_MS).unwrap();
    assert_eq!(found, HashSet::from([late.job_id]));
}

#[test]
fn a_ledger_id_that_is_not_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("usage")).unwrap();
    std::fs::write(dir.path().join("usage/ledger"), "not-hex").unwrap();
    let err = Ledger::open(dir.path(), &region()).err().unwrap();
    assert!(matches!(err, LedgerError::BadLedgerId(_)), "{err}");
}

#[test]
fn records_an_earlier_version_left_unsent_move_into_the_journal_once() {
    let dir = tempfile::tempdir().unwrap();
    let usage = dir.path().join("usage");
    std::fs::create_dir_all(&usage).unwrap();
    let id = "eu-west.0123456789abcdef0123456789abcdef";
    let old = json!({"job_id": id, "tenant": "acme", "model": "meridian/esrgan-x2",
        "region": "eu-west", "units": 0.5, "gpu_seconds": 0.2, "capacity": "on_demand",
        "cost": 0.001, "finished_at_ms": T0});
    std::fs::write(usage.join(format!("{id}.json")), old.to_string()).unwrap();
    let ledger = Ledger::open(dir.path(), &region()).unwrap();
    let (page, _) = ledger.page(&RecordFilter::default(), None, 10).unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(
        (page[0].job_id.as_str(), page[0].cost_nanos),
        (id, Nanos(1_000_000))
    );
    assert_eq!(page[0].capacity, Capacity::OnDemand);
    assert!(!usage.join(format!("{id}.json")).exists());
    drop(ledger);
    // Interrupted after the append, before the file was deleted: not appended twice.
    std::fs::write(usage.join(format!("{id}.json")), old.to_string()).unwrap();
    let ledger = Ledger::open(dir.path(), &region()).unwrap();
    assert_eq!(
        ledger
            .page(&RecordFilter::default(), None, 10)
            .unwrap()
            .0
            .len(),
        1
    );
}
