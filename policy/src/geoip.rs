//! Where a client is: its IP address resolved to a location, country and continent.
//!
//! The route decision needs to know where a request comes from to estimate the network
//! round-trip time to each region (see [`crate::location`]). [`GeoIp`] answers that from a
//! MaxMind DB file — a GeoIP2 or GeoLite2 **City** database (location, city, country,
//! continent) or **Country** database (country and continent only).
//!
//! Like the rest of this crate it does no I/O: the caller reads the `.mmdb` file and hands
//! its bytes to [`GeoIp::from_bytes`], which rejects anything that is not a City or Country
//! database. A file can also be damaged in ways that only show when a lookup reaches the
//! broken part; such lookups return [`GeoIpError::Corrupt`] and never panic, and
//! [`GeoIp::verify`] walks the whole file so that a startup check can reject it up front.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use policy::geoip::GeoIp;
//!
//! let bytes = std::fs::read("GeoLite2-City.mmdb")?; // the caller does the I/O
//! let geoip = GeoIp::from_bytes(bytes)?;
//! geoip.verify()?; // optional, once at startup: see its docs for the cost
//! if let Some(place) = geoip.lookup("81.2.69.142".parse()?)? {
//!     println!("{:?} {:?} {:?}", place.country, place.continent, place.location);
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::HashSet;
use std::net::IpAddr;

use maxminddb::{MaxMindDbError, Reader, WithinOptions};
use serde::Deserialize;

use crate::location::Location;

/// What an operator should do about a file that is not a usable database.
const USE_CITY_OR_COUNTRY: &str =
    "point `geoip.database` at a GeoIP2/GeoLite2 City or Country .mmdb file";

/// Marks the start of a MaxMind DB file's metadata section.
const METADATA_MARKER: &[u8] = b"\xab\xcd\xefMaxMind.com";

/// The metadata section is always within this many bytes of the end of the file.
const METADATA_MAX_SIZE: usize = 128 * 1024;

/// Why a geo-IP database could not be opened or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GeoIpError {
    /// The bytes are not a MaxMind DB file at all (empty, or some other kind of file).
    #[error("the geo-IP database is not a MaxMind DB file ({reason}); {USE_CITY_OR_COUNTRY}")]
    NotADatabase {
        /// What was found instead.
        reason: String,
    },

    /// A valid MaxMind DB file, but not one with client locations (for example an ASN or
    /// ISP database).
    #[error(
        "the geo-IP database is a {database_type:?} MaxMind DB, which does not locate \
         clients; {USE_CITY_OR_COUNTRY}"
    )]
    UnsupportedType {
        /// The `database_type` from the file's metadata.
        database_type: String,
    },

    /// The file claims to be a MaxMind DB but its metadata, search tree or data is broken,
    /// typically because it was truncated or damaged in transfer.
    #[error(
        "the geo-IP database is corrupt ({detail}); replace it with a fresh, complete copy \
         of the GeoIP2/GeoLite2 City or Country .mmdb file"
    )]
    Corrupt {
        /// What the reader found wrong.
        detail: String,
    },
}

impl GeoIpError {
    fn corrupt(err: &MaxMindDbError) -> Self {
        Self::Corrupt {
            detail: err.to_string(),
        }
    }
}

/// Which kind of MaxMind database a [`GeoIp`] was opened from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    /// A City database (or a superset such as Enterprise): location, city, country and
    /// continent.
    City,
    /// A Country database: country and continent, no location.
    Country,
}

impl DatabaseKind {
    /// The kind for a metadata `database_type` such as `"GeoLite2-City"`, or `None` when the
    /// database does not locate clients.
    fn from_database_type(database_type: &str) -> Option<Self> {
        if database_type.contains("City") || database_type.contains("Enterprise") {
            Some(Self::City)
        } else if database_type.contains("Country") {
            Some(Self::Country)
        } else {
            None
        }
    }
}

/// Where a client IP address is, as far as the database knows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientPlace {
    /// Approximate coordinates; `None` from a Country database or for entries known only
    /// to country level without coordinates.
    pub location: Option<Location>,
    /// ISO 3166-1 alpha-2 country code, e.g. `"GB"`.
    pub country: Option<String>,
    /// Two-letter continent code, e.g. `"EU"` (AF, AN, AS, EU, NA, OC, SA).
    pub continent: Option<String>,
    /// English city name, e.g. `"London"`; only from a City database.
    pub city: Option<String>,
}

/// A geo-IP database in memory: resolves client IP addresses to [`ClientPlace`]s.
///
/// Opened from the bytes of a GeoIP2/GeoLite2 City or Country `.mmdb` file. Lookups borrow
/// it immutably, so one instance can be shared between threads (it is `Send + Sync`).
#[derive(Debug)]
pub struct GeoIp {
    reader: Reader<Vec<u8>>,
    kind: DatabaseKind,
}

impl GeoIp {
    /// Opens a database from the contents of a `.mmdb` file.
    ///
    /// Checks the metadata: fails with [`GeoIpError::NotADatabase`] for empty input or bytes
    /// that are not a MaxMind DB, [`GeoIpError::UnsupportedType`] for a MaxMind DB that is
    /// not a City or Country database, and [`GeoIpError::Corrupt`] when the metadata is
    /// damaged. It does not read the search tree or data: see [`GeoIp::verify`].
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GeoIpError> {
        if bytes.is_empty() {
            return Err(GeoIpError::NotADatabase {
                reason: "the input is empty".to_owned(),
            });
        }
        let tail = &bytes[bytes.len().saturating_sub(METADATA_MAX_SIZE)..];
        if !tail
            .windows(METADATA_MARKER.len())
            .any(|window| window == METADATA_MARKER)
        {
            return Err(GeoIpError::NotADatabase {
                reason: "no MaxMind DB metadata near the end of the input; a .mmdb file that was \
                         truncated looks like this too"
                    .to_owned(),
            });
        }
        let reader = Reader::from_source(bytes).map_err(|err| GeoIpError::corrupt(&err))?;
        let database_type = &reader.metadata().database_type;
        let kind = DatabaseKind::from_database_type(database_type).ok_or_else(|| {
            GeoIpError::UnsupportedType {
                database_type: database_type.clone(),
            }
        })?;
        Ok(Self { reader, kind })
    }

    /// Whether this is a City or a Country database.
    pub fn kind(&self) -> DatabaseKind {
        self.kind
    }

    /// The metadata `database_type`, e.g. `"GeoLite2-City"`.
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// When the database was built, in seconds since the Unix epoch (for staleness checks).
    pub fn build_epoch(&self) -> u64 {
        self.reader.metadata().build_epoch
    }

    /// Checks the whole database so that a damaged file is rejected at startup rather than
    /// failing lookups later.
    ///
    /// Validates the metadata, walks every network in the search tree, checks the data
    /// section separator and every record the tree points at, then reads each distinct
    /// record the way [`GeoIp::lookup`] does. Returns [`GeoIpError::Corrupt`] on the first
    /// problem.
    ///
    /// Cost: time and memory linear in the size of the database — two walks of the search
    /// tree plus one decode per distinct record, holding a set of record offsets while it
    /// runs. It takes about 0.3 ms for the 21 KB GeoLite2 City test database
    /// (`cargo bench -p policy --bench geoip`) and grows in proportion for full-size
    /// databases, which are thousands of times larger; run it once when a database is
    /// loaded, never per request.
    pub fn verify(&self) -> Result<(), GeoIpError> {
        self.reader
            .verify()
            .map_err(|err| GeoIpError::corrupt(&err))?;
        let mut seen = HashSet::new();
        let networks = self
            .reader
            .networks(WithinOptions::default())
            .map_err(|err| GeoIpError::corrupt(&err))?;
        for network in networks {
            let result = network.map_err(|err| GeoIpError::corrupt(&err))?;
            if let Some(offset) = result.offset()
                && seen.insert(offset)
            {
                let record = result
                    .decode::<Record<'_>>()
                    .map_err(|err| GeoIpError::corrupt(&err))?;
                if let Some(record) = record {
                    record.into_place()?;
                }
            }
        }
        Ok(())
    }

    /// Where `ip` is.
    ///
    /// `Ok(None)` when the database knows nothing useful about the address: private and
    /// loopback ranges (127.0.0.1, 10.0.0.1, …), unallocated ranges, entries with none of the
    /// fields of [`ClientPlace`], and IPv6 addresses in an IPv4-only database. IPv4-mapped
    /// IPv6 addresses (`::ffff:a.b.c.d`, as dual-stack sockets report IPv4 clients) are
    /// looked up as the IPv4 address.
    ///
    /// `Err(GeoIpError::Corrupt)` when the lookup reaches a damaged part of the file.
    ///
    /// Cost: a walk of at most 128 search-tree nodes, a decode of only the fields used
    /// (borrowed from the database, not copied), and one small allocation per string field
    /// returned — about 1 µs for a City record, about 40 ns for an address with no entry
    /// (`cargo bench -p policy --bench geoip`).
    pub fn lookup(&self, ip: IpAddr) -> Result<Option<ClientPlace>, GeoIpError> {
        let ip = ip.to_canonical();
        if ip.is_ipv6() && self.reader.metadata().ip_version == 4 {
            return Ok(None);
        }
        let result = self
            .reader
            .lookup(ip)
            .map_err(|err| GeoIpError::corrupt(&err))?;
        let record = result
            .decode::<Record<'_>>()
            .map_err(|err| GeoIpError::corrupt(&err))?;
        match record {
            Some(record) => record.into_place(),
            None => Ok(None),
        }
    }
}

/// The parts of a City or Country record that [`ClientPlace`] uses; every other field is
/// skipped without being decoded. Strings are borrowed from the database.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    city: Option<Named<'a>>,
    #[serde(borrow)]
    continent: Option<Continent<'a>>,
    #[serde(borrow)]
    country: Option<Country<'a>>,
    location: Option<Coordinates>,
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow)]
    names: Option<Names<'a>>,
}

#[derive(Deserialize)]
struct Names<'a> {
    #[serde(borrow)]
    en: Option<&'a str>,
}

#[derive(Deserialize)]
struct Continent<'a> {
    #[serde(borrow)]
    code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Country<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Coordinates {
    latitude: Option<f64>,
    longitude: Option<f64>,
}

impl Record<'_> {
    /// The place this record describes, `None` if it has none of the fields used, or
    /// [`GeoIpError::Corrupt`] if its coordinates are not a point on the Earth.
    fn into_place(self) -> Result<Option<ClientPlace>, GeoIpError> {
        let location = match self.location {
            Some(Coordinates {
                latitude: Some(lat),
                longitude: Some(lon),
            }) => {
                let location = Location::new(lat, lon);
                if !location.is_valid() {
                    return Err(GeoIpError::Corrupt {
                        detail: format!(
                            "a record has coordinates outside the Earth: latitude {lat}, \
                             longitude {lon}"
                        ),
                    });
                }
                Some(location)
            }
            _ => None,
        };
        let place = ClientPlace {
            location,
            country: self.country.and_then(|c| c.iso_code).map(str::to_owned),
            continent: self.continent.and_then(|c| c.code).map(str::to_owned),
            city: self
                .city
                .and_then(|c| c.names)
                .and_then(|n| n.en)
                .map(str::to_owned),
        };
        if place == ClientPlace::default() {
            Ok(None)
        } else {
            Ok(Some(place))
        }
    }
}
