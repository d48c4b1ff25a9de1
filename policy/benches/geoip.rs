//! Cost of resolving a client address with `policy::geoip` (part of the per-request route
//! decision), on MaxMind's GeoLite2 City test database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use policy::geoip::GeoIp;

fn lookups(c: &mut Criterion) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/geoip/GeoLite2-City-Test.mmdb"
    );
    let geoip = GeoIp::from_bytes(std::fs::read(path).expect("read fixture")).expect("open");

    let cases: [(&str, &str); 3] = [
        ("lookup/ipv4_london", "81.2.69.142"),
        ("lookup/ipv6_japan", "2001:218::"),
        ("lookup/ipv4_private_no_entry", "10.0.0.1"),
    ];
    for (name, addr) in cases {
        let addr: IpAddr = addr.parse().unwrap();
        assert!(geoip.lookup(addr).is_ok());
        c.bench_function(name, |b| b.iter(|| geoip.lookup(black_box(addr))));
    }

    c.bench_function("verify/geolite2_city_test", |b| b.iter(|| geoip.verify()));
}

criterion_group!(benches, lookups);
criterion_main!(benches);
