//! JWT auth tokens (`--auth-token jwt,...`): signed by the member a client
//! logs in at, verified by any member with the public key. Claims as etcd's:
//! `username`, `revision` (the auth revision of the login) and `exp`. The
//! signing and checking are jsonwebtoken's (ring underneath); this file only
//! loads keys and names the claims.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What `--auth-token jwt,...` names, with the key files read.
#[derive(Clone, Debug)]
pub struct JwtOptions {
    /// `sign-method` (RS256, ES256, HS256, ...).
    pub sign_method: String,
    /// `pub-key`: a PEM public key or certificate.
    pub public_key: Option<Vec<u8>>,
    /// `priv-key`: a PEM private key (for HS*, the secret's bytes).
    pub private_key: Option<Vec<u8>>,
    /// `ttl` (default 5 minutes).
    pub ttl: Duration,
}

/// Loaded keys; clones share nothing mutable.
#[derive(Clone)]
pub struct JwtKeys {
    algorithm: Algorithm,
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "JwtKeys({:?}, signs: {})",
            self.algorithm,
            self.encoding.is_some()
        )
    }
}

#[derive(Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

fn algorithm(name: &str) -> Result<Algorithm, String> {
    Ok(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "EdDSA" => Algorithm::EdDSA,
        other => return Err(format!("auth: invalid auth signature method {other:?}")),
    })
}

/// A public key from a PEM public key, or from the certificate a PEM holds.
fn decoding_key(algorithm: Algorithm, pem: &[u8]) -> Result<DecodingKey, String> {
    let certificate = x509_parser::pem::parse_x509_pem(pem)
        .ok()
        .filter(|(_, block)| block.label == "CERTIFICATE");
    if let Some((_, block)) = certificate {
        let (_, cert) = x509_parser::parse_x509_certificate(&block.contents)
            .map_err(|e| format!("auth: unreadable public key certificate: {e}"))?;
        let key = cert.public_key().subject_public_key.data.to_vec();
        return Ok(match algorithm {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => DecodingKey::from_rsa_der(&key),
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_der(&key),
            Algorithm::EdDSA => DecodingKey::from_ed_der(&key),
            _ => return Err("auth: a certificate is no HMAC key".to_string()),
        });
    }
    let key = match algorithm {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => DecodingKey::from_rsa_pem(pem),
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
        _ => Ok(DecodingKey::from_secret(pem)),
    };
    key.map_err(|e| format!("auth: unreadable public key: {e}"))
}

fn encoding_key(algorithm: Algorithm, pem: &[u8]) -> Result<EncodingKey, String> {
    let key = match algorithm {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => EncodingKey::from_rsa_pem(pem),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
        _ => Ok(EncodingKey::from_secret(pem)),
    };
    key.map_err(|e| format!("auth: unreadable private key: {e}"))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl JwtKeys {
    /// Loads the keys; an error names what is wrong (the member refuses to start).
    pub fn new(options: &JwtOptions) -> Result<JwtKeys, String> {
        let algorithm = algorithm(&options.sign_method)?;
        let hmac = matches!(
            algorithm,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        );
        let encoding = options
            .private_key
            .as_deref()
            .map(|pem| encoding_key(algorithm, pem))
            .transpose()?;
        let decoding = match (&options.public_key, &options.private_key) {
            (Some(pem), _) => decoding_key(algorithm, pem)?,
            (None, Some(secret)) if hmac => DecodingKey::from_secret(secret),
            _ => return Err("auth: missing key data (pub-key)".to_string()),
        };
        let keys = JwtKeys {
            algorithm,
            encoding,
            decoding,
            ttl: options.ttl,
        };
        // A pair that does not match would sign tokens nobody accepts.
        if keys.encoding.is_some() {
            let probe = keys.sign("probe", 1)?;
            if keys.verify(&probe).is_none() {
                return Err("auth: public and private keys don't match".to_string());
            }
        }
        Ok(keys)
    }

    /// A token for `user` at auth revision `revision`, valid for the TTL.
    pub fn sign(&self, user: &str, revision: u64) -> Result<String, String> {
        let key = self
            .encoding
            .as_ref()
            .ok_or("auth: token signing attempted with verify-only key")?;
        let claims = Claims {
            username: user.to_string(),
            revision,
            exp: now_secs() + self.ttl.as_secs().max(1),
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key)
            .map_err(|e| format!("auth: cannot sign a token: {e}"))
    }

    /// The user and auth revision of a token this cluster signed and that has
    /// not expired; `None` for anything else.
    pub fn verify(&self, token: &str) -> Option<(String, u64)> {
        let mut validation = Validation::new(self.algorithm);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).ok()?;
        Some((data.claims.username, data.claims.revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_tokens_round_trip_and_forgeries_fail() {
        // Goal: a signed token verifies; another key's, a tampered or an
        // expired one does not.
        let options = |secret: &[u8], ttl| JwtOptions {
            sign_method: "HS256".into(),
            public_key: None,
            private_key: Some(secret.to_vec()),
            ttl,
        };
        let keys = JwtKeys::new(&options(b"secret", Duration::from_secs(60))).expect("keys");
        let token = keys.sign("alice", 7).expect("sign");
        assert_eq!(keys.verify(&token), Some(("alice".to_string(), 7)));
        let other = JwtKeys::new(&options(b"other", Duration::from_secs(60))).expect("keys");
        assert_eq!(other.verify(&token), None);
        let mut tampered = token.clone();
        tampered.insert(token.len() / 2, 'x');
        assert_eq!(keys.verify(&tampered), None);
        assert_eq!(keys.verify("garbage"), None);
        let claims = Claims {
            username: "alice".into(),
            revision: 7,
            exp: now_secs() - 10,
        };
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"secret"),
        )
        .expect("encode");
        assert_eq!(keys.verify(&expired), None);
        assert!(
            JwtKeys::new(&JwtOptions {
                sign_method: "XX1".into(),
                ..options(b"s", Duration::from_secs(1))
            })
            .is_err()
        );
    }
}
