//! The server's own signing key: an ES384 (P-384) key generated on first start and kept in the data
//! directory, which signs the tokens of the built-in authorization server and is published as the
//! server's JWKS.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const ALGORITHM: Algorithm = Algorithm::ES384;
const FILE: &str = "signing-key-es384.p8";

/// The server's key pair.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub encoding: EncodingKey,
    pub decoding: DecodingKey,
    /// The public key as a JWK (with kid, alg and use).
    pub jwk: Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish()
    }
}

fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join("keys").join(FILE)
}

impl SigningKey {
    /// Loads the key from `data_dir`, generating and storing it first if there is none. Safe when
    /// several processes start at once: the file appears atomically, and the first one wins.
    pub fn load_or_create(data_dir: &Path) -> Result<SigningKey, String> {
        let path = path_in(data_dir);
        match std::fs::read(&path) {
            Ok(der) => return SigningKey::from_pkcs8(&der),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(format!(
                    "cannot read the signing key {}: {e}",
                    path.display()
                ))
            }
        }
        let dir = path.parent().unwrap_or(data_dir);
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the key directory {}: {e}", dir.display()))?;
        let der =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| "cannot generate a signing key".to_string())?;
        let tmp = dir.join(format!(".{FILE}.{}", uuid::Uuid::new_v4().simple()));
        let written = (|| {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            f.write_all(der.as_ref())?;
            f.sync_all()?;
            // A hard link fails if the key appeared meanwhile: then the other process's key wins.
            std::fs::hard_link(&tmp, &path)
        })();
        let _ = std::fs::remove_file(&tmp);
        match written {
            Ok(()) => {
                tracing::info!(path = %path.display(), "generated the server's signing key");
                SigningKey::from_pkcs8(der.as_ref())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let der = std::fs::read(&path).map_err(|e| e.to_string())?;
                SigningKey::from_pkcs8(&der)
            }
            Err(e) => Err(format!(
                "cannot store the signing key in {}: {e}",
                dir.display()
            )),
        }
    }

    fn from_pkcs8(der: &[u8]) -> Result<SigningKey, String> {
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, der, &SystemRandom::new())
                .map_err(|_| "the stored signing key is not a P-384 PKCS#8 key".to_string())?;
        // An uncompressed point: 0x04 || x || y.
        let point = pair.public_key().as_ref();
        let (x, y) = point[1..].split_at((point.len() - 1) / 2);
        let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
        let kid = thumbprint(&json!({"crv": "P-384", "kty": "EC", "x": x, "y": y}));
        let decoding = DecodingKey::from_ec_components(&x, &y).map_err(|e| e.to_string())?;
        Ok(SigningKey {
            jwk: json!({"kty": "EC", "crv": "P-384", "x": x, "y": y, "kid": kid,
                "alg": "ES384", "use": "sig"}),
            kid,
            encoding: EncodingKey::from_ec_der(der),
            decoding,
        })
    }

    /// The public JWKS document.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.jwk]})
    }
}

/// The RFC 7638 thumbprint of a public JWK given with exactly its required members.
fn thumbprint(required: &Value) -> String {
    // serde_json keeps insertion order here (preserve_order), and the members were given sorted.
    let canonical = serde_json::to_string(required).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_once_and_then_reused() {
        let dir = std::env::temp_dir().join(format!("cairn-keys-{}", uuid::Uuid::new_v4()));
        let a = SigningKey::load_or_create(&dir).unwrap();
        let b = SigningKey::load_or_create(&dir).unwrap();
        assert_eq!(a.kid, b.kid);
        assert_eq!(a.jwk["kty"], "EC");
        assert!(a.jwk.get("d").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
