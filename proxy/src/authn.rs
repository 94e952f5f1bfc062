//! End-user authentication at the server-side sidecar: the JWT issuers a
//! port trusts (from RequestAuthentications), and the check of one
//! request's token.
//!
//! A request without a token passes (authorization decides, with
//! `when.jwt`); a request with a token that no issuer of the port accepts is
//! refused, with a reason from a closed list. The header's `alg` must be the
//! one the matching key was published for, so `none`, an HMAC algorithm
//! over a public key (key confusion) and algorithm switches are refused
//! before any signature is checked.

use std::collections::HashSet;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderName;
use http::request::Parts;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};
use tracing::warn;
use weft_api::v1;

/// Tokens longer than this are refused unread.
const MAX_TOKEN: usize = 8 * 1024;
/// A token without `kid` is tried against at most this many keys.
const MAX_KEYS_WITHOUT_KID: usize = 4;

/// Why a token was refused (a closed list: a metric label and the
/// `weft-error` reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    Malformed,
    AlgNotAllowed,
    UnknownIssuer,
    UnknownKid,
    BadSignature,
    Expired,
    NotYetValid,
    BadAudience,
    BadIssuer,
    MissingClaim,
}

impl Refused {
    pub fn label(self) -> &'static str {
        match self {
            Refused::Malformed => "malformed",
            Refused::AlgNotAllowed => "alg-not-allowed",
            Refused::UnknownIssuer => "unknown-issuer",
            Refused::UnknownKid => "unknown-kid",
            Refused::BadSignature => "bad-signature",
            Refused::Expired => "expired",
            Refused::NotYetValid => "not-yet-valid",
            Refused::BadAudience => "bad-audience",
            Refused::BadIssuer => "bad-issuer",
            Refused::MissingClaim => "missing-claim",
        }
    }
}

/// Where a token is looked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Header { name: HeaderName, prefix: String },
    Query(String),
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// One trusted issuer, with its keys parsed once per snapshot.
pub struct Issuer {
    /// What it was built from: an unchanged snapshot keeps the parsed keys.
    pub source: v1::JwtProvider,
    locations: Vec<Location>,
    keys: Vec<Key>,
    claim_headers: Vec<(HeaderName, Vec<String>)>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("id", &self.source.id)
            .field("issuer", &self.source.issuer)
            .field("keys", &self.kids())
            .finish()
    }
}

/// The algorithm a public key verifies: what the key says, else its type's
/// usual one. None for keys the proxy does not verify with.
fn key_alg(jwk: &Jwk) -> Option<Algorithm> {
    let said = jwk.common.key_algorithm;
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(match said {
            Some(KeyAlgorithm::RS384) => Algorithm::RS384,
            Some(KeyAlgorithm::RS512) => Algorithm::RS512,
            Some(KeyAlgorithm::PS256) => Algorithm::PS256,
            Some(KeyAlgorithm::PS384) => Algorithm::PS384,
            Some(KeyAlgorithm::PS512) => Algorithm::PS512,
            None | Some(KeyAlgorithm::RS256) => Algorithm::RS256,
            Some(_) => return None,
        }),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        // Symmetric keys never verify end-user tokens at a sidecar.
        _ => None,
    }
}

impl Issuer {
    /// Parses the issuer's keys; a key that cannot be used is skipped with
    /// a warning (one bad key must not take the others down).
    pub fn new(source: &v1::JwtProvider) -> Issuer {
        let mut keys = Vec::new();
        if !source.jwks.is_empty() {
            match serde_json::from_str::<JwkSet>(&source.jwks) {
                Ok(set) => {
                    for jwk in &set.keys {
                        let parsed = key_alg(jwk).and_then(|alg| {
                            DecodingKey::from_jwk(jwk).ok().map(|key| Key {
                                kid: jwk.common.key_id.clone(),
                                alg,
                                key,
                            })
                        });
                        match parsed {
                            Some(k) => keys.push(k),
                            None => warn!(
                                issuer = %source.id,
                                kid = jwk.common.key_id.as_deref().unwrap_or(""),
                                "a key the proxy cannot verify with was skipped"
                            ),
                        }
                    }
                }
                Err(e) => warn!(issuer = %source.id, error = %e, "the key set is not a JWKS"),
            }
        }
        let locations = source
            .locations
            .iter()
            .filter_map(|l| match l.kind.as_ref()? {
                v1::token_location::Kind::Header(h) => Some(Location::Header {
                    name: h.name.parse().ok()?,
                    prefix: h.prefix.clone(),
                }),
                v1::token_location::Kind::QueryParam(q) => Some(Location::Query(q.clone())),
            })
            .collect();
        Issuer {
            source: source.clone(),
            locations,
            keys,
            claim_headers: source
                .claim_headers
                .iter()
                .filter_map(|c| {
                    Some((
                        c.header.parse().ok()?,
                        c.claim.split('.').map(str::to_string).collect(),
                    ))
                })
                .collect(),
        }
    }

    /// The key ids it has, for `/config`.
    pub fn kids(&self) -> Vec<&str> {
        self.keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or(""))
            .collect()
    }
}

/// A token an issuer accepted: its claims, for authorization.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The issuer's id (`namespace/name/index`).
    pub issuer: String,
    pub claims: Arc<Map<String, Value>>,
}

/// The issuers of one pod port.
#[derive(Clone, Debug, Default)]
pub struct PortAuthn {
    pub issuers: Vec<Arc<Issuer>>,
}

/// The unverified header of a token: what picks the key.
#[derive(serde::Deserialize)]
struct TokenHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(serde::Deserialize)]
struct TokenIssuer {
    #[serde(default)]
    iss: Option<String>,
}

fn decode_part<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, Refused> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Refused::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| Refused::Malformed)
}

/// A claim by dotted path.
pub fn claim<'a>(claims: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(first)?;
    for p in rest {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

/// A claim's values as strings: an array's elements, `scope`'s (and
/// `scp`'s) space-separated words, or the value itself.
pub fn claim_values(name: &str, v: &Value) -> Vec<String> {
    let one = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match v {
        Value::Array(items) => items.iter().filter_map(one).collect(),
        Value::String(s) if name == "scope" || name == "scp" => s
            .split(' ')
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect(),
        v => one(v).into_iter().collect(),
    }
}

impl PortAuthn {
    /// The first token in any of the issuers' locations, and where.
    fn find_token(&self, parts: &Parts) -> Option<(String, Location)> {
        for issuer in &self.issuers {
            for loc in &issuer.locations {
                match loc {
                    Location::Header { name, prefix } => {
                        for v in parts.headers.get_all(name) {
                            let Ok(v) = v.to_str() else { continue };
                            let token = if prefix.is_empty() {
                                Some(v)
                            } else {
                                v.get(..prefix.len())
                                    .filter(|p| p.eq_ignore_ascii_case(prefix))
                                    .map(|_| &v[prefix.len()..])
                            };
                            if let Some(t) = token {
                                return Some((t.trim().to_string(), loc.clone()));
                            }
                        }
                    }
                    Location::Query(q) => {
                        let query = parts.uri.query().unwrap_or("");
                        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
                            if k == q.as_str() {
                                return Some((v.into_owned(), loc.clone()));
                            }
                        }
                    }
                }
            }
        }
        None
    }

    /// Checks the request's token, if it has one: `Ok(None)` without one.
    /// Headers the port's issuers set from claims are removed first, always,
    /// so that a client can never send them itself.
    pub fn authenticate(&self, parts: &mut Parts) -> Result<Option<Verified>, Refused> {
        for issuer in &self.issuers {
            for (h, _) in &issuer.claim_headers {
                parts.headers.remove(h);
            }
        }
        let Some((token, location)) = self.find_token(parts) else {
            return Ok(None);
        };
        if token.len() > MAX_TOKEN {
            return Err(Refused::Malformed);
        }
        let mut segments = token.split('.');
        let (Some(h), Some(p), Some(_), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(Refused::Malformed);
        };
        let header: TokenHeader = decode_part(h)?;
        let body: TokenIssuer = decode_part(p)?;
        let alg: Algorithm = header.alg.parse().map_err(|_| Refused::AlgNotAllowed)?;
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(Refused::AlgNotAllowed);
        }
        let iss = body.iss.ok_or(Refused::MissingClaim)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.source.issuer == iss)
            .ok_or(Refused::UnknownIssuer)?;
        let candidates = issuer.keys.iter().filter(|k| match &header.kid {
            Some(kid) => k.kid.as_deref() == Some(kid.as_str()),
            None => true,
        });
        let limit = if header.kid.is_some() {
            usize::MAX
        } else {
            MAX_KEYS_WITHOUT_KID
        };
        let mut validation = Validation::new(alg);
        validation.leeway = u64::from(issuer.source.clock_skew_s);
        validation.validate_nbf = true;
        validation.set_issuer(&[&issuer.source.issuer]);
        validation.set_required_spec_claims(&["exp", "iss"]);
        if issuer.source.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&issuer.source.audiences);
            validation.required_spec_claims.insert("aud".into());
        }
        let mut outcome = Err(if header.kid.is_some() {
            Refused::UnknownKid
        } else {
            Refused::BadSignature
        });
        let mut tried = 0;
        let mut any_alg = false;
        for key in candidates {
            if key.alg != alg {
                continue;
            }
            any_alg = true;
            if tried == limit {
                break;
            }
            tried += 1;
            match jsonwebtoken::decode::<Map<String, Value>>(&token, &key.key, &validation) {
                Ok(data) => {
                    outcome = Ok(data.claims);
                    break;
                }
                Err(e) => {
                    outcome = Err(match e.kind() {
                        ErrorKind::InvalidSignature => Refused::BadSignature,
                        ErrorKind::ExpiredSignature => Refused::Expired,
                        ErrorKind::ImmatureSignature => Refused::NotYetValid,
                        ErrorKind::InvalidAudience => Refused::BadAudience,
                        ErrorKind::InvalidIssuer => Refused::BadIssuer,
                        ErrorKind::MissingRequiredClaim(_) => Refused::MissingClaim,
                        ErrorKind::InvalidAlgorithm => Refused::AlgNotAllowed,
                        _ => Refused::Malformed,
                    });
                    // Only a bad signature is worth another key.
                    if outcome != Err(Refused::BadSignature) {
                        break;
                    }
                }
            }
        }
        if !any_alg && header.kid.is_some() && issuer.keys.iter().any(|k| k.kid == header.kid) {
            // The kid names a key of another algorithm.
            return Err(Refused::AlgNotAllowed);
        }
        let claims = outcome?;
        for (h, path) in &issuer.claim_headers {
            if let Some(v) = claim(&claims, path) {
                let joined = claim_values(path.last().map_or("", String::as_str), v).join(",");
                if let Ok(v) = http::HeaderValue::from_str(&joined) {
                    parts.headers.insert(h.clone(), v);
                }
            }
        }
        if issuer.source.strip_token {
            strip(parts, &location);
        }
        Ok(Some(Verified {
            issuer: issuer.source.id.clone(),
            claims: Arc::new(claims),
        }))
    }
}

/// Removes the token from where it was found.
fn strip(parts: &mut Parts, location: &Location) {
    match location {
        Location::Header { name, .. } => {
            parts.headers.remove(name);
        }
        Location::Query(q) => {
            let Some(query) = parts.uri.query() else {
                return;
            };
            let kept: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
                .filter(|(k, _)| k != q.as_str())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let mut pq = parts.uri.path().to_string();
            if !kept.is_empty() {
                pq.push('?');
                pq.push_str(
                    &form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(kept)
                        .finish(),
                );
            }
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            if let Ok(p) = pq.parse() {
                uri.path_and_query = Some(p);
            }
            if let Ok(u) = http::Uri::from_parts(uri) {
                parts.uri = u;
            }
        }
    }
}

/// The port's issuers from the snapshot, reusing the parsed keys of those
/// that did not change.
pub fn port_authn(
    ids: &[String],
    providers: &std::collections::HashMap<String, Arc<Issuer>>,
) -> PortAuthn {
    let mut seen = HashSet::new();
    PortAuthn {
        issuers: ids
            .iter()
            .filter(|id| seen.insert(id.as_str()))
            .filter_map(|id| providers.get(id).cloned())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const RSA: &[u8] = include_bytes!("testdata/jwt-rs256.pem");
    const RSA_PUB: &[u8] = include_bytes!("testdata/jwt-rs256.pub.pem");
    const ISS: &str = "https://issuer.test";

    struct Signer {
        key: EncodingKey,
        alg: Algorithm,
        kid: &'static str,
        /// Ed25519's raw public key (the crate derives only from PKCS#8 v1).
        ed_public: Option<Vec<u8>>,
    }

    fn rsa(kid: &'static str) -> Signer {
        Signer {
            key: EncodingKey::from_rsa_pem(RSA).unwrap(),
            alg: Algorithm::RS256,
            kid,
            ed_public: None,
        }
    }

    fn ec(kid: &'static str) -> Signer {
        let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Signer {
            key: EncodingKey::from_ec_der(&k.serialize_der()),
            alg: Algorithm::ES256,
            kid,
            ed_public: None,
        }
    }

    fn ed(kid: &'static str) -> Signer {
        let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        Signer {
            key: EncodingKey::from_ed_der(&k.serialize_der()),
            alg: Algorithm::EdDSA,
            kid,
            ed_public: Some(k.public_key_raw().to_vec()),
        }
    }

    fn jwks(signers: &[&Signer]) -> String {
        let keys: Vec<Jwk> = signers
            .iter()
            .map(|s| {
                let mut j = match &s.ed_public {
                    Some(x) => serde_json::from_value(json!({
                        "kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(x)
                    }))
                    .unwrap(),
                    None => Jwk::from_encoding_key(&s.key, s.alg).unwrap(),
                };
                j.common.key_id = Some(s.kid.into());
                j
            })
            .collect();
        serde_json::to_string(&JwkSet { keys }).unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn token(s: &Signer, claims: Value) -> String {
        let mut h = Header::new(s.alg);
        h.kid = Some(s.kid.into());
        encode(&h, &claims, &s.key).unwrap()
    }

    fn good_claims() -> Value {
        json!({"iss": ISS, "aud": "web", "sub": "alice", "exp": now() + 600,
               "scope": "orders.read orders.write", "realm": {"roles": ["admin", "dev"]}})
    }

    fn provider(jwks: String) -> v1::JwtProvider {
        v1::JwtProvider {
            id: "shop/users/0".into(),
            issuer: ISS.into(),
            audiences: vec!["web".into()],
            locations: vec![
                v1::TokenLocation {
                    kind: Some(v1::token_location::Kind::Header(v1::HeaderLocation {
                        name: "authorization".into(),
                        prefix: "Bearer ".into(),
                    })),
                },
                v1::TokenLocation {
                    kind: Some(v1::token_location::Kind::QueryParam("access_token".into())),
                },
            ],
            jwks,
            claim_headers: vec![v1::ClaimHeader {
                claim: "realm.roles".into(),
                header: "x-roles".into(),
            }],
            strip_token: false,
            clock_skew_s: 5,
        }
    }

    fn port(p: v1::JwtProvider) -> PortAuthn {
        PortAuthn {
            issuers: vec![Arc::new(Issuer::new(&p))],
        }
    }

    fn check(a: &PortAuthn, token: &str) -> Result<Option<Verified>, Refused> {
        let req = http::Request::get("/orders")
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap();
        a.authenticate(&mut req.into_parts().0)
    }

    #[test]
    fn rs256_es256_and_eddsa_tokens_pass_with_their_claims() {
        let (r, e, d) = (rsa("r1"), ec("e1"), ed("d1"));
        let a = port(provider(jwks(&[&r, &e, &d])));
        assert_eq!(a.issuers[0].kids(), ["r1", "e1", "d1"]);
        for s in [&r, &e, &d] {
            let v = check(&a, &token(s, good_claims())).unwrap().unwrap();
            assert_eq!(v.issuer, "shop/users/0");
            assert_eq!(v.claims["sub"], "alice");
        }
    }

    #[test]
    fn refused_tokens_say_why() {
        let (r, e) = (rsa("r1"), ec("e1"));
        let a = port(provider(jwks(&[&r, &e])));
        let b64 = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let with = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
            let mut c = good_claims().as_object().unwrap().clone();
            f(&mut c);
            Value::Object(c)
        };
        // alg none: no signature at all.
        let none = format!(
            "{}.{}.",
            b64(json!({"alg": "none", "kid": "r1"})),
            b64(good_claims())
        );
        // Key confusion: HS256 keyed with the RSA public key.
        let mut hs = Header::new(Algorithm::HS256);
        hs.kid = Some("r1".into());
        let confused = encode(
            &hs,
            &good_claims(),
            &EncodingKey::from_secret(RSA_PUB).unwrap(),
        )
        .unwrap();
        // The kid of an EC key on an RS256 token.
        let mut switched = Header::new(Algorithm::RS256);
        switched.kid = Some("e1".into());
        let switched = encode(&switched, &good_claims(), &r.key).unwrap();
        // Signed by a key the issuer never published, under its kid.
        let forged = token(
            &Signer {
                kid: "e1",
                ..ec("x")
            },
            good_claims(),
        );
        let cases: Vec<(&str, String, Refused)> = vec![
            ("alg none", none, Refused::AlgNotAllowed),
            (
                "HS256 with the public key",
                confused,
                Refused::AlgNotAllowed,
            ),
            ("RS256 under an EC kid", switched, Refused::AlgNotAllowed),
            ("forged signature", forged, Refused::BadSignature),
            (
                "expired",
                token(
                    &r,
                    with(&|c| {
                        c.insert("exp".into(), json!(now() - 60));
                    }),
                ),
                Refused::Expired,
            ),
            (
                "not yet valid",
                token(
                    &r,
                    with(&|c| {
                        c.insert("nbf".into(), json!(now() + 600));
                    }),
                ),
                Refused::NotYetValid,
            ),
            (
                "wrong audience",
                token(
                    &r,
                    with(&|c| {
                        c.insert("aud".into(), json!("billing"));
                    }),
                ),
                Refused::BadAudience,
            ),
            (
                "no audience",
                token(
                    &r,
                    with(&|c| {
                        c.remove("aud");
                    }),
                ),
                Refused::MissingClaim,
            ),
            (
                "another issuer",
                token(
                    &r,
                    with(&|c| {
                        c.insert("iss".into(), json!("https://evil.test"));
                    }),
                ),
                Refused::UnknownIssuer,
            ),
            (
                "no exp",
                token(
                    &r,
                    with(&|c| {
                        c.remove("exp");
                    }),
                ),
                Refused::MissingClaim,
            ),
            (
                "unknown kid",
                token(&rsa("r9"), good_claims()),
                Refused::UnknownKid,
            ),
            ("two segments", "abc.def".into(), Refused::Malformed),
            ("garbage", "%%%.%%%.%%%".into(), Refused::Malformed),
            ("huge", "a".repeat(9000), Refused::Malformed),
        ];
        for (what, t, want) in cases {
            assert_eq!(check(&a, &t).map(|_| ()), Err(want), "{what}");
        }
    }

    #[test]
    fn no_token_passes_and_claim_headers_cannot_be_forged() {
        let r = rsa("r1");
        let a = port(provider(jwks(&[&r])));
        let req = http::Request::get("/")
            .header("x-roles", "admin")
            .body(())
            .unwrap();
        let mut parts = req.into_parts().0;
        assert!(a.authenticate(&mut parts).unwrap().is_none());
        assert!(
            parts.headers.get("x-roles").is_none(),
            "a forged claim header"
        );
        let req = http::Request::get("/")
            .header("x-roles", "root")
            .header(
                "authorization",
                format!("Bearer {}", token(&r, good_claims())),
            )
            .body(())
            .unwrap();
        let mut parts = req.into_parts().0;
        a.authenticate(&mut parts).unwrap().unwrap();
        assert_eq!(parts.headers["x-roles"], "admin,dev");
        assert!(parts.headers.contains_key("authorization"));
    }

    #[test]
    fn tokens_are_found_in_a_query_parameter_and_stripped_when_asked() {
        let r = rsa("r1");
        let mut p = provider(jwks(&[&r]));
        p.strip_token = true;
        let a = port(p);
        let uri = format!("/orders?a=1&access_token={}&b=2", token(&r, good_claims()));
        let mut parts = http::Request::get(uri).body(()).unwrap().into_parts().0;
        a.authenticate(&mut parts).unwrap().unwrap();
        assert_eq!(parts.uri.to_string(), "/orders?a=1&b=2");
        // A header without the prefix is not a token.
        let mut parts = http::Request::get("/")
            .header("authorization", "Basic YWxpY2U6cHc=")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert!(a.authenticate(&mut parts).unwrap().is_none());
    }

    #[test]
    fn claims_match_by_path_arrays_and_scope_words() {
        let c = good_claims().as_object().unwrap().clone();
        let path = |p: &str| p.split('.').map(str::to_string).collect::<Vec<_>>();
        let v = claim(&c, &path("realm.roles")).unwrap();
        assert_eq!(claim_values("roles", v), ["admin", "dev"]);
        let v = claim(&c, &path("scope")).unwrap();
        assert_eq!(claim_values("scope", v), ["orders.read", "orders.write"]);
        assert!(claim(&c, &path("realm.nope")).is_none());
    }
}
