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

/// One call of the public API, on any of its surfaces ([`Surface`](crate::surface::Surface)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// A new job for `model` (`owner/name`): `/v1/{run,queue}/…`, `/fal/{run,queue}/…`,
    /// `/v1/models/…/predictions` (queued; the agent waits for `Prefer: wait` itself).
    Submit {
        /// Run or queue.
        how: Submit,
        /// Model id.
        model: String,
    },
    /// A synchronous run whose model is named in its body (the JSON field or the multipart
    /// form field `model`): OpenAI's `/v1/images/*` and `/v1/audio/*`.
    RunNamedInBody,
    /// A call about an existing request, held by the region and instance its id names.
    Request(Holder),
    /// `GET /v1/requests/{id}/files/{name}`: a result file, with a key or a signed link.
    File(Holder),
    /// `GET /v1/models`.
    Models,
    /// A call every agent answers alike for the tenant (`GET /v1/webhooks/default/secret`:
    /// the deployment's agents share the signing key): to any allowed region.
    Tenant,
    /// `GET /fal/.well-known/jwks.json`, the public key webhooks are signed with: no key
    /// needed, any region answers.
    Keys,
}

/// Where a request is held, as its id says ([`RequestId`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The region.
    pub region: String,
    /// The region's instance; `None` in an id made before regions had instances.
    pub instance: Option<String>,
}

impl Holder {
    /// The holder named in request id `id`.
    ///
    /// # Errors
    ///
    /// 404 when `id` is not a request id.
    pub fn of(id: &str) -> Result<Self, ApiError> {
        let id = region_of(id).ok_or_else(|| ApiError::not_found(format!("no request {id:?}")))?;
        Ok(Self {
            region: id.region().to_owned(),
            instance: id.instance().map(str::to_owned),
        })
    }
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
        let submit = |how, owner: &str, name: &str| Call::Submit {
            how,
            model: format!("{owner}/{name}"),
        };
        let not_found = || Err(ApiError::not_found(format!("no such call: {path}")));
        match parts.as_slice() {
            ["v1", "models"] => expect(&Method::GET, Call::Models),
            ["v1" | "fal", kind @ ("run" | "queue"), owner, name] if model_id(owner, name) => {
                let how = if *kind == "run" {
                    Submit::Run
                } else {
                    Submit::Queue
                };
                expect(&Method::POST, submit(how, owner, name))
            }
            ["v1", "models", owner, name, "predictions"] if model_id(owner, name) => {
                expect(&Method::POST, submit(Submit::Queue, owner, name))
            }
            ["v1", "images", "generations" | "edits"]
            | ["v1", "audio", "transcriptions" | "speech"] => {
                expect(&Method::POST, Call::RunNamedInBody)
            }
            ["v1", "webhooks", "default", "secret"] => expect(&Method::GET, Call::Tenant),
            ["fal", ".well-known", "jwks.json"] => expect(&Method::GET, Call::Keys),
            ["v1", "requests", id, rest @ ..] => {
                let holder = Holder::of(id)?;
                match rest {
                    [] | ["status"] | ["webhooks"] => expect(&Method::GET, Call::Request(holder)),
                    ["cancel"] => expect(&Method::PUT, Call::Request(holder)),
                    ["files", name] if valid_part(name) => expect(&Method::GET, Call::File(holder)),
                    _ => not_found(),
                }
            }
            ["fal", "queue", owner, name, "requests", id, rest @ ..] if model_id(owner, name) => {
                let call = Call::Request(Holder::of(id)?);
                match rest {
                    [] | ["status"] | ["status", "stream"] => expect(&Method::GET, call),
                    ["cancel"] => expect(&Method::PUT, call),
                    _ => not_found(),
                }
            }
            ["v1", "predictions", id, rest @ ..] => {
                let call = Call::Request(Holder::of(id)?);
                match rest {
                    [] => expect(&Method::GET, call),
                    ["cancel"] => expect(&Method::POST, call),
                    _ => not_found(),
                }
            }
            _ => not_found(),
        }
    }
}

/// Whether a file call's query carries a link signature (`signature=…`): such a call needs
/// no key, the agent checks the signature.
pub fn is_signed(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|pair| pair.split('=').next() == Some("signature"))
    })
}

/// Whether `owner`/`name` has the shape of a model id.
fn model_id(owner: &str, name: &str) -> bool {
    valid_part(owner) && valid_part(name)
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

    /// The holder of an id made before regions had instances.
    fn old(region: &str) -> Holder {
        Holder {
            region: region.into(),
            instance: None,
        }
    }

    #[test]
    fn request_ids_name_the_instance_that_holds_the_request() {
        let id = "eu-west.gpu-2.0123456789abcdef0123456789abcdef";
        let holder = Holder {
            region: "eu-west".into(),
            instance: Some("gpu-2".into()),
        };
        for (method, path) in [
            (Method::GET, format!("/v1/requests/{id}/status")),
            (Method::PUT, format!("/v1/requests/{id}/cancel")),
            (Method::GET, format!("/fal/queue/a/b/requests/{id}/status")),
            (Method::GET, format!("/v1/predictions/{id}")),
        ] {
            assert_eq!(
                Call::parse(&method, &path).unwrap(),
                Call::Request(holder.clone()),
                "{path}"
            );
        }
        assert_eq!(
            Call::parse(&Method::GET, &format!("/v1/requests/{id}/files/a.png")).unwrap(),
            Call::File(holder)
        );
    }

    #[test]
    fn webhook_calls_are_recognised() {
        let id = "eu-west.0123456789abcdef0123456789abcdef";
        assert_eq!(
            Call::parse(&Method::GET, &format!("/v1/requests/{id}/webhooks")).unwrap(),
            Call::Request(old("eu-west"))
        );
        assert_eq!(
            Call::parse(&Method::GET, "/v1/webhooks/default/secret").unwrap(),
            Call::Tenant
        );
        assert_eq!(
            Call::parse(&Method::GET, "/fal/.well-known/jwks.json").unwrap(),
            Call::Keys
        );
        let wrong = Call::parse(&Method::POST, "/fal/.well-known/jwks.json").unwrap_err();
        assert_eq!(wrong.status, 405);
    }

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
        ] {
            assert_eq!(
                Call::parse(&method, &path).unwrap(),
                Call::Request(old("eu-west")),
                "{path}"
            );
        }
        assert_eq!(
            Call::parse(&Method::GET, &format!("/v1/requests/{id}/files/image.png")).unwrap(),
            Call::File(old("eu-west"))
        );
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
    fn compatible_submissions_name_their_model_in_the_path_or_the_body() {
        let model = "meridian/esrgan-x4".to_owned();
        for (path, how) in [
            ("/fal/queue/meridian/esrgan-x4", Submit::Queue),
            ("/fal/run/meridian/esrgan-x4", Submit::Run),
            ("/v1/models/meridian/esrgan-x4/predictions", Submit::Queue),
        ] {
            let call = Call::parse(&Method::POST, path).unwrap();
            assert_eq!(
                call,
                Call::Submit {
                    how,
                    model: model.clone()
                },
                "{path}"
            );
            assert_eq!(
                Call::parse(&Method::GET, path).unwrap_err().status,
                405,
                "{path}"
            );
        }
        for path in [
            "/v1/images/generations",
            "/v1/images/edits",
            "/v1/audio/transcriptions",
            "/v1/audio/speech",
        ] {
            assert_eq!(
                Call::parse(&Method::POST, path).unwrap(),
                Call::RunNamedInBody,
                "{path}"
            );
            for wrong in [Method::GET, Method::PUT] {
                assert_eq!(Call::parse(&wrong, path).unwrap_err().status, 405, "{path}");
            }
        }
        for path in [
            "/v1/images/variations",
            "/fal/queue/a/..",
            "/fal/models/a/b",
        ] {
            assert_eq!(
                Call::parse(&Method::POST, path).unwrap_err().status,
                404,
                "{path}"
            );
        }
    }

    #[test]
    fn compatible_calls_about_a_request_go_to_the_region_in_its_id() {
        let id = "ap-south.0123456789abcdef0123456789abcdef";
        let fal = format!("/fal/queue/meridian/esrgan-x4/requests/{id}");
        let region = Call::Request(old("ap-south"));
        for (method, path, wrong) in [
            (Method::GET, fal.clone(), Method::POST),
            (Method::GET, format!("{fal}/status"), Method::PUT),
            (Method::GET, format!("{fal}/status/stream"), Method::POST),
            (Method::PUT, format!("{fal}/cancel"), Method::POST),
            (Method::GET, format!("/v1/predictions/{id}"), Method::POST),
            (
                Method::POST,
                format!("/v1/predictions/{id}/cancel"),
                Method::PUT,
            ),
        ] {
            assert_eq!(Call::parse(&method, &path).unwrap(), region, "{path}");
            assert_eq!(
                Call::parse(&wrong, &path).unwrap_err().status,
                405,
                "{path}"
            );
        }
        for path in [
            format!("{fal}/logs"),
            format!("/fal/run/meridian/esrgan-x4/requests/{id}"),
            "/fal/queue/meridian/esrgan-x4/requests/nope/status".to_owned(),
            format!("/v1/predictions/{id}/logs"),
            "/v1/predictions/0123".to_owned(),
        ] {
            assert_eq!(
                Call::parse(&Method::GET, &path).unwrap_err().status,
                404,
                "{path}"
            );
        }
    }

    #[test]
    fn a_file_link_is_signed_by_its_signature_parameter() {
        assert!(is_signed(Some("expires=1700000000&signature=abc")));
        assert!(is_signed(Some("signature=")));
        assert!(!is_signed(Some("expires=1700000000")));
        assert!(!is_signed(Some("not_signature=x&signatures=y")));
        assert!(!is_signed(None));
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
