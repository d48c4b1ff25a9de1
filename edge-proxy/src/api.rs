//! The public API's shape (docs/design.md §4): which call a request is, where its client is, and
//! the answers the edge gives itself (`GET /v1/models`).

use std::net::IpAddr;

use contract::RequestId;
use http::Method;
use policy::{Catalog, GeoIp, Location, Tenant};
use serde_json::json;

use crate::config::Cidr;
use crate::error::ApiError;

/// How a job is submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submit {
    /// `POST /v1/run/{owner}/{model}`: wait for the result.
    Run,
    /// `POST /v1/queue/{owner}/{model}`: enqueue.
    Queue,
}

/// One call of the public API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// A new job for `model` (`owner/name`).
    Submit {
        /// Run or queue.
        how: Submit,
        /// Model id.
        model: String,
    },
    /// A call about an existing request, held by `region`.
    Request {
        /// The region in the request id's prefix.
        region: String,
    },
    /// `GET /v1/models`.
    Models,
}

impl Call {
    /// The call that `method` `path` is.
    ///
    /// # Errors
    ///
    /// 404 for paths outside the API and malformed request ids, 405 for a known path with
    /// the wrong method.
    pub fn parse(method: &Method, path: &str) -> Result<Call, ApiError> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let expect = |wanted: &Method, call: Call| {
            if method == wanted {
                Ok(call)
            } else {
                Err(ApiError::method_not_allowed(format!(
                    "{path} takes {wanted}, not {method}"
                )))
            }
        };
        match parts.as_slice() {
            ["v1", "models"] => expect(&Method::GET, Call::Models),
            ["v1", kind @ ("run" | "queue"), owner, name]
                if valid_part(owner) && valid_part(name) =>
            {
                let how = if *kind == "run" {
                    Submit::Run
                } else {
                    Submit::Queue
                };
                expect(
                    &Method::POST,
                    Call::Submit {
                        how,
                        model: format!("{owner}/{name}"),
                    },
                )
            }
            ["v1", "requests", id, rest @ ..] => {
                let region = region_of(id)
                    .ok_or_else(|| ApiError::not_found(format!("no request {id:?}")))?
                    .region()
                    .to_owned();
                let call = Call::Request { region };
                match rest {
                    [] | ["status"] => expect(&Method::GET, call),
                    ["cancel"] => expect(&Method::PUT, call),
                    ["files", name] if valid_part(name) => expect(&Method::GET, call),
                    _ => Err(ApiError::not_found(format!("no such call: {path}"))),
                }
            }
            _ => Err(ApiError::not_found(format!("no such call: {path}"))),
        }
    }
}

fn valid_part(part: &str) -> bool {
    !part.is_empty()
        && part != "."
        && part != ".."
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The region of a request id (`contract::RequestId`), if the id has that shape.
pub fn region_of(id: &str) -> Option<RequestId> {
    RequestId::new(id).ok()
}

/// The client's address: the peer, or — when the peer is a trusted proxy — the last address
/// in `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(
    peer: Option<IpAddr>,
    forwarded: Option<&str>,
    trusted: &[Cidr],
) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let Some(forwarded) = forwarded else {
        return Some(peer);
    };
    let hops: Vec<IpAddr> = forwarded
        .split(',')
        .map_while(|hop| hop.trim().parse().ok())
        .collect();
    hops.iter()
        .rev()
        .find(|ip| !is_trusted(**ip))
        .or(hops.first())
        .copied()
        .or(Some(peer))
}

/// Where the client at `ip` is: the geo-IP answer, else the edge's own location.
pub fn locate(geoip: Option<&GeoIp>, ip: Option<IpAddr>, fallback: Location) -> Location {
    match (geoip, ip) {
        (Some(db), Some(ip)) => match db.lookup(ip) {
            Ok(Some(place)) => place.location.unwrap_or(fallback),
            Ok(None) => fallback,
            Err(e) => {
                tracing::warn!(error = %e, "geo-IP lookup failed; using the edge's location");
                fallback
            }
        },
        _ => fallback,
    }
}

/// The body of `GET /v1/models`: the models `tenant` may call, with prices.
pub fn models_body(catalog: &Catalog, tenant: &Tenant) -> Vec<u8> {
    let models: Vec<_> = catalog
        .models_for(tenant)
        .map(|m| {
            json!({
                "id": m.id.as_str(),
                "kind": m.kind.as_str(),
                "unit": m.unit.as_str(),
                "price_per_unit": m.price_per_unit,
                "currency": catalog.currency(),
                "regions": m.served_by.iter()
                    .filter(|r| tenant.allowed_regions.contains(*r))
                    .filter_map(|r| catalog.regions().get(r).map(|r| r.id.as_str()))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "models": models }).to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn calls_are_recognised_with_their_methods() {
        let submit = Call::parse(&Method::POST, "/v1/run/meridian/esrgan-x4").unwrap();
        assert_eq!(
            submit,
            Call::Submit {
                how: Submit::Run,
                model: "meridian/esrgan-x4".into()
            }
        );
        let id = "eu-west.0123456789abcdef0123456789abcdef";
        for (method, path) in [
            (Method::GET, format!("/v1/requests/{id}")),
            (Method::GET, format!("/v1/requests/{id}/status")),
            (Method::PUT, format!("/v1/requests/{id}/cancel")),
            (Method::GET, format!("/v1/requests/{id}/files/image.png")),
        ] {
            assert_eq!(
                Call::parse(&method, &path).unwrap(),
                Call::Request {
                    region: "eu-west".into()
                },
                "{path}"
            );
        }
        assert_eq!(
            Call::parse(&Method::GET, "/v1/models").unwrap(),
            Call::Models
        );
        let wrong = Call::parse(&Method::GET, "/v1/queue/a/b").unwrap_err();
        assert_eq!(wrong.status, 405);
        for path in [
            "/v1/requests/eu-west.XYZ/status",
            "/v1/requests/0123456789abcdef0123456789abcdef",
            "/v1/run/a/..",
            "/v1/files",
            "/",
        ] {
            assert_eq!(
                Call::parse(&Method::GET, path).unwrap_err().status,
                404,
                "{path}"
            );
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let outsider: IpAddr = "198.51.100.9".parse().unwrap();
        let xff = Some("81.2.69.142, 10.0.0.7");
        assert_eq!(
            client_ip(Some(proxy), xff, &trusted),
            Some("81.2.69.142".parse().unwrap())
        );
        assert_eq!(client_ip(Some(outsider), xff, &trusted), Some(outsider));
        assert_eq!(client_ip(Some(proxy), None, &trusted), Some(proxy));
        assert_eq!(
            client_ip(Some(proxy), Some("garbage"), &trusted),
            Some(proxy)
        );
        // A client cannot hide behind an address it forged in front of the real hops.
        assert_eq!(
            client_ip(Some(proxy), Some("1.1.1.1, 216.160.83.56"), &trusted),
            Some("216.160.83.56".parse().unwrap())
        );
    }
}
