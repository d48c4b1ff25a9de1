//! The model of a job that names it in its body, as OpenAI's media endpoints do: the JSON
//! field `model`, or the multipart form field `model`. The edge reads the body whole (within
//! the body limit) before it can admit and route such a job.
//!
//! The multipart reader is deliberately small: it finds the boundary in `content-type`,
//! walks the parts' headers (each part's headers at most [`PART_HEADERS_MAX`] bytes) and
//! reads the value of the part named `model` (at most [`MODEL_MAX`] bytes). Finding the
//! next delimiter is linear in the body: a boundary cannot hold a CR, so a comparison
//! started at one CR ends by the next.

use serde::Deserialize;

use crate::error::ApiError;

/// The longest model id a body may name, in bytes.
pub const MODEL_MAX: usize = 256;
/// The most bytes of headers one multipart part may have.
pub const PART_HEADERS_MAX: usize = 8 * 1024;
/// The longest multipart boundary (RFC 2046).
const BOUNDARY_MAX: usize = 70;

/// The model `body` names; `content_type` says how it is written (multipart/form-data, else
/// JSON).
///
/// # Errors
///
/// 400 when the body cannot be read or names no model (or one longer than [`MODEL_MAX`]).
pub fn model_of(content_type: Option<&str>, body: &[u8]) -> Result<String, ApiError> {
    let model = match content_type {
        Some(ct) if media_type(ct).eq_ignore_ascii_case("multipart/form-data") => {
            multipart_field(&boundary(ct)?, body, "model")?
        }
        _ => json_field(body)?,
    };
    let model = model.ok_or_else(|| {
        ApiError::bad_request("the body names no model: set its `model` field to a model id")
    })?;
    if model.len() > MODEL_MAX {
        return Err(over_bound());
    }
    Ok(model)
}

fn over_bound() -> ApiError {
    ApiError::bad_request(format!(
        "the `model` field is over {MODEL_MAX} bytes; GET /v1/models lists the model ids"
    ))
}

fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

/// The `model` field of a JSON object.
fn json_field(body: &[u8]) -> Result<Option<String>, ApiError> {
    #[derive(Deserialize)]
    struct Named {
        #[serde(default)]
        model: Option<String>,
    }
    let unusable =
        |why: String| ApiError::bad_request(format!("the body is not a JSON object: {why}"));
    // A struct would also be read from an array; the body must be an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(unusable("it does not start with `{`".to_owned()));
    }
    serde_json::from_slice::<Named>(body)
        .map(|named| named.model)
        .map_err(|e| unusable(e.to_string()))
}

/// The boundary parameter of a multipart `content_type`.
fn boundary(content_type: &str) -> Result<String, ApiError> {
    let boundary = content_type
        .split(';')
        .skip(1)
        .filter_map(|param| param.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, value)| value.trim().trim_matches('"'))
        .unwrap_or_default();
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b);
    if boundary.is_empty() || boundary.len() > BOUNDARY_MAX || !boundary.bytes().all(allowed) {
        return Err(ApiError::bad_request(
            "a multipart body needs a boundary of 1 to 70 characters in content-type",
        ));
    }
    Ok(boundary.to_owned())
}

fn malformed() -> ApiError {
    ApiError::bad_request("the multipart body is malformed")
}

/// The value of form field `field` in a multipart body; `None` if no part has that name.
fn multipart_field(boundary: &str, body: &[u8], field: &str) -> Result<Option<String>, ApiError> {
    let delimiter = format!("\r\n--{boundary}").into_bytes();
    // The first delimiter may open the body, without the CRLF before it.
    let mut at = if body.starts_with(&delimiter[2..]) {
        delimiter.len() - 2
    } else {
        find(body, &delimiter).ok_or_else(malformed)? + delimiter.len()
    };
    loop {
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            return Ok(None);
        }
        // Transport padding, then the CRLF that ends the delimiter line.
        let line_end = find(rest, b"\r\n").ok_or_else(malformed)?;
        let (name, content) = part_at(body, at + line_end + 2)?;
        if name == Some(field) {
            return field_value(&body[content..], &delimiter).map(Some);
        }
        at = content + find(&body[content..], &delimiter).ok_or_else(malformed)? + delimiter.len();
    }
}

/// The name of the part whose headers start at `start`, and where its content starts.
fn part_at(body: &[u8], start: usize) -> Result<(Option<&str>, usize), ApiError> {
    let rest = &body[start..];
    if rest.starts_with(b"\r\n") {
        return Ok((None, start + 2));
    }
    let window = &rest[..rest.len().min(PART_HEADERS_MAX + 4)];
    let end = find(window, b"\r\n\r\n").ok_or_else(malformed)?;
    Ok((part_name(&window[..end]), start + end + 4))
}

/// A field's value: the content up to the next delimiter, read no further than a model id
/// can be long.
fn field_value(content: &[u8], delimiter: &[u8]) -> Result<String, ApiError> {
    let window = &content[..content.len().min(MODEL_MAX + delimiter.len())];
    let Some(end) = find(window, delimiter) else {
        return Err(if content.len() > MODEL_MAX {
            over_bound()
        } else {
            malformed()
        });
    };
    let text = std::str::from_utf8(&window[..end])
        .map_err(|_| ApiError::bad_request("the `model` field is not UTF-8"))?;
    Ok(text.trim().to_owned())
}

/// The `name` of a part from its headers' `Content-Disposition: form-data; name="…"`.
fn part_name(headers: &[u8]) -> Option<&str> {
    let headers = std::str::from_utf8(headers).ok()?;
    let disposition = headers.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-disposition")
            .then_some(value)
    })?;
    disposition
        .split(';')
        .skip(1)
        .filter_map(|param| param.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("name"))
        .map(|(_, value)| value.trim().trim_matches('"'))
}

/// Where `needle` first occurs in `haystack`. The search is linear for the needles used
/// here: a delimiter starts with CR and holds no other, and the other needles are short.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut at = 0;
    while at + needle.len() <= haystack.len() {
        let offset = haystack[at..].iter().position(|b| *b == first)?;
        at += offset;
        if haystack[at..].starts_with(needle) {
            return Some(at);
        }
        at += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const FORM: &str = "multipart/form-data; boundary=XyZ";

    fn form(parts: &[(&str, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (name, value) in parts {
            body.extend_from_slice(
                format!(
                    "--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                )
                .as_bytes(),
            );
        }
        body.extend_from_slice(b"--XyZ--\r\n");
        body
    }

    #[test]
    fn the_model_is_read_from_a_json_body() {
        let body = br#"{"prompt": "a lighthouse", "model": "meridian/tiny-sd", "n": 1}"#;
        assert_eq!(
            model_of(Some("application/json"), body).unwrap(),
            "meridian/tiny-sd"
        );
        // Without a content type, the body is taken as JSON.
        assert_eq!(model_of(None, body).unwrap(), "meridian/tiny-sd");
        for bad in [
            &br#"{"prompt": "no model"}"#[..],
            br#"{"model": 7}"#,
            br#"["model"]"#,
            b"not json",
            b"",
        ] {
            let err = model_of(Some("application/json"), bad).unwrap_err();
            assert_eq!(err.status, 400, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_model_is_read_from_a_multipart_form() {
        let image = "\u{89}PNG\r\n--Xy\r\n\r\n binary";
        let body = form(&[
            ("image", image),
            ("model", "meridian/esrgan-x4"),
            ("n", "1"),
        ]);
        assert_eq!(model_of(Some(FORM), &body).unwrap(), "meridian/esrgan-x4");
        let quoted = "multipart/form-data; charset=utf-8; boundary=\"XyZ\"";
        assert_eq!(model_of(Some(quoted), &body).unwrap(), "meridian/esrgan-x4");
        // A part with more headers, and a preamble before the first delimiter.
        let mut body = b"preamble\r\n".to_vec();
        body.extend_from_slice(
            b"--XyZ\r\nContent-Type: text/plain\r\ncontent-disposition: form-data; name=model\r\n\r\nmeridian/whisper-tiny-en\r\n--XyZ--",
        );
        assert_eq!(
            model_of(Some(FORM), &body).unwrap(),
            "meridian/whisper-tiny-en"
        );
    }

    #[test]
    fn a_form_without_a_model_or_a_readable_shape_is_refused() {
        let missing = model_of(Some(FORM), &form(&[("prompt", "x")])).unwrap_err();
        assert_eq!(missing.status, 400);
        assert!(missing.message.contains("names no model"), "{missing}");
        for (content_type, body) in [
            (
                FORM,
                &b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nmeridian/a"[..],
            ),
            (FORM, b"no delimiter at all"),
            (
                FORM,
                b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n",
            ),
            ("multipart/form-data", b"--XyZ--"),
            ("multipart/form-data; boundary=\"\"", b"----"),
            ("multipart/form-data; boundary=a\rb", b"--a\rb--"),
        ] {
            let err = model_of(Some(content_type), body).unwrap_err();
            assert_eq!(err.status, 400, "{content_type}: {err}");
        }
        let endless = format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"x\"\r\n{}",
            "h: v\r\n".repeat(2 * PART_HEADERS_MAX)
        );
        assert_eq!(
            model_of(Some(FORM), endless.as_bytes()).unwrap_err().status,
            400
        );
    }

    #[test]
    fn a_model_over_the_bound_is_refused_without_reading_on() {
        let long = "m".repeat(MODEL_MAX + 1);
        let err = model_of(Some(FORM), &form(&[("model", &long)])).unwrap_err();
        assert_eq!(err.status, 400);
        assert!(err.message.contains(&MODEL_MAX.to_string()), "{err}");
        let err = model_of(None, format!(r#"{{"model":"{long}"}}"#).as_bytes()).unwrap_err();
        assert_eq!(err.status, 400);
        let at_bound = "m".repeat(MODEL_MAX);
        assert_eq!(
            model_of(Some(FORM), &form(&[("model", &at_bound)])).unwrap(),
            at_bound
        );
    }
}
