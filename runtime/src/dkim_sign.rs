//! DKIM signing in the relay phase (`dkim-sign`): the signature of an authenticated user's
//! message, computed over the message exactly as it is relayed and sent in front of it.
//!
//! * **Keys** are read when the ruleset is loaded ([`FarmSigner::load`], called by
//!   `shared::Snapshot::new` beside the TLS key), through the parser `mtac check` used
//!   (`mtac_ruleset::dkim::DkimKey`), so a key the compiler accepted is a key the node signs with.
//!   They are not in the ruleset: a pushed, inspected, hashed ruleset is not a secret. A key that
//!   cannot be loaded fails the load (the node does not start, a reload keeps the old ruleset);
//!   a key changed on disk is noticed like a renewed certificate ([`FarmSigner::changed_on_disk`]).
//! * **The message** is what the back end will get: the scanners' header lines, then the spool
//!   file (mtac's Received header and the sender's message after the verdict filter). It is
//!   streamed from the spool through mail-auth's `sign_streaming` in 64 KiB pieces: mail-auth
//!   holds the header section (bounded by the message size, itself bounded by the spool budget)
//!   and hashes the body as it goes, so the body is never copied. The work (hashing, the RSA or
//!   Ed25519 operation) runs on the blocking pool, off the runtime's workers.
//! * **Failure** is `451 4.3.0`: a farm told to sign never relays the message unsigned.

use crate::relayed::Relayed;
use mail_auth::common::crypto::{DkimKey as Key, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use mtac_ruleset::dkim::{Algorithm, DkimKey};
use mtac_ruleset::model::DkimSign;
use rustls_pki_types::PrivateKeyDer;
use std::sync::Arc;

/// The pieces the spool is read in.
const CHUNK: usize = 64 * 1024;

/// Why a farm's keys could not be loaded, or a message not signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("DKIM key {path}: {message}")]
    Key { path: String, message: String },
    #[error("reading the spool: {0}")]
    Spool(#[from] std::io::Error),
    #[error("signing: {0}")]
    Sign(String),
}

type Signer = DkimSigner<Key, Done>;

/// A farm's signing keys, loaded: one signer per `key`, by domain.
pub struct FarmSigner {
    signers: Vec<(String, Arc<Signer>)>,
    /// Each key file and a BLAKE3 hash of what was read from it, to notice a new key.
    stamps: Vec<(String, blake3::Hash)>,
}

impl FarmSigner {
    /// Read and check every key of `settings`.
    pub fn load(settings: &DkimSign) -> Result<FarmSigner, SignError> {
        let mut signers = Vec::with_capacity(settings.keys.len());
        let mut stamps = Vec::with_capacity(settings.keys.len());
        for key in &settings.keys {
            let error = |message: String| SignError::Key { path: key.file.clone(), message };
            let pem = std::fs::read(&key.file).map_err(|e| error(e.to_string()))?;
            let parsed = DkimKey::from_pem(&pem).map_err(|e| error(e.to_string()))?;
            let signing_key: Key = match (parsed.algorithm, parsed.private) {
                (Algorithm::Rsa { .. }, der) => {
                    RsaKey::<Sha256>::from_key_der(der).map_err(|e| error(e.to_string()))?.into()
                }
                (Algorithm::Ed25519, PrivateKeyDer::Pkcs8(der)) => {
                    // v1 PKCS#8 (openssl's) carries no public key: "maybe unchecked" derives it.
                    Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_pkcs8_der())
                        .map_err(|e| error(e.to_string()))?
                        .into()
                }
                (Algorithm::Ed25519, _) => return Err(error("an Ed25519 key must be PKCS#8".into())),
            };
            let signer = DkimSigner::from_key(signing_key)
                .domain(key.domain.clone())
                .selector(key.selector.clone())
                .headers(settings.headers.clone())
                .header_canonicalization(Canonicalization::Relaxed)
                .body_canonicalization(Canonicalization::Relaxed);
            signers.push((key.domain.clone(), Arc::new(signer)));
            stamps.push((key.file.clone(), blake3::hash(&pem)));
        }
        Ok(FarmSigner { signers, stamps })
    }

    /// The signer of the key for `domain` (a domain of the farm's `dkim-sign`).
    fn signer(&self, domain: &str) -> Option<Arc<Signer>> {
        self.signers.iter().find(|(d, _)| d == domain).map(|(_, signer)| signer.clone())
    }

    /// Whether a key file holds something else than what was loaded (or cannot be read).
    pub fn changed_on_disk(&self) -> bool {
        self.stamps.iter().any(|(path, hash)| std::fs::read(path).ok().map(|bytes| blake3::hash(&bytes)) != Some(*hash))
    }

    /// The `DKIM-Signature` field (CRLF-terminated) of the message `prefix` + `message` (the
    /// spool file, or the milters' edits over it: what is relayed), signed by `domain`'s key.
    pub async fn sign(&self, domain: &str, prefix: &[u8], mut message: Relayed) -> Result<String, SignError> {
        let signer = self.signer(domain).ok_or_else(|| SignError::Sign(format!("no key for {domain}")))?;
        let prefix = prefix.to_vec();
        let work = tokio::task::spawn_blocking(move || {
            let mut stream = signer.sign_streaming();
            stream.write(&prefix);
            // Bytes in memory are lent; only a spool file's are read, into `scratch`.
            let mut scratch = Vec::new();
            loop {
                let chunk = message.next_chunk(CHUNK, &mut scratch)?;
                if chunk.is_empty() {
                    break;
                }
                stream.write(chunk);
            }
            let signature = stream.finish().map_err(|e| SignError::Sign(e.to_string()))?;
            Ok::<_, SignError>(signature.to_header())
        });
        work.await.map_err(|e| SignError::Sign(format!("the signing task ended: {e}")))?
    }
}
