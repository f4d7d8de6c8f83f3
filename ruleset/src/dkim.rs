//! DKIM private keys as operators keep them: one PEM file per signing domain and selector.
//!
//! The compiler (`mtac check`: is the key usable and strong enough?), the node (the key it signs
//! with) and `mtac dkim-record` (the DNS record to publish) all read a key file through
//! [`DkimKey::from_pem`], so the three cannot disagree on what a usable key is.
//!
//! Accepted: RSA keys in PKCS#8 (`BEGIN PRIVATE KEY`, what `openssl genpkey` writes) or PKCS#1
//! (`BEGIN RSA PRIVATE KEY`, what older `openssl genrsa` and opendkim-genkey write), and Ed25519
//! keys in PKCS#8 (RFC 8463), v1 or v2. RSA keys of fewer than 2048 bits are refused: RFC 8301
//! requires verifiers to accept at least 1024 but signers to use 2048 or more, and Gmail and
//! Microsoft treat 1024-bit signatures as weak. ring, the one crypto provider, validates every
//! key (it refuses RSA keys under 2048 bits too, so a weak key could not sign anyway).

use base64::Engine;
use ring::signature::KeyPair;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

/// The smallest RSA key accepted (RFC 8301 §3.2).
pub const MIN_RSA_BITS: usize = 2048;

/// The DER of the OID rsaEncryption (1.2.840.113549.1.1.1).
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// The DER of the OID id-Ed25519 (1.3.101.112).
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// What kind of key a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Rsa { bits: usize },
    Ed25519,
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Algorithm::Rsa { bits } => write!(f, "RSA-{bits}"),
            Algorithm::Ed25519 => f.write_str("Ed25519"),
        }
    }
}

/// Why a key file cannot sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no private key in it (expected PEM: BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)")]
    NotPem,
    #[error("a {0} key: DKIM signs with RSA (RFC 6376) or Ed25519 (RFC 8463) only")]
    Unsupported(&'static str),
    #[error("a {bits}-bit RSA key is too weak to sign with: use {MIN_RSA_BITS} bits or more (RFC 8301)")]
    Weak { bits: usize },
    #[error("not a valid key: {0}")]
    Invalid(String),
}

/// A private key read from its PEM file, checked, with its public half.
pub struct DkimKey {
    pub algorithm: Algorithm,
    /// The private key as read (PKCS#1 or PKCS#8 DER), for the signer to load.
    pub private: PrivateKeyDer<'static>,
    /// RSA: the public key as SubjectPublicKeyInfo DER; Ed25519: the 32 raw bytes (RFC 8463).
    public: Vec<u8>,
}

impl std::fmt::Debug for DkimKey {
    /// Never the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimKey").field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

impl DkimKey {
    /// Read and check a PEM key file's bytes.
    pub fn from_pem(pem: &[u8]) -> Result<DkimKey, KeyError> {
        let private = PrivateKeyDer::from_pem_slice(pem).map_err(|_| KeyError::NotPem)?;
        let (algorithm, public) = match &private {
            PrivateKeyDer::Pkcs1(der) => rsa(der.secret_pkcs1_der())?,
            PrivateKeyDer::Pkcs8(der) => {
                let pkcs8 = der.secret_pkcs8_der();
                let (oid, inner) = pkcs8_parts(pkcs8).ok_or_else(|| KeyError::Invalid("malformed PKCS#8".into()))?;
                if oid == OID_RSA {
                    // The bit count comes from the inner RSAPrivateKey; ring reads the PKCS#8 itself.
                    let bits = rsa_bits(inner).ok_or_else(|| KeyError::Invalid("malformed RSA key".into()))?;
                    if bits < MIN_RSA_BITS {
                        return Err(KeyError::Weak { bits });
                    }
                    let pair = ring::rsa::KeyPair::from_pkcs8(pkcs8).map_err(|e| KeyError::Invalid(e.to_string()))?;
                    (Algorithm::Rsa { bits }, spki_rsa(pair.public_key().as_ref()))
                } else if oid == OID_ED25519 {
                    let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
                        .map_err(|e| KeyError::Invalid(e.to_string()))?;
                    (Algorithm::Ed25519, pair.public_key().as_ref().to_vec())
                } else {
                    return Err(KeyError::Unsupported("non-RSA, non-Ed25519 (an EC or DSA?)"));
                }
            }
            PrivateKeyDer::Sec1(_) => return Err(KeyError::Unsupported("elliptic-curve (SEC1)")),
            _ => return Err(KeyError::Unsupported("unknown")),
        };
        Ok(DkimKey { algorithm, private, public })
    }

    /// The value of the DNS TXT record that publishes the key: `v=DKIM1; k=rsa; p=…`.
    pub fn record(&self) -> String {
        let k = match self.algorithm {
            Algorithm::Rsa { .. } => "rsa",
            Algorithm::Ed25519 => "ed25519",
        };
        format!("v=DKIM1; k={k}; p={}", base64::engine::general_purpose::STANDARD.encode(&self.public))
    }

    /// The record as a zone file line: `SELECTOR._domainkey.DOMAIN. IN TXT "…" "…"`, the value
    /// split into strings of at most 255 bytes (a TXT record's character-strings, RFC 1035
    /// §3.3.14; a verifier joins them).
    pub fn zone_line(&self, selector: &str, domain: &str) -> String {
        let record = self.record();
        // The record is ASCII (base64 and tags): splitting at any byte is splitting at a char.
        let strings: Vec<String> =
            record.as_bytes().chunks(255).map(|part| format!("\"{}\"", String::from_utf8_lossy(part))).collect();
        format!("{selector}._domainkey.{}. IN TXT {}", domain.trim_end_matches('.'), strings.join(" "))
    }
}

/// An RSA key in PKCS#1: its size, checked before ring sees it (for a diagnostic that says how
/// weak), then validated by ring.
fn rsa(pkcs1: &[u8]) -> Result<(Algorithm, Vec<u8>), KeyError> {
    let bits = rsa_bits(pkcs1).ok_or_else(|| KeyError::Invalid("malformed RSA key".into()))?;
    if bits < MIN_RSA_BITS {
        return Err(KeyError::Weak { bits });
    }
    let pair = ring::rsa::KeyPair::from_der(pkcs1).map_err(|e| KeyError::Invalid(e.to_string()))?;
    Ok((Algorithm::Rsa { bits }, spki_rsa(pair.public_key().as_ref())))
}

/// One DER element at the start of `bytes`: (tag, content, what follows). Definite lengths only
/// (DER has no other).
fn tlv(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (digits, rest) = rest.split_at(count);
        (digits.iter().fold(0usize, |n, &d| (n << 8) | usize::from(d)), rest)
    };
    if rest.len() < len {
        return None;
    }
    let (content, after) = rest.split_at(len);
    Some((tag, content, after))
}

/// The modulus size of a PKCS#1 RSAPrivateKey: SEQUENCE { version INTEGER, modulus INTEGER, … }.
fn rsa_bits(pkcs1: &[u8]) -> Option<usize> {
    let (0x30, sequence, _) = tlv(pkcs1)? else { return None };
    let (0x02, _version, rest) = tlv(sequence)? else { return None };
    let (0x02, modulus, _) = tlv(rest)? else { return None };
    let significant = modulus.iter().position(|&b| b != 0).map(|i| modulus.get(i..).unwrap_or_default())?;
    let (&top, _) = significant.split_first()?;
    Some(significant.len() * 8 - top.leading_zeros() as usize)
}

/// PKCS#8 PrivateKeyInfo: SEQUENCE { version, AlgorithmIdentifier { OID, … }, OCTET STRING }:
/// the algorithm's OID and the inner private key.
fn pkcs8_parts(pkcs8: &[u8]) -> Option<(&[u8], &[u8])> {
    let (0x30, info, _) = tlv(pkcs8)? else { return None };
    let (0x02, _version, rest) = tlv(info)? else { return None };
    let (0x30, algorithm, rest) = tlv(rest)? else { return None };
    let (0x06, oid, _) = tlv(algorithm)? else { return None };
    let (0x04, inner, _) = tlv(rest)? else { return None };
    Some((oid, inner))
}

/// A DER element of `tag` around `content`.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let digits: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|&b| b == 0).collect();
        out.push(0x80 | digits.len() as u8);
        out.extend_from_slice(&digits);
    }
    out.extend_from_slice(content);
    out
}

/// An RSAPublicKey (PKCS#1, what ring gives) wrapped as SubjectPublicKeyInfo, the form DKIM
/// records publish (RFC 6376 §3.6.1, what opendkim-genkey prints) and every verifier reads.
fn spki_rsa(pkcs1_public: &[u8]) -> Vec<u8> {
    let mut algorithm = der(0x06, OID_RSA);
    algorithm.extend_from_slice(&[0x05, 0x00]);
    let mut bits = vec![0u8];
    bits.extend_from_slice(pkcs1_public);
    let mut info = der(0x30, &algorithm);
    info.extend_from_slice(&der(0x03, &bits));
    der(0x30, &info)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// A 2048-bit key, a 1024-bit one and an Ed25519 one, made by the openssl command when it is
    /// installed (the integration tests cover the real files in any case).
    fn openssl(args: &[&str]) -> Option<Vec<u8>> {
        let out = std::process::Command::new("openssl").args(args).output().ok()?;
        out.status.success().then_some(out.stdout)
    }

    #[test]
    fn rsa_and_ed25519_keys_are_read_and_weak_ones_refused() {
        let Some(rsa2048) = openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]) else {
            return;
        };
        let key = DkimKey::from_pem(&rsa2048).unwrap();
        assert_eq!(key.algorithm, Algorithm::Rsa { bits: 2048 });
        assert!(key.record().starts_with("v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"), "SPKI");
        let rsa1024 = openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"]).unwrap();
        assert_eq!(DkimKey::from_pem(&rsa1024).unwrap_err(), KeyError::Weak { bits: 1024 });
        let ed = openssl(&["genpkey", "-algorithm", "ed25519"]).unwrap();
        let key = DkimKey::from_pem(&ed).unwrap();
        assert_eq!(key.algorithm, Algorithm::Ed25519);
        assert_eq!(key.public.len(), 32);
        let ec = openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]).unwrap();
        assert!(matches!(DkimKey::from_pem(&ec), Err(KeyError::Unsupported(_))));
        assert_eq!(DkimKey::from_pem(b"hello").unwrap_err(), KeyError::NotPem);
    }

    #[test]
    fn the_zone_line_splits_long_records_into_255_byte_strings() {
        let key = DkimKey {
            algorithm: Algorithm::Rsa { bits: 4096 },
            private: PrivateKeyDer::Pkcs8(Vec::new().into()),
            public: vec![7; 550],
        };
        let line = key.zone_line("s1", "example.org.");
        assert!(line.starts_with("s1._domainkey.example.org. IN TXT \"v=DKIM1; k=rsa; p="), "{line}");
        let strings: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
        assert!(strings.len() == 3 && strings.iter().all(|s| s.len() <= 255), "{strings:?}");
        assert_eq!(strings.concat(), key.record());
    }

    /// The decision of `eval::dkim_signing`: authenticated users only, the From domain's key or
    /// its closest parent's, never a sibling's, and one From address.
    #[test]
    fn the_from_domain_or_its_closest_parent_signs() {
        use crate::eval::{dkim_signing, Signing};
        use crate::model::{DkimSign, DkimSignKey};
        let key = |domain: &str| DkimSignKey { domain: domain.into(), selector: "s".into(), file: String::new() };
        let sign = DkimSign { keys: vec![key("example.org"), key("mail.example.org")], headers: Vec::new() };
        let from = |a: &str| vec![a.to_owned()];
        let domain_of = |s: Signing<'_>| match s {
            Signing::Key(k) => k.domain.clone(),
            other => format!("{other:?}"),
        };
        assert_eq!(domain_of(dkim_signing(Some(&sign), true, &from("a@Example.ORG"))), "example.org");
        assert_eq!(domain_of(dkim_signing(Some(&sign), true, &from("a@x.mail.example.org"))), "mail.example.org");
        assert_eq!(domain_of(dkim_signing(Some(&sign), true, &from("a@sub.example.org"))), "example.org");
        assert_eq!(dkim_signing(Some(&sign), true, &from("a@badexample.org")), Signing::NoKey);
        assert_eq!(dkim_signing(Some(&sign), true, &from("a@example.com")), Signing::NoKey);
        assert_eq!(dkim_signing(Some(&sign), true, &[]), Signing::NoKey);
        let two = vec!["a@example.org".to_owned(), "b@example.org".to_owned()];
        assert_eq!(dkim_signing(Some(&sign), true, &two), Signing::NoKey);
        assert_eq!(dkim_signing(Some(&sign), false, &from("a@example.org")), Signing::Off);
        assert_eq!(dkim_signing(None, true, &from("a@example.org")), Signing::Off);
    }

    #[test]
    fn der_lengths_round_trip() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let content = vec![1u8; len];
            let encoded = der(0x04, &content);
            let (tag, back, rest) = tlv(&encoded).unwrap();
            assert_eq!((tag, back.len(), rest.len()), (0x04, len, 0));
        }
    }
}
