//! API keys: their format, hashing and constant-time check (docs/design.md §2, §4).
//!
//! A key reads `mk_live_<id>_<secret>`: `id` is 12 characters of `a–z0–9` (public: it names
//! the key in logs and the admin API), `secret` is 40 characters of `A–Za–z0–9` (about 238
//! bits). The full key is shown once, at creation; Meridian stores only its id and a SHA-256
//! hash of the whole key. A slow password hash is not needed: the secret is random and long,
//! so it cannot be guessed from its hash. Hashes are compared in constant time.

use std::collections::HashMap;
use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use contract::ids::TenantId;

/// The prefix every key starts with.
pub const KEY_PREFIX: &str = "mk_live_";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 40;
const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// Domain separation, so these hashes can never be confused with another use of SHA-256.
const HASH_CONTEXT: &[u8] = b"meridian api key v1\0";

/// Why a presented key was not accepted. All of these are a 401 to the client, which is told
/// nothing more; the distinction is for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No `Authorization` header.
    #[error("no API key: send `Authorization: Key <key>` or `Authorization: Bearer <key>`")]
    Missing,
    /// The header is not `Key …` or `Bearer …`.
    #[error("the Authorization header must be `Key <key>` or `Bearer <key>`")]
    BadScheme,
    /// The key does not have the `mk_live_<id>_<secret>` shape.
    #[error("the API key is malformed: Meridian keys look like mk_live_<id>_<secret>")]
    Malformed,
    /// No key with this id exists.
    #[error("unknown API key")]
    Unknown,
    /// The id exists but the secret is wrong.
    #[error("wrong API key")]
    Mismatch,
    /// The key was revoked.
    #[error("the API key was revoked")]
    Revoked,
}

/// The public id of a key (`mk_live_<id>_…`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyId(String);

impl KeyId {
    /// Checks the id's shape.
    pub fn new(id: &str) -> Result<Self, KeyError> {
        if id.len() == ID_LEN && id.bytes().all(|b| ID_ALPHABET.contains(&b)) {
            Ok(Self(id.to_owned()))
        } else {
            Err(KeyError::Malformed)
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for KeyId {
    type Error = KeyError;
    fn try_from(s: String) -> Result<Self, KeyError> {
        Self::new(&s)
    }
}

impl From<KeyId> for String {
    fn from(id: KeyId) -> String {
        id.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// SHA-256 of a whole key, stored instead of the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// The hash of `key` (the full `mk_live_…` text).
    pub fn of(key: &str) -> Self {
        let mut h = Sha256::new();
        h.update(HASH_CONTEXT);
        h.update(key.as_bytes());
        Self(h.finalize().into())
    }

    /// Whether `key` hashes to this, compared in constant time.
    pub fn matches(&self, key: &str) -> bool {
        self.0.ct_eq(&Self::of(key).0).into()
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({})", hex::encode(&self.0[..4]))
    }
}

impl TryFrom<String> for KeyHash {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out)
            .map_err(|_| "a key hash is 64 hexadecimal characters".to_owned())?;
        Ok(Self(out))
    }
}

impl From<KeyHash> for String {
    fn from(h: KeyHash) -> String {
        hex::encode(h.0)
    }
}

/// What Meridian stores about a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public id.
    pub id: KeyId,
    /// Tenant the key acts for.
    pub tenant: TenantId,
    /// Hash of the whole key.
    pub hash: KeyHash,
    /// Free-text label, e.g. `ci`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Revocation time, Unix seconds, once revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
}

/// A freshly generated key: the secret text (show it once) and the record to store.
#[derive(Debug)]
pub struct NewKey {
    /// The full key, `mk_live_<id>_<secret>`. Never store or log it.
    pub key: String,
    /// What to store.
    pub record: ApiKeyRecord,
}

/// Generates a key for `tenant` from `rng`. Services must pass a cryptographically secure
/// generator seeded by the operating system, such as `rand::rng()`; only tests pass a seeded
/// one.
pub fn generate(
    rng: &mut impl Rng,
    tenant: TenantId,
    label: Option<String>,
    now_unix: i64,
) -> NewKey {
    let id: String = (0..ID_LEN)
        .map(|_| char::from(ID_ALPHABET[rng.random_range(0..ID_ALPHABET.len())]))
        .collect();
    let secret: String = (0..SECRET_LEN)
        .map(|_| char::from(SECRET_ALPHABET[rng.random_range(0..SECRET_ALPHABET.len())]))
        .collect();
    let key = format!("{KEY_PREFIX}{id}_{secret}");
    NewKey {
        record: ApiKeyRecord {
            id: KeyId(id),
            tenant,
            hash: KeyHash::of(&key),
            label,
            created_at: now_unix,
            revoked_at: None,
        },
        key,
    }
}

/// Splits a presented key into its id, checking its shape.
pub fn parse(key: &str) -> Result<KeyId, KeyError> {
    let rest = key.strip_prefix(KEY_PREFIX).ok_or(KeyError::Malformed)?;
    let (id, secret) = rest.split_once('_').ok_or(KeyError::Malformed)?;
    if secret.len() != SECRET_LEN || !secret.bytes().all(|b| SECRET_ALPHABET.contains(&b)) {
        return Err(KeyError::Malformed);
    }
    KeyId::new(id)
}

/// Extracts the key from an `Authorization` header value: `Key <key>` or `Bearer <key>`
/// (scheme case-insensitive).
pub fn from_authorization(header: Option<&str>) -> Result<&str, KeyError> {
    let header = header.ok_or(KeyError::Missing)?.trim();
    let (scheme, key) = header.split_once(' ').ok_or(KeyError::BadScheme)?;
    if scheme.eq_ignore_ascii_case("key") || scheme.eq_ignore_ascii_case("bearer") {
        Ok(key.trim())
    } else {
        Err(KeyError::BadScheme)
    }
}

/// The keys an edge knows, by id, for authenticating requests.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    keys: HashMap<KeyId, ApiKeyRecord>,
}

impl KeyRing {
    /// A key ring holding `records` (a later record with the same id replaces an earlier).
    pub fn new(records: impl IntoIterator<Item = ApiKeyRecord>) -> Self {
        Self {
            keys: records.into_iter().map(|r| (r.id.clone(), r)).collect(),
        }
    }

    /// Number of keys, revoked ones included.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The record of the presented key, if it is well formed, known, not revoked and its
    /// secret matches.
    pub fn authenticate(&self, key: &str) -> Result<&ApiKeyRecord, KeyError> {
        let id = parse(key)?;
        let record = self.keys.get(&id).ok_or(KeyError::Unknown)?;
        // Check the secret before revocation, so a revoked key's holder learns nothing a
        // guesser would not.
        if !record.hash.matches(key) {
            return Err(KeyError::Mismatch);
        }
        if record.revoked_at.is_some() {
            return Err(KeyError::Revoked);
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn tenant() -> TenantId {
        TenantId::new("acme").unwrap()
    }

    #[test]
    fn generated_keys_have_the_documented_shape_and_verify() {
        let mut rng = StdRng::seed_from_u64(7);
        let new = generate(&mut rng, tenant(), Some("ci".into()), 1_700_000_000);
        assert!(new.key.starts_with("mk_live_"));
        assert_eq!(new.key.len(), KEY_PREFIX.len() + ID_LEN + 1 + SECRET_LEN);
        assert_eq!(parse(&new.key).unwrap(), new.record.id);
        assert!(new.record.hash.matches(&new.key));
        assert!(!new.key.contains(&String::from(new.record.hash.clone())));
        let other = generate(&mut rng, tenant(), None, 0);
        assert_ne!(other.key, new.key);
        assert!(!new.record.hash.matches(&other.key));
    }

    #[test]
    fn authenticate_tells_the_causes_apart() {
        let mut rng = StdRng::seed_from_u64(1);
        let good = generate(&mut rng, tenant(), None, 0);
        let mut revoked = generate(&mut rng, tenant(), None, 0);
        revoked.record.revoked_at = Some(10);
        let ring = KeyRing::new([good.record.clone(), revoked.record.clone()]);

        assert_eq!(ring.authenticate(&good.key).unwrap().tenant, tenant());
        assert_eq!(ring.authenticate(&revoked.key), Err(KeyError::Revoked));
        let unknown = generate(&mut rng, tenant(), None, 0);
        assert_eq!(ring.authenticate(&unknown.key), Err(KeyError::Unknown));
        // Same id, different secret.
        let forged = format!("{KEY_PREFIX}{}_{}", good.record.id, "A".repeat(SECRET_LEN));
        assert_eq!(ring.authenticate(&forged), Err(KeyError::Mismatch));
        for bad in [
            "",
            "mk_live_",
            "mk_test_abc_def",
            "mk_live_short_x",
            &good.key[1..],
        ] {
            assert_eq!(ring.authenticate(bad), Err(KeyError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn authorization_header_forms() {
        assert_eq!(from_authorization(Some("Key abc")), Ok("abc"));
        assert_eq!(from_authorization(Some("bearer  abc ")), Ok("abc"));
        assert_eq!(
            from_authorization(Some("Basic abc")),
            Err(KeyError::BadScheme)
        );
        assert_eq!(from_authorization(Some("abc")), Err(KeyError::BadScheme));
        assert_eq!(from_authorization(None), Err(KeyError::Missing));
    }

    #[test]
    fn records_round_trip_without_the_secret() {
        let mut rng = StdRng::seed_from_u64(3);
        let new = generate(&mut rng, tenant(), None, 42);
        let json = serde_json::to_string(&new.record).unwrap();
        assert!(!json.contains(&new.key[KEY_PREFIX.len() + ID_LEN + 1..]));
        let back: ApiKeyRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, new.record);
        assert!(
            serde_json::from_str::<ApiKeyRecord>(
                &json.replace(&String::from(new.record.hash.clone()), "zz")
            )
            .is_err()
        );
    }
}
