//! Idempotency keys (`Idempotency-Key`, [`contract::headers::IDEMPOTENCY_KEY`]): the same
//! key from the same tenant names the same job, so a submission sent again (a retry after a
//! lost answer) gets the first one's request id instead of a second job.
//!
//! A keyed job's record carries its key and a fingerprint of what was submitted (model,
//! priority and input), so the index survives a restart ([`KeyIndex::insert`] at restore).
//! A keyed job is kept at least [`contract::headers::IDEMPOTENCY_WINDOW_SECS`] after it was
//! accepted (longer than the result retention when that is shorter), so the key holds for
//! the whole window; the index holds only jobs the store keeps, so it is bounded by them.
//! The same key with something else submitted is refused (`idempotency_key_reused`).

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};

use contract::headers::{IDEMPOTENCY_KEY, IDEMPOTENCY_KEY_MAX_LEN};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Priority;

/// A client's idempotency key: 1 to [`IDEMPOTENCY_KEY_MAX_LEN`] bytes of visible ASCII.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Checks a header value; the error says what a key must look like.
    pub fn parse(value: &[u8]) -> Result<Self, String> {
        let visible = value.iter().all(u8::is_ascii_graphic);
        if value.is_empty() || value.len() > IDEMPOTENCY_KEY_MAX_LEN || !visible {
            return Err(format!(
                "the {IDEMPOTENCY_KEY} header must be 1 to {IDEMPOTENCY_KEY_MAX_LEN} bytes of \
                 visible ASCII (got {} bytes)",
                value.len()
            ));
        }
        Ok(Self(String::from_utf8_lossy(value).into_owned()))
    }

    /// The key as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a keyed job's record remembers of its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Idempotency {
    /// The key as the client sent it.
    pub key: String,
    /// SHA-256 (hex) of the model, priority and input submitted with it.
    pub fingerprint: String,
}

/// The fingerprint of a submission: the same model, priority and input give the same one.
pub fn fingerprint(model: &str, priority: Priority, input: &Value) -> String {
    let mut hash = Sha256::new();
    hash.update(model.as_bytes());
    hash.update([0]);
    hash.update(format!("{priority:?}").as_bytes());
    hash.update([0]);
    // serde_json writes an object's keys in order, so equal inputs give equal bytes.
    hash.update(input.to_string().as_bytes());
    hex::encode(hash.finalize())
}

/// What a key names now.
#[derive(Debug, Clone)]
enum Entry {
    /// A submission with it is being accepted.
    Accepting,
    /// The job it names.
    Job { id: String, fingerprint: String },
}

/// What [`KeyIndex::claim`] found.
#[derive(Debug)]
pub enum Claim<'a> {
    /// The key is new: the caller accepts the job and settles the claim (dropping it
    /// unsettled frees the key again).
    New(Pending<'a>),
    /// The key names this job, submitted with the same fingerprint.
    Existing(String),
    /// The key names a job submitted with something else.
    Reused,
}

/// Keys of the jobs the store keeps, per tenant.
#[derive(Debug, Default)]
pub struct KeyIndex {
    entries: Mutex<HashMap<(String, String), Entry>>,
    changed: Condvar,
}

impl KeyIndex {
    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks `key` up for `tenant`, waiting while another submission with it is being
    /// accepted; a new key is held for the caller until it settles the claim.
    pub fn claim<'a>(&'a self, tenant: &str, key: &IdempotencyKey, fingerprint: &str) -> Claim<'a> {
        let slot = (tenant.to_owned(), key.as_str().to_owned());
        let mut entries = self.lock();
        loop {
            match entries.get(&slot) {
                Some(Entry::Accepting) => {
                    entries = self
                        .changed
                        .wait(entries)
                        .unwrap_or_else(|e| e.into_inner());
                }
                Some(Entry::Job { id, fingerprint: f }) if f == fingerprint => {
                    return Claim::Existing(id.clone());
                }
                Some(Entry::Job { .. }) => return Claim::Reused,
                None => {
                    entries.insert(slot.clone(), Entry::Accepting);
                    return Claim::New(Pending {
                        index: self,
                        slot: Some(slot),
                    });
                }
            }
        }
    }

    /// Whether `key` names a job (or one being accepted) of `tenant`.
    pub fn contains(&self, tenant: &str, key: &IdempotencyKey) -> bool {
        self.lock()
            .contains_key(&(tenant.to_owned(), key.as_str().to_owned()))
    }

    /// Records a kept job's key (at restore).
    pub fn insert(&self, tenant: &str, idempotency: &Idempotency, id: &str) {
        self.lock().insert(
            (tenant.to_owned(), idempotency.key.clone()),
            Entry::Job {
                id: id.to_owned(),
                fingerprint: idempotency.fingerprint.clone(),
            },
        );
    }

    /// Forgets a deleted job's key.
    pub fn remove(&self, tenant: &str, key: &str, id: &str) {
        let slot = (tenant.to_owned(), key.to_owned());
        let mut entries = self.lock();
        if matches!(entries.get(&slot), Some(Entry::Job { id: named, .. }) if named == id) {
            entries.remove(&slot);
        }
    }

    /// Keys held (jobs kept and submissions being accepted).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn settle(&self, slot: (String, String), entry: Option<Entry>) {
        let mut entries = self.lock();
        match entry {
            Some(entry) => entries.insert(slot, entry),
            None => entries.remove(&slot),
        };
        drop(entries);
        self.changed.notify_all();
    }
}

/// A new key held while its job is being accepted.
#[derive(Debug)]
pub struct Pending<'a> {
    index: &'a KeyIndex,
    slot: Option<(String, String)>,
}

impl Pending<'_> {
    /// The job was accepted: the key names it from now on.
    pub fn accepted(mut self, id: &str, fingerprint: &str) {
        if let Some(slot) = self.slot.take() {
            let entry = Entry::Job {
                id: id.to_owned(),
                fingerprint: fingerprint.to_owned(),
            };
            self.index.settle(slot, Some(entry));
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.index.settle(slot, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key(text: &str) -> IdempotencyKey {
        IdempotencyKey::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_key_is_visible_ascii_of_bounded_length() {
        assert!(IdempotencyKey::parse(b"order-17/retry:2").is_ok());
        assert!(IdempotencyKey::parse(&[b'k'; IDEMPOTENCY_KEY_MAX_LEN]).is_ok());
        assert!(IdempotencyKey::parse(&[b'k'; IDEMPOTENCY_KEY_MAX_LEN + 1]).is_err());
        assert!(IdempotencyKey::parse(b"").is_err());
        assert!(IdempotencyKey::parse(b"tab\there").is_err());
        assert!(IdempotencyKey::parse(b"a space").is_err());
        assert!(IdempotencyKey::parse("clé".as_bytes()).is_err());
    }

    #[test]
    fn the_fingerprint_follows_what_was_submitted() {
        let a = fingerprint("m/a", Priority::Normal, &json!({"x": 1, "y": 2}));
        assert_eq!(
            a,
            fingerprint("m/a", Priority::Normal, &json!({"y": 2, "x": 1}))
        );
        assert_ne!(
            a,
            fingerprint("m/b", Priority::Normal, &json!({"x": 1, "y": 2}))
        );
        assert_ne!(
            a,
            fingerprint("m/a", Priority::High, &json!({"x": 1, "y": 2}))
        );
        assert_ne!(
            a,
            fingerprint("m/a", Priority::Normal, &json!({"x": 1, "y": 3}))
        );
    }

    #[test]
    fn a_claim_names_one_job_per_tenant_and_key() {
        let index = KeyIndex::default();
        let k = key("k1");
        match index.claim("acme", &k, "f1") {
            Claim::New(pending) => pending.accepted("job-1", "f1"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(index.claim("acme", &k, "f1"), Claim::Existing(id) if id == "job-1"));
        assert!(matches!(index.claim("acme", &k, "f2"), Claim::Reused));
        // Another tenant's key is its own.
        assert!(matches!(index.claim("globex", &k, "f2"), Claim::New(_)));
        // A claim dropped unsettled frees the key.
        assert!(!index.contains("globex", &k));
        index.remove("acme", "k1", "job-1");
        assert!(index.is_empty());
    }
}
