//! Links to output files that work without an API key, as hosted platforms' CDN links do:
//! `{public}/v1/requests/{id}/files/{name}?expires={unix s}&signature={hex}`.
//!
//! The signature is an HMAC-SHA256 over the request id, the file name and the expiry, under
//! a key this agent makes at its first start and keeps in `<data_dir>/keys/file-links.key`
//! (mode 0600). The key never leaves the region, and only this agent — which holds the
//! files — checks its links: an altered or expired link is `403`. Every answer that shows a
//! file signs a fresh link, valid [`LINK_TTL_S`].

use std::io::{Read, Write};
use std::path::Path;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// How long a link stays valid after the answer that showed it, in seconds (24 h).
pub const LINK_TTL_S: u64 = 24 * 3600;
/// The key file, under the data directory.
pub const KEY_FILE: &str = "keys/file-links.key";
const KEY_BYTES: usize = 32;

/// Signs and checks file links.
#[derive(Clone)]
pub struct FileLinks {
    key: [u8; KEY_BYTES],
}

impl std::fmt::Debug for FileLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileLinks { key: <redacted> }")
    }
}

/// Why a link was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// `expires` or `signature` is missing or not well formed.
    #[error("the link is malformed: it needs expires and signature")]
    Malformed,
    /// The signature does not match the request, file and expiry.
    #[error("the link's signature does not match it")]
    BadSignature,
    /// The link's time is over.
    #[error("the link expired")]
    Expired,
}

impl FileLinks {
    /// The agent's key from `data_dir`, made (32 random bytes, mode 0600) when there is none.
    ///
    /// # Errors
    ///
    /// The key file cannot be read or created, or has another length.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let path = data_dir.join(KEY_FILE);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&path) {
            Ok(mut file) => {
                let key: [u8; KEY_BYTES] = rand::random();
                file.write_all(&key)?;
                file.sync_all()?;
                contract::fs::sync_dir(path.parent().unwrap_or(data_dir))
                    .map_err(std::io::Error::other)?;
                Ok(Self { key })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let mut bytes = Vec::with_capacity(KEY_BYTES);
                std::fs::File::open(&path)?
                    .take(KEY_BYTES as u64 + 1)
                    .read_to_end(&mut bytes)?;
                let key = <[u8; KEY_BYTES]>::try_from(bytes.as_slice()).map_err(|_| {
                    std::io::Error::other(format!(
                        "{} must hold {KEY_BYTES} bytes; delete it to make a new key (links \
                         shown before stop working)",
                        path.display()
                    ))
                })?;
                Ok(Self { key })
            }
            Err(e) => Err(e),
        }
    }

    /// Links under a given key (tests).
    pub fn with_key(key: [u8; KEY_BYTES]) -> Self {
        Self { key }
    }

    fn mac(&self, id: &str, name: &str, expires: u64) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(format!("{id}\n{name}\n{expires}").as_bytes());
        mac
    }

    /// The query (`expires=…&signature=…`) of a link to file `name` of request `id`, valid
    /// until `expires` (Unix seconds).
    pub fn query(&self, id: &str, name: &str, expires: u64) -> String {
        let signature = hex::encode(self.mac(id, name, expires).finalize().into_bytes());
        format!("expires={expires}&signature={signature}")
    }

    /// The link to file `name` of request `id`, under `public` (the edge's address the client
    /// used; a path alone without it), valid [`LINK_TTL_S`] from `now_s`.
    pub fn url(&self, public: Option<&str>, id: &str, name: &str, now_s: u64) -> String {
        let query = self.query(id, name, now_s.saturating_add(LINK_TTL_S));
        format!(
            "{}/v1/requests/{id}/files/{name}?{query}",
            public.unwrap_or("")
        )
    }

    /// Checks a link's `expires` and `signature` (as given in its query) at `now_s`.
    ///
    /// # Errors
    ///
    /// Why the link does not open the file.
    pub fn check(
        &self,
        id: &str,
        name: &str,
        expires: Option<&str>,
        signature: Option<&str>,
        now_s: u64,
    ) -> Result<(), LinkError> {
        let expires: u64 = expires
            .and_then(|e| e.parse().ok())
            .ok_or(LinkError::Malformed)?;
        let signature = signature
            .and_then(|s| hex::decode(s).ok())
            .ok_or(LinkError::Malformed)?;
        self.mac(id, name, expires)
            .verify_slice(&signature)
            .map_err(|_| LinkError::BadSignature)?;
        if expires <= now_s {
            return Err(LinkError::Expired);
        }
        Ok(())
    }

    /// `output` with each file object's `url` replaced by a signed link (absolute under
    /// `public` when given).
    pub fn sign_output(&self, output: &mut Value, public: Option<&str>, id: &str, now_s: u64) {
        let Value::Object(fields) = output else {
            return;
        };
        for value in fields.values_mut() {
            let Some(file) = value.as_object_mut() else {
                continue;
            };
            let Some(name) = file.get("name").and_then(Value::as_str).map(str::to_owned) else {
                continue;
            };
            if file.contains_key("url") && file.contains_key("content_type") {
                file.insert(
                    "url".into(),
                    Value::String(self.url(public, id, &name, now_s)),
                );
            }
        }
    }
}

/// Unix time in seconds.
pub fn now_s() -> u64 {
    crate::jobs::now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "eu-west.0123456789abcdef0123456789abcdef";

    fn parts(url: &str) -> (String, String) {
        let query = url.split_once('?').unwrap().1;
        let mut expires = String::new();
        let mut signature = String::new();
        for pair in query.split('&') {
            match pair.split_once('=').unwrap() {
                ("expires", v) => expires = v.to_owned(),
                ("signature", v) => signature = v.to_owned(),
                _ => {}
            }
        }
        (expires, signature)
    }

    #[test]
    fn a_link_opens_its_file_until_it_expires_and_nothing_else() {
        let links = FileLinks::with_key([7; 32]);
        let url = links.url(Some("https://edge.example"), ID, "image.png", 1000);
        assert!(url.starts_with(&format!(
            "https://edge.example/v1/requests/{ID}/files/image.png?expires={}&signature=",
            1000 + LINK_TTL_S
        )));
        let (expires, signature) = parts(&url);
        let check = |id, name, expires: &str, signature: &str, now| {
            links.check(id, name, Some(expires), Some(signature), now)
        };
        assert_eq!(check(ID, "image.png", &expires, &signature, 1000), Ok(()));
        let last = 1000 + LINK_TTL_S;
        assert_eq!(
            check(ID, "image.png", &expires, &signature, last),
            Err(LinkError::Expired)
        );
        // Another file, request or expiry under the same signature.
        assert_eq!(
            check(ID, "video.mp4", &expires, &signature, 1000),
            Err(LinkError::BadSignature)
        );
        let other = "eu-west.ffffffffffffffffffffffffffffffff";
        assert_eq!(
            check(other, "image.png", &expires, &signature, 1000),
            Err(LinkError::BadSignature)
        );
        let later = (last + 3600).to_string();
        assert_eq!(
            check(ID, "image.png", &later, &signature, 1000),
            Err(LinkError::BadSignature)
        );
        // Another agent's key.
        let other_agent = FileLinks::with_key([8; 32]);
        assert_eq!(
            other_agent.check(ID, "image.png", Some(&expires), Some(&signature), 1000),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            links.check(ID, "image.png", None, Some(&signature), 1000),
            Err(LinkError::Malformed)
        );
        assert_eq!(
            links.check(ID, "image.png", Some(&expires), Some("zz"), 1000),
            Err(LinkError::Malformed)
        );
    }

    #[test]
    fn the_key_is_made_once_kept_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let first = FileLinks::open(dir.path()).unwrap();
        let again = FileLinks::open(dir.path()).unwrap();
        assert_eq!(first.key, again.key);
        let path = dir.path().join(KEY_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, b"short").unwrap();
        let err = FileLinks::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("must hold 32 bytes"), "{err}");
    }

    #[test]
    fn file_objects_in_an_output_get_signed_links() {
        let links = FileLinks::with_key([1; 32]);
        let mut output = serde_json::json!({
            "image": {"name": "image.png", "content_type": "image/png",
                      "url": format!("/v1/requests/{ID}/files/image.png"), "bytes": 10},
            "text": "not a file",
        });
        links.sign_output(&mut output, Some("https://e"), ID, 5);
        let url = output["image"]["url"].as_str().unwrap();
        assert!(url.starts_with(&format!("https://e/v1/requests/{ID}/files/image.png?")));
        assert_eq!(output["text"], "not a file");
    }
}
