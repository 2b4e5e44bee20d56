//! See [`VerificationKey`].

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::DecodingKey;

use crate::algorithm::{Algorithm, Family};

/// Verification keys: [`VerificationKey`] from a secret, PEM or DER, and
/// [`Jwks`] documents (RFC 7517).
///
/// Each key carries the algorithms it may verify. That list — never the
/// token's `alg` header — decides what the layer accepts, which is what
/// defeats algorithm confusion (an `HS256` token "signed" with an RSA public
/// key as HMAC secret) and `alg: none`.
///
/// ```
/// use kafka_tower_jwt::{Algorithm, Jwks, VerificationKey};
///
/// let hmac = VerificationKey::hmac(b"a-long-shared-secret-of-32-bytes", Algorithm::HS256)?
///     .with_kid("shared-1");
/// assert_eq!(hmac.algorithms(), &[Algorithm::HS256]);
///
/// let jwks = Jwks::from_json(br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"ed-1",
///     "x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#)?;
/// assert_eq!(jwks.keys()[0].kid(), Some("ed-1"));
/// assert_eq!(jwks.keys()[0].algorithms(), &[Algorithm::EdDSA]);
/// # Ok::<(), kafka_tower_jwt::KeyError>(())
/// ```
///
/// A key that verifies token signatures, with the algorithms it accepts and
/// an optional key id (`kid`).
#[derive(Clone)]
pub struct VerificationKey {
    pub(crate) kid: Option<Arc<str>>,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) family: Family,
    pub(crate) key: DecodingKey,
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material (an HMAC secret is a credential).
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// A key or JWKS document that cannot be used.
#[derive(Debug)]
pub struct KeyError {
    message: String,
}

impl KeyError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        KeyError {
            message: message.into(),
        }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for KeyError {}

fn check_family(alg: Algorithm, family: Family, what: &str) -> Result<(), KeyError> {
    if alg.family() == family {
        Ok(())
    } else {
        Err(KeyError::new(format!("{alg} cannot be used with {what}")))
    }
}

fn jwt_err(what: &str) -> impl FnOnce(jsonwebtoken::errors::Error) -> KeyError + '_ {
    move |e| KeyError::new(format!("invalid {what}: {e}"))
}

impl VerificationKey {
    fn new(family: Family, alg: Algorithm, key: DecodingKey, what: &str) -> Result<Self, KeyError> {
        check_family(alg, family, what)?;
        Ok(VerificationKey {
            kid: None,
            algorithms: vec![alg],
            family,
            key,
        })
    }

    /// An HMAC secret for `HS256`, `HS384` or `HS512`. An empty secret is
    /// refused.
    pub fn hmac(secret: impl AsRef<[u8]>, alg: Algorithm) -> Result<Self, KeyError> {
        let key = DecodingKey::from_secret(secret.as_ref()).map_err(jwt_err("HMAC secret"))?;
        Self::new(Family::Hmac, alg, key, "an HMAC secret")
    }

    /// An RSA public key in PEM (`BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC
    /// KEY`) for `RS*` or `PS*`.
    pub fn rsa_pem(pem: impl AsRef<[u8]>, alg: Algorithm) -> Result<Self, KeyError> {
        let key = DecodingKey::from_rsa_pem(pem.as_ref()).map_err(jwt_err("RSA PEM"))?;
        Self::new(Family::Rsa, alg, key, "an RSA key")
    }

    /// An RSA public key as PKCS#1 DER (`RSAPublicKey`) for `RS*` or `PS*`.
    pub fn rsa_der(der: impl AsRef<[u8]>, alg: Algorithm) -> Result<Self, KeyError> {
        Self::new(
            Family::Rsa,
            alg,
            DecodingKey::from_rsa_der(der.as_ref()),
            "an RSA key",
        )
    }

    /// An EC public key in PEM (SubjectPublicKeyInfo) for `ES256` or `ES384`.
    pub fn ec_pem(pem: impl AsRef<[u8]>, alg: Algorithm) -> Result<Self, KeyError> {
        let key = DecodingKey::from_ec_pem(pem.as_ref()).map_err(jwt_err("EC PEM"))?;
        Self::new(Family::Ec, alg, key, "an EC key")
    }

    /// An EC public key as an uncompressed SEC1 point for `ES256` or
    /// `ES384`.
    pub fn ec_der(der: impl AsRef<[u8]>, alg: Algorithm) -> Result<Self, KeyError> {
        Self::new(
            Family::Ec,
            alg,
            DecodingKey::from_ec_der(der.as_ref()),
            "an EC key",
        )
    }

    /// An Ed25519 public key in PEM (SubjectPublicKeyInfo) for `EdDSA`.
    pub fn ed_pem(pem: impl AsRef<[u8]>) -> Result<Self, KeyError> {
        let key = DecodingKey::from_ed_pem(pem.as_ref()).map_err(jwt_err("Ed25519 PEM"))?;
        Self::new(Family::Ed, Algorithm::EdDSA, key, "an Ed25519 key")
    }

    /// An Ed25519 public key as its 32 raw bytes, for `EdDSA`.
    pub fn ed_der(raw: impl AsRef<[u8]>) -> Result<Self, KeyError> {
        if raw.as_ref().len() != 32 {
            return Err(KeyError::new("an Ed25519 public key is 32 bytes"));
        }
        Self::new(
            Family::Ed,
            Algorithm::EdDSA,
            DecodingKey::from_ed_der(raw.as_ref()),
            "an Ed25519 key",
        )
    }

    /// Sets the key id a token's `kid` header is matched against.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(Arc::from(kid.into()));
        self
    }

    /// Also accepts `alg` with this key, e.g. `PS256` besides `RS256` for an
    /// RSA key. Fails when `alg` needs another kind of key.
    pub fn also_allow(mut self, alg: Algorithm) -> Result<Self, KeyError> {
        check_family(alg, self.family, "this key")?;
        if !self.algorithms.contains(&alg) {
            self.algorithms.push(alg);
        }
        Ok(self)
    }

    /// The key id, when set.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The algorithms this key verifies.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }
}

/// The signature keys of a JSON Web Key Set (RFC 7517 §5).
///
/// Keys are selected by `kid`. A key's algorithm is its `alg` member when
/// present; otherwise it follows from the key: `EC` on `P-256` → `ES256`,
/// on `P-384` → `ES384`, `OKP` on `Ed25519` → `EdDSA`, `RSA` → `RS256`.
/// Keys marked `"use": "enc"`, keys of unsupported types or curves, and
/// symmetric (`oct`) keys are skipped: a shared secret has no place in a
/// published key set, and accepting one would reopen algorithm confusion.
#[derive(Debug, Clone, Default)]
pub struct Jwks {
    keys: Vec<VerificationKey>,
    skipped: usize,
}

impl Jwks {
    /// Parses a JWKS document.
    pub fn from_json(json: &[u8]) -> Result<Self, KeyError> {
        let set: JwkSet = serde_json::from_slice(json)
            .map_err(|e| KeyError::new(format!("invalid JWKS document: {e}")))?;
        let mut out = Jwks::default();
        for jwk in &set.keys {
            if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
                out.skipped += 1;
                continue;
            }
            let declared = jwk.common.key_algorithm.and_then(key_algorithm);
            let (family, alg) = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => (Family::Rsa, declared.unwrap_or(Algorithm::RS256)),
                AlgorithmParameters::EllipticCurve(p) => match p.curve {
                    EllipticCurve::P256 => (Family::Ec, declared.unwrap_or(Algorithm::ES256)),
                    EllipticCurve::P384 => (Family::Ec, declared.unwrap_or(Algorithm::ES384)),
                    _ => {
                        out.skipped += 1;
                        continue;
                    }
                },
                AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                    (Family::Ed, Algorithm::EdDSA)
                }
                _ => {
                    out.skipped += 1;
                    continue;
                }
            };
            if jwk.common.key_algorithm.is_some() && declared.is_none() {
                // An `alg` this crate does not verify with (e.g. RSA-OAEP).
                out.skipped += 1;
                continue;
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                KeyError::new(format!(
                    "invalid JWK {}: {e}",
                    jwk.common.key_id.as_deref().unwrap_or("(no kid)")
                ))
            })?;
            let mut vk = VerificationKey::new(family, alg, key, "this JWK")?;
            vk.kid = jwk.common.key_id.as_deref().map(Arc::from);
            out.keys.push(vk);
        }
        Ok(out)
    }

    /// Reads and parses a JWKS file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| KeyError::new(format!("cannot read JWKS file {}: {e}", path.display())))?;
        Self::from_json(&bytes).map_err(|e| KeyError::new(format!("{}: {e}", path.display())))
    }

    /// The usable signature keys, in document order.
    pub fn keys(&self) -> &[VerificationKey] {
        &self.keys
    }

    /// How many keys of the document were skipped (encryption keys,
    /// symmetric keys, unsupported types or algorithms).
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    pub(crate) fn into_keys(self) -> Vec<VerificationKey> {
        self.keys
    }
}

fn key_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_mismatch_is_refused_at_configuration() {
        let err = VerificationKey::hmac(b"secret-secret-secret", Algorithm::RS256).unwrap_err();
        assert!(err.to_string().contains("RS256"), "{err}");
        let k = VerificationKey::hmac(b"secret-secret-secret", Algorithm::HS256).unwrap();
        assert!(k.also_allow(Algorithm::ES256).is_err());
    }

    #[test]
    fn jwks_skips_symmetric_and_encryption_keys() {
        let doc = br#"{"keys":[
            {"kty":"oct","kid":"s","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQ"},
            {"kty":"OKP","crv":"Ed25519","kid":"enc","use":"enc","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"OKP","crv":"Ed25519","kid":"sig","use":"sig","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        ]}"#;
        let jwks = Jwks::from_json(doc).unwrap();
        assert_eq!(jwks.skipped(), 2);
        assert_eq!(jwks.keys().len(), 1);
        assert_eq!(jwks.keys()[0].kid(), Some("sig"));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let k = VerificationKey::hmac(b"super-secret-value", Algorithm::HS256).unwrap();
        assert!(!format!("{k:?}").contains("super-secret-value"));
    }
}
