//! How webhooks are signed. One 32-byte seed (the `[webhooks] signing_key_file`, made when
//! missing) gives both schemes the compatible surfaces use:
//!
//! - **Standard Webhooks** (native and Replicate): each tenant's secret is
//!   HMAC-SHA256(seed, `"meridian webhook secret\n" + tenant`), shown to the tenant as
//!   `whsec_<base64>` (`GET /v1/webhooks/default/secret`); a delivery carries `webhook-id`,
//!   `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256(secret,
//!   "{id}.{timestamp}.{body}")>`.
//! - **fal**: the seed is an Ed25519 signing key; a delivery carries
//!   `X-Fal-Webhook-{Request-Id,User-Id,Timestamp,Signature}`, the signature (hex) over
//!   `request_id\nuser_id\ntimestamp\nhex(sha256(body))`, and the public key is served as a
//!   JWKS document (`GET /fal/.well-known/jwks.json`).
//!
//! Every agent of a deployment must hold the same seed (the operator copies the file), so a
//! tenant's secret and the JWKS are the same whichever region answers or delivers.

use std::io::{Read, Write};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signer, SigningKey};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const SEED_BYTES: usize = 32;

/// The deployment's webhook signing keys.
#[derive(Clone)]
pub struct SigningKeys {
    seed: [u8; SEED_BYTES],
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKeys { seed: <redacted> }")
    }
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(message);
    mac.finalize().into_bytes().into()
}

impl SigningKeys {
    /// The keys from `path`, made (32 random bytes, mode 0600) when it does not exist. Agents
    /// starting at once on one file agree: the file appears whole or not at all.
    ///
    /// # Errors
    ///
    /// The file cannot be read or made, or holds another length.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if !path.exists() {
            let seed: [u8; SEED_BYTES] = rand::random();
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&tmp)?;
            file.write_all(&seed)?;
            file.sync_all()?;
            // A link never replaces a file another agent made first.
            let linked = std::fs::hard_link(&tmp, path);
            std::fs::remove_file(&tmp)?;
            match linked {
                Ok(()) => return Ok(Self { seed }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        let mut bytes = Vec::with_capacity(SEED_BYTES);
        std::fs::File::open(path)?
            .take(SEED_BYTES as u64 + 1)
            .read_to_end(&mut bytes)?;
        let seed = <[u8; SEED_BYTES]>::try_from(bytes.as_slice()).map_err(|_| {
            std::io::Error::other(format!(
                "{} must hold {SEED_BYTES} bytes (it is the deployment's webhook signing key)",
                path.display()
            ))
        })?;
        Ok(Self { seed })
    }

    /// Keys from a given seed (tests).
    pub fn from_seed(seed: [u8; SEED_BYTES]) -> Self {
        Self { seed }
    }

    fn tenant_secret(&self, tenant: &str) -> [u8; 32] {
        hmac(
            &self.seed,
            format!("meridian webhook secret\n{tenant}").as_bytes(),
        )
    }

    /// `tenant`'s Standard Webhooks secret as it is shown: `whsec_<base64>`.
    pub fn shown_secret(&self, tenant: &str) -> String {
        format!("whsec_{}", STANDARD.encode(self.tenant_secret(tenant)))
    }

    /// The `webhook-signature` value of message `id` sent at `timestamp` with `body`.
    pub fn standard_signature(
        &self,
        tenant: &str,
        id: &str,
        timestamp: u64,
        body: &[u8],
    ) -> String {
        let mut message = format!("{id}.{timestamp}.").into_bytes();
        message.extend_from_slice(body);
        let mac = hmac(&self.tenant_secret(tenant), &message);
        format!("v1,{}", STANDARD.encode(mac))
    }

    fn signing_key(&self) -> SigningKey {
        SigningKey::from_bytes(&self.seed)
    }

    /// fal's signature (hex) of a delivery for `request_id` of `user_id` at `timestamp`.
    pub fn fal_signature(
        &self,
        request_id: &str,
        user_id: &str,
        timestamp: u64,
        body: &[u8],
    ) -> String {
        let digest = hex::encode(Sha256::digest(body));
        let message = format!("{request_id}\n{user_id}\n{timestamp}\n{digest}");
        hex::encode(self.signing_key().sign(message.as_bytes()).to_bytes())
    }

    /// The JWKS document of the public key fal's signatures verify with.
    pub fn jwks(&self) -> Value {
        let public = self.signing_key().verifying_key().to_bytes();
        let kid = hex::encode(&Sha256::digest(public)[..8]);
        json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
            "kid": kid, "x": URL_SAFE_NO_PAD.encode(public),
        }]})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};

    #[test]
    fn a_standard_signature_verifies_with_the_tenants_shown_secret_only() {
        let keys = SigningKeys::from_seed([3; 32]);
        let shown = keys.shown_secret("acme");
        let secret = STANDARD.decode(shown.trim_start_matches("whsec_")).unwrap();
        let signature = keys.standard_signature("acme", "msg_1", 1_700_000_000, b"{}");
        let expected = hmac(&secret, b"msg_1.1700000000.{}");
        assert_eq!(signature, format!("v1,{}", STANDARD.encode(expected)));
        assert_ne!(keys.shown_secret("globex"), shown);
        assert_ne!(SigningKeys::from_seed([4; 32]).shown_secret("acme"), shown);
    }

    #[test]
    fn a_fal_signature_verifies_with_the_jwks_key() {
        let keys = SigningKeys::from_seed([5; 32]);
        let body = br#"{"status":"OK"}"#;
        let signature = keys.fal_signature("eu-west.ab", "acme", 1_700_000_000, body);
        let jwk = &keys.jwks()["keys"][0];
        let public: [u8; 32] = URL_SAFE_NO_PAD
            .decode(jwk["x"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let key = VerifyingKey::from_bytes(&public).unwrap();
        let digest = hex::encode(Sha256::digest(body));
        let message = format!("eu-west.ab\nacme\n1700000000\n{digest}");
        let signature = Signature::from_slice(&hex::decode(signature).unwrap()).unwrap();
        assert!(key.verify(message.as_bytes(), &signature).is_ok());
        assert!(key.verify(b"another message", &signature).is_err());
    }

    #[test]
    fn agents_starting_on_one_file_share_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/webhook.key");
        let first = SigningKeys::open(&path).unwrap();
        let second = SigningKeys::open(&path).unwrap();
        assert_eq!(first.seed, second.seed);
        std::fs::write(&path, b"short").unwrap();
        assert!(SigningKeys::open(&path).is_err());
    }
}
