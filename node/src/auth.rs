//! Who a client is: `?user=` in `none` mode, a JWT in `jwt` mode (PROTOCOL.md
//! §2 Identity), and the API keys of the HTTP API (§3).
//!
//! Tokens are HS256 with `auth.jwt_secret`, or RS256 with the PEM public key
//! in `auth.jwt_public_key_file`. `sub` and `exp` are required; `rooms` is an
//! optional list of glob patterns (`*`, `?`) limiting which rooms the user may
//! join and publish to.

use std::sync::Arc;

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use wildmatch::WildMatch;

use crate::config::{AuthMode, Config, ConfigError};
use crate::protocol::rules;

/// The claims chatmesh reads from a token.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

/// An authenticated client.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: String,
    /// Display name from the token, if any.
    pub name: Option<String>,
    /// Seconds since the epoch at which the token expires; `None` without a token.
    pub expires: Option<u64>,
    rooms: Option<Arc<[WildMatch]>>,
}

impl Identity {
    /// An identity without restrictions (`none` mode, or an API key).
    pub fn unrestricted(user: String) -> Self {
        Self {
            user,
            name: None,
            expires: None,
            rooms: None,
        }
    }

    /// Whether the token allows this room.
    pub fn may_use(&self, room: &str) -> bool {
        self.rooms
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| p.matches(room)))
    }
}

/// Why a token was refused; the reason goes into the 401 body.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required (?token= or Authorization: Bearer)")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Verifies tokens and API keys for one node.
pub struct Authenticator {
    mode: AuthMode,
    key: Option<(DecodingKey, Validation)>,
    api_keys: Vec<Vec<u8>>,
}

impl Authenticator {
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let key = match config.auth.mode {
            AuthMode::None => None,
            AuthMode::Jwt => Some(decoding_key(config)?),
        };
        Ok(Self {
            mode: config.auth.mode,
            key,
            api_keys: config
                .api
                .keys
                .iter()
                .map(|k| k.as_bytes().to_vec())
                .collect(),
        })
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Checks a presented API key against every configured key in constant time.
    pub fn is_api_key(&self, presented: &str) -> bool {
        let presented = presented.as_bytes();
        let mut ok = subtle::Choice::from(0u8);
        for key in &self.api_keys {
            ok |= key.as_slice().ct_eq(presented);
        }
        bool::from(ok)
    }

    /// Verifies a user's token (jwt mode only).
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let Some((key, validation)) = &self.key else {
            return Err(AuthError::Invalid(
                "tokens are not enabled (auth.mode = none)".into(),
            ));
        };
        let data = decode::<Claims>(token, key, validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        })?;
        let claims = data.claims;
        let user = rules::name("sub", claims.sub).map_err(|e| AuthError::Invalid(e.to_string()))?;
        Ok(Identity {
            user,
            name: claims.name,
            expires: Some(claims.exp),
            rooms: claims.rooms.map(|r| {
                r.iter()
                    .map(|p| WildMatch::new(p))
                    .collect::<Vec<_>>()
                    .into()
            }),
        })
    }
}

fn decoding_key(config: &Config) -> Result<(DecodingKey, Validation), ConfigError> {
    let auth = &config.auth;
    let (key, alg) = if auth.jwt_public_key_file.is_empty() {
        (
            DecodingKey::from_secret(auth.jwt_secret.as_bytes()),
            Algorithm::HS256,
        )
    } else {
        let pem = std::fs::read(&auth.jwt_public_key_file).map_err(|e| ConfigError {
            key: "auth.jwt_public_key_file".into(),
            message: format!("cannot read {}: {e}", auth.jwt_public_key_file),
        })?;
        let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| ConfigError {
            key: "auth.jwt_public_key_file".into(),
            message: format!("not an RSA public key in PEM: {e}"),
        })?;
        (key, Algorithm::RS256)
    };
    let mut validation = Validation::new(alg);
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation.leeway = 0;
    Ok((key, validation))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn jwt_config() -> Config {
        let mut c = Config::default();
        c.auth.mode = AuthMode::Jwt;
        c.auth.jwt_secret = "s3cret".into();
        c.api.keys = vec!["key-1".into(), "key-2".into()];
        c
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode")
    }

    fn in_an_hour() -> u64 {
        crate::ids::now_ms() / 1000 + 3600
    }

    #[test]
    fn accepts_a_good_token_and_applies_room_globs() {
        let auth = Authenticator::from_config(&jwt_config()).expect("config");
        let id = auth
            .verify(&token(
                json!({"sub":"alice","exp":in_an_hour(),"rooms":["team-*","lobby"]}),
                "s3cret",
            ))
            .expect("valid");
        assert_eq!(id.user, "alice");
        assert!(id.may_use("team-red") && id.may_use("lobby"));
        assert!(!id.may_use("admin"));
        let open = auth
            .verify(&token(json!({"sub":"bob","exp":in_an_hour()}), "s3cret"))
            .expect("valid");
        assert!(open.may_use("anything"));
    }

    #[test]
    fn refuses_bad_signature_expired_and_missing_claims() {
        let auth = Authenticator::from_config(&jwt_config()).expect("config");
        assert!(matches!(
            auth.verify(&token(json!({"sub":"a","exp":in_an_hour()}), "wrong")),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            auth.verify(&token(json!({"sub":"a","exp":1000}), "s3cret")),
            Err(AuthError::Expired)
        ));
        assert!(auth.verify(&token(json!({"sub":"a"}), "s3cret")).is_err());
        assert!(auth
            .verify(&token(json!({"exp":in_an_hour()}), "s3cret"))
            .is_err());
        assert!(auth.verify("not.a.token").is_err());
    }

    #[test]
    fn api_keys_match_exactly() {
        let auth = Authenticator::from_config(&jwt_config()).expect("config");
        assert!(auth.is_api_key("key-1") && auth.is_api_key("key-2"));
        assert!(!auth.is_api_key("key-") && !auth.is_api_key("key-10") && !auth.is_api_key(""));
        let none = Authenticator::from_config(&Config::default()).expect("config");
        assert!(!none.is_api_key(""));
    }
}
