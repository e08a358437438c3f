//! `--auth-token`, `--auth-token-ttl` and `--bcrypt-cost`, as etcd reads them.

use std::path::PathBuf;
use std::time::Duration;

use super::values::parse_go_duration;

/// How tokens are issued (`--auth-token`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSpec {
    /// `simple` (the default).
    Simple,
    /// `jwt,pub-key=…,priv-key=…,sign-method=…[,ttl=…]`.
    Jwt {
        /// Signing algorithm (RS256, ES256, HS256, ...).
        sign_method: String,
        /// Public key or certificate (PEM).
        public_key: Option<PathBuf>,
        /// Private key (PEM; the secret for HS*).
        private_key: Option<PathBuf>,
        /// Token lifetime (default 5 minutes).
        ttl: Duration,
    },
}

/// The auth settings of a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthSettings {
    /// Token kind.
    pub token: TokenSpec,
    /// Simple tokens live this long after their last use.
    pub token_ttl: Duration,
    /// bcrypt cost of new password hashes.
    pub bcrypt_cost: u32,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            token: TokenSpec::Simple,
            token_ttl: Duration::from_secs(300),
            bcrypt_cost: 10,
        }
    }
}

/// bcrypt's cost range; etcd falls back to 10 outside it (with a warning).
pub const BCRYPT_COST_MIN: u64 = 4;
/// See `BCRYPT_COST_MIN`.
pub const BCRYPT_COST_MAX: u64 = 31;

/// The bcrypt cost to use and, when the given one is out of range, the warning.
pub fn bcrypt_cost(given: Option<u64>) -> (u32, Option<String>) {
    match given {
        None => (10, None),
        Some(cost) if (BCRYPT_COST_MIN..=BCRYPT_COST_MAX).contains(&cost) => (cost as u32, None),
        Some(cost) => (
            10,
            Some(format!(
                "--bcrypt-cost {cost} is outside {BCRYPT_COST_MIN}..={BCRYPT_COST_MAX}; using 10 (as etcd does)"
            )),
        ),
    }
}

/// The simple-token TTL: etcd takes 0 as its default, 300 s.
pub fn token_ttl(seconds: Option<u64>) -> Duration {
    match seconds {
        None | Some(0) => Duration::from_secs(300),
        Some(seconds) => Duration::from_secs(seconds),
    }
}

/// Parses `--auth-token` with etcd's rules: the kind, then `key=value`
/// options, each once; `jwt` needs `sign-method` and a key.
pub fn parse_token(text: &str) -> Result<TokenSpec, String> {
    let mut parts = text.split(',');
    let kind = parts.next().unwrap_or_default();
    let mut options = std::collections::BTreeMap::new();
    for part in parts {
        let (key, value) = part
            .split_once('=')
            .filter(|(_, value)| !value.contains('='))
            .ok_or_else(|| format!("--auth-token: invalid option {part:?} (want key=value)"))?;
        if options.insert(key, value).is_some() {
            return Err(format!("--auth-token: option {key:?} given twice"));
        }
    }
    match kind {
        "simple" => {
            if let Some(key) = options.keys().next() {
                return Err(format!(
                    "--auth-token: simple takes no options, got {key:?}"
                ));
            }
            Ok(TokenSpec::Simple)
        }
        "jwt" => {
            for key in options.keys() {
                if !["sign-method", "pub-key", "priv-key", "ttl"].contains(key) {
                    return Err(format!("--auth-token: unknown jwt option {key:?}"));
                }
            }
            let sign_method = options
                .get("sign-method")
                .ok_or("--auth-token: jwt needs sign-method=")?
                .to_string();
            let public_key = options.get("pub-key").map(PathBuf::from);
            let private_key = options.get("priv-key").map(PathBuf::from);
            if public_key.is_none() && private_key.is_none() {
                return Err("--auth-token: jwt needs pub-key= or priv-key=".to_string());
            }
            let ttl = match options.get("ttl") {
                Some(ttl) => {
                    parse_go_duration(ttl).map_err(|e| format!("--auth-token ttl: {e}"))?
                }
                None => Duration::from_secs(300),
            };
            Ok(TokenSpec::Jwt {
                sign_method,
                public_key,
                private_key,
                ttl,
            })
        }
        other => Err(format!(
            "--auth-token: unknown token kind {other:?} (simple or jwt)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_token_forms_parse_as_etcd_reads_them() {
        // Goal: the accepted forms and each refusal, in a table.
        assert_eq!(parse_token("simple"), Ok(TokenSpec::Simple));
        assert_eq!(
            parse_token("jwt,pub-key=/p.crt,priv-key=/k.key,sign-method=RS256,ttl=1s"),
            Ok(TokenSpec::Jwt {
                sign_method: "RS256".into(),
                public_key: Some("/p.crt".into()),
                private_key: Some("/k.key".into()),
                ttl: Duration::from_secs(1),
            })
        );
        for bad in [
            "",
            "oauth",
            "simple,ttl=1s",
            "jwt",
            "jwt,sign-method=RS256",
            "jwt,pub-key=/p,pub-key=/q,sign-method=RS256",
            "jwt,pub-key=/p=x,sign-method=RS256",
            "jwt,pub-key=/p,sign-method=RS256,color=red",
            "jwt,pub-key=/p,sign-method=RS256,ttl=soon",
        ] {
            assert!(parse_token(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(bcrypt_cost(None), (10, None));
        assert_eq!(bcrypt_cost(Some(4)), (4, None));
        assert_eq!(bcrypt_cost(Some(3)).0, 10);
        assert!(bcrypt_cost(Some(32)).1.is_some());
        assert_eq!(token_ttl(Some(0)), Duration::from_secs(300));
        assert_eq!(token_ttl(Some(5)), Duration::from_secs(5));
    }
}
