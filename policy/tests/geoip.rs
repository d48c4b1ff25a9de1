//! `policy::geoip` against MaxMind's test databases in `tests/data/geoip/` (see the README
//! there). Expected values are those listed in MaxMind's `GeoLite2-City-Test.json`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use policy::geoip::{ClientPlace, DatabaseKind, GeoIp, GeoIpError};
use policy::location::Location;
use proptest::prelude::*;

const GEOLITE2_CITY: &str = "GeoLite2-City-Test.mmdb";
const GEOIP2_CITY: &str = "GeoIP2-City-Test.mmdb";
const GEOLITE2_COUNTRY: &str = "GeoLite2-Country-Test.mmdb";
const BROKEN_DOUBLE: &str = "GeoIP2-City-Test-Broken-Double-Format.mmdb";
const BROKEN_POINTERS: &str = "MaxMind-DB-test-broken-pointers-24.mmdb";
const BROKEN_SEARCH_TREE: &str = "MaxMind-DB-test-broken-search-tree-24.mmdb";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/geoip/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|err| panic!("reading {path}: {err}"))
}

fn open(name: &str) -> GeoIp {
    GeoIp::from_bytes(fixture(name)).unwrap_or_else(|err| panic!("opening {name}: {err}"))
}

/// The broken-tree and broken-pointer files are generic MaxMind DB test files, with
/// `database_type` "Test", so `from_bytes` rejects them before any lookup. To exercise
/// lookups and `verify` on their damage, relabel them "City" (same length, so the file
/// layout is unchanged).
fn relabelled_as_city(name: &str) -> GeoIp {
    let mut bytes = fixture(name);
    let key = b"database_typeDTest";
    let at = bytes
        .windows(key.len())
        .rposition(|window| window == key)
        .expect("database_type \"Test\" in the metadata");
    bytes[at + key.len() - 4..at + key.len()].copy_from_slice(b"City");
    let geoip = GeoIp::from_bytes(bytes).expect("relabelled file opens");
    assert_eq!(geoip.database_type(), "City");
    geoip
}

/// The City test database without the first half of its bytes: the metadata is intact and
/// still fits, so it opens, but the search tree and data are garbage.
fn front_truncated_city() -> GeoIp {
    let bytes = fixture(GEOLITE2_CITY);
    GeoIp::from_bytes(bytes[bytes.len() / 2..].to_vec()).expect("metadata intact")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn place(geoip: &GeoIp, addr: &str) -> ClientPlace {
    geoip
        .lookup(ip(addr))
        .unwrap_or_else(|err| panic!("lookup {addr}: {err}"))
        .unwrap_or_else(|| panic!("lookup {addr}: no entry"))
}

fn corrupt_detail(result: Result<impl std::fmt::Debug, GeoIpError>) -> String {
    match result {
        Err(GeoIpError::Corrupt { detail }) => detail,
        other => panic!("expected GeoIpError::Corrupt, got {other:?}"),
    }
}

/// (address, city, country, continent, latitude, longitude)
type Expected = (
    &'static str,
    Option<&'static str>,
    &'static str,
    &'static str,
    f64,
    f64,
);

const CITY_EXPECTED: [Expected; 5] = [
    ("81.2.69.142", Some("London"), "GB", "EU", 51.5142, -0.0931),
    (
        "89.160.20.112",
        Some("Linköping"),
        "SE",
        "EU",
        58.4167,
        15.6167,
    ),
    (
        "216.160.83.56",
        Some("Milton"),
        "US",
        "NA",
        47.2513,
        -122.3149,
    ),
    (
        "175.16.199.0",
        Some("Changchun"),
        "CN",
        "AS",
        43.88,
        125.3228,
    ),
    ("2001:218::", None, "JP", "AS", 35.68536, 139.75309),
];

#[test]
fn city_databases_resolve_known_addresses() {
    for name in [GEOLITE2_CITY, GEOIP2_CITY] {
        let geoip = open(name);
        assert_eq!(geoip.kind(), DatabaseKind::City, "{name}");
        for (addr, city, country, continent, lat, lon) in CITY_EXPECTED {
            let got = place(&geoip, addr);
            let want = ClientPlace {
                location: Some(Location::new(lat, lon)),
                country: Some(country.to_owned()),
                continent: Some(continent.to_owned()),
                city: city.map(str::to_owned),
            };
            assert_eq!(got, want, "{name}: {addr}");
        }
    }
}

#[test]
fn london_is_near_the_city_of_london() {
    let london = place(&open(GEOLITE2_CITY), "81.2.69.142");
    let loc = london.location.expect("City database has a location");
    assert!(
        loc.distance_km(&Location::new(51.5, -0.09)) < 5.0,
        "{loc:?}"
    );
}

#[test]
fn metadata_is_exposed() {
    let geoip = open(GEOLITE2_CITY);
    assert_eq!(geoip.database_type(), "GeoLite2-City");
    assert!(
        geoip.build_epoch() > 1_000_000_000,
        "{}",
        geoip.build_epoch()
    );
    assert_eq!(open(GEOIP2_CITY).database_type(), "GeoIP2-City");
    assert_eq!(open(GEOLITE2_COUNTRY).database_type(), "GeoLite2-Country");
}

#[test]
fn private_loopback_and_unknown_addresses_have_no_place() {
    for name in [GEOLITE2_CITY, GEOIP2_CITY, GEOLITE2_COUNTRY] {
        let geoip = open(name);
        for addr in [
            "127.0.0.1",
            "10.0.0.1",
            "192.168.1.1",
            "::1",
            "fe80::1",
            "0.0.0.0",
        ] {
            assert_eq!(geoip.lookup(ip(addr)), Ok(None), "{name}: {addr}");
        }
    }
}

#[test]
fn ipv4_mapped_ipv6_is_looked_up_as_ipv4() {
    let geoip = open(GEOLITE2_CITY);
    assert_eq!(
        place(&geoip, "::ffff:81.2.69.142"),
        place(&geoip, "81.2.69.142")
    );
    assert_eq!(geoip.lookup(ip("::ffff:127.0.0.1")), Ok(None));
}

#[test]
fn country_database_gives_country_and_continent_without_location() {
    let geoip = open(GEOLITE2_COUNTRY);
    assert_eq!(geoip.kind(), DatabaseKind::Country);
    for (addr, country, continent) in [
        ("81.2.69.142", "GB", "EU"),
        ("89.160.20.112", "SE", "EU"),
        ("216.160.83.56", "US", "NA"),
        ("2001:218::", "JP", "AS"),
    ] {
        let want = ClientPlace {
            location: None,
            country: Some(country.to_owned()),
            continent: Some(continent.to_owned()),
            city: None,
        };
        assert_eq!(place(&geoip, addr), want, "{addr}");
    }
}

#[test]
fn good_databases_verify() {
    for name in [GEOLITE2_CITY, GEOIP2_CITY, GEOLITE2_COUNTRY] {
        assert_eq!(open(name).verify(), Ok(()), "{name}");
    }
}

#[test]
fn empty_input_is_not_a_database() {
    let err = GeoIp::from_bytes(Vec::new()).unwrap_err();
    assert!(
        matches!(&err, GeoIpError::NotADatabase { reason } if reason.contains("empty")),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("not a MaxMind DB file"), "{message}");
    assert!(
        message.contains("point `geoip.database` at a GeoIP2/GeoLite2 City or Country .mmdb file"),
        "{message}"
    );
}

#[test]
fn garbage_is_not_a_database() {
    let inputs: [Vec<u8>; 3] = [
        b"this is not a MaxMind database".to_vec(),
        vec![0u8; 4096],
        (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect(),
    ];
    for bytes in inputs {
        let err = GeoIp::from_bytes(bytes).unwrap_err();
        assert!(matches!(err, GeoIpError::NotADatabase { .. }), "{err:?}");
    }
}

#[test]
fn truncated_download_is_rejected_at_open() {
    // Losing the end loses the metadata: the file no longer looks like a MaxMind DB.
    let bytes = fixture(GEOLITE2_CITY);
    let err = GeoIp::from_bytes(bytes[..bytes.len() / 2].to_vec()).unwrap_err();
    assert!(matches!(err, GeoIpError::NotADatabase { .. }), "{err:?}");
    assert!(err.to_string().contains("truncated"), "{err}");
    // Losing most of the start leaves metadata that describes a search tree that cannot
    // fit in what is left.
    let detail = corrupt_detail(GeoIp::from_bytes(bytes[bytes.len() - 1024..].to_vec()));
    assert!(detail.contains("search tree"), "{detail}");
    // Losing less of it opens (the metadata is intact and the sizes fit) but the tree and
    // data are garbage: verify rejects it and lookups do not panic.
    let geoip = front_truncated_city();
    corrupt_detail(geoip.verify());
    for (addr, ..) in CITY_EXPECTED {
        match geoip.lookup(ip(addr)) {
            Ok(_) | Err(GeoIpError::Corrupt { .. }) => {}
            Err(other) => panic!("{addr}: unexpected {other:?}"),
        }
    }
}

#[test]
fn metadata_marker_with_garbage_metadata_is_corrupt() {
    let mut bytes = vec![0u8; 64];
    bytes.extend_from_slice(b"\xab\xcd\xefMaxMind.com");
    bytes.extend_from_slice(b"\xff\xff\xff garbage");
    let err = GeoIp::from_bytes(bytes).unwrap_err();
    assert!(matches!(err, GeoIpError::Corrupt { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("replace it with a fresh, complete copy"),
        "{err}"
    );
}

#[test]
fn non_location_databases_are_unsupported() {
    for name in [BROKEN_POINTERS, BROKEN_SEARCH_TREE] {
        let err = GeoIp::from_bytes(fixture(name)).unwrap_err();
        assert_eq!(
            err,
            GeoIpError::UnsupportedType {
                database_type: "Test".to_owned()
            },
            "{name}"
        );
        let message = err.to_string();
        assert!(message.contains("\"Test\" MaxMind DB"), "{message}");
        assert!(message.contains("City or Country .mmdb file"), "{message}");
    }
}

#[test]
fn broken_double_format_fails_verify_and_lookups_of_its_records() {
    let geoip = open(BROKEN_DOUBLE);
    assert_eq!(geoip.kind(), DatabaseKind::City);
    let detail = corrupt_detail(geoip.verify());
    assert!(detail.contains("double"), "{detail}");
    for (addr, ..) in CITY_EXPECTED {
        let detail = corrupt_detail(geoip.lookup(ip(addr)));
        assert!(detail.contains("double of size"), "{addr}: {detail}");
    }
    // Addresses without an entry never reach the broken data.
    assert_eq!(geoip.lookup(ip("127.0.0.1")), Ok(None));
    assert_eq!(geoip.lookup(ip("10.0.0.1")), Ok(None));
}

#[test]
fn broken_pointers_fail_verify_and_lookups_through_them() {
    let geoip = relabelled_as_city(BROKEN_POINTERS);
    let detail = corrupt_detail(geoip.verify());
    assert!(detail.contains("pointer"), "{detail}");
    // 1.1.1.16/28 points past the end of the data section; 1.1.1.32 is a search-tree
    // record that points outside it.
    let detail = corrupt_detail(geoip.lookup(ip("1.1.1.16")));
    assert!(detail.contains("unexpected end of buffer"), "{detail}");
    let detail = corrupt_detail(geoip.lookup(ip("1.1.1.32")));
    assert!(
        detail.contains("data pointer resolves to an invalid location"),
        "{detail}"
    );
    let message = geoip.lookup(ip("1.1.1.32")).unwrap_err().to_string();
    assert!(
        message.starts_with("the geo-IP database is corrupt"),
        "{message}"
    );
}

#[test]
fn broken_search_tree_fails_verify() {
    let geoip = relabelled_as_city(BROKEN_SEARCH_TREE);
    let detail = corrupt_detail(geoip.verify());
    assert!(detail.contains("search tree"), "{detail}");
}

static GOOD: LazyLock<Vec<(&'static str, GeoIp)>> = LazyLock::new(|| {
    [GEOLITE2_CITY, GEOIP2_CITY, GEOLITE2_COUNTRY]
        .into_iter()
        .map(|name| (name, open(name)))
        .collect()
});

static BROKEN: LazyLock<Vec<(&'static str, GeoIp)>> = LazyLock::new(|| {
    vec![
        (BROKEN_DOUBLE, open(BROKEN_DOUBLE)),
        (BROKEN_POINTERS, relabelled_as_city(BROKEN_POINTERS)),
        (BROKEN_SEARCH_TREE, relabelled_as_city(BROKEN_SEARCH_TREE)),
        (
            "GeoLite2-City-Test.mmdb, first half lost",
            front_truncated_city(),
        ),
    ]
});

/// Addresses spread over the whole space and concentrated where the fixtures have data
/// (including their broken parts).
fn any_address() -> impl Strategy<Value = IpAddr> {
    let populated_v6 = prop::sample::select(vec![
        0x2001_0218_u32,
        0x2a02_ff80,
        0x2001_0480,
        0x2001_0db8,
        0x0000_0000,
    ]);
    prop_oneof![
        any::<u32>().prop_map(|n| IpAddr::V4(Ipv4Addr::from(n))),
        any::<u128>().prop_map(|n| IpAddr::V6(Ipv6Addr::from(n))),
        any::<u8>().prop_map(|n| IpAddr::V4(Ipv4Addr::new(1, 1, 1, n))),
        any::<u8>().prop_map(|n| IpAddr::V4(Ipv4Addr::new(81, 2, 69, n))),
        (populated_v6, any::<u128>()).prop_map(|(prefix, rest)| {
            IpAddr::V6(Ipv6Addr::from(
                (u128::from(prefix) << 96) | (rest >> 32 >> (rest % 64)),
            ))
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// On a valid database every lookup succeeds, and what it returns is well formed.
    #[test]
    fn lookups_on_good_databases_succeed(addr in any_address()) {
        for (name, geoip) in GOOD.iter() {
            let got = geoip.lookup(addr);
            prop_assert!(got.is_ok(), "{name}: {addr}: {got:?}");
            if let Ok(Some(place)) = got {
                prop_assert_ne!(&place, &ClientPlace::default());
                if let Some(loc) = place.location {
                    prop_assert!(loc.is_valid(), "{name}: {addr}: {loc:?}");
                }
                if geoip.kind() == DatabaseKind::Country {
                    prop_assert_eq!(place.location, None);
                    prop_assert_eq!(&place.city, &None);
                }
                for code in [&place.country, &place.continent].into_iter().flatten() {
                    prop_assert!(code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()),
                        "{name}: {addr}: {code:?}");
                }
            }
        }
    }

    /// On a damaged database a lookup returns a result or `GeoIpError::Corrupt`; it never
    /// panics (a panic fails the test).
    #[test]
    fn lookups_on_broken_databases_never_panic(addr in any_address()) {
        for (name, geoip) in BROKEN.iter() {
            match geoip.lookup(addr) {
                Ok(_) | Err(GeoIpError::Corrupt { .. }) => {}
                Err(other) => prop_assert!(false, "{name}: {addr}: unexpected {other:?}"),
            }
        }
    }
}
