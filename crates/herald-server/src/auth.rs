//! API tokens and what each may do.
//!
//! Owns [`Tokens`] (the configured tokens, each kept only as the SHA-256 of
//! its secret), [`Grant`] (one token's permissions: topic patterns it may
//! publish to, subscribe to, call and serve, consumer groups it may join,
//! and whether it may administer) and [`Caller`] (who a request comes
//! from). No grant implies another (DESIGN.md §10): reading a command's
//! topic is not serving it, calling is not serving, and subscribing to a
//! pattern is not joining a named group there. A presented token is hashed and
//! compared against every configured hash in constant time, so neither the
//! comparison nor the position of a match leaks through timing. Tokens are
//! random secrets, so a plain SHA-256 (not a password hash) is the right
//! tool: there is nothing to brute-force from a dictionary.
//!
//! With no tokens configured the server is open (every caller may do
//! everything) and may listen only on loopback; `config` enforces that.

use std::sync::Arc;

use herald::{ErrorCode, Pattern};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// What a request wants to do to a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Publish events to it.
    Publish,
    /// Subscribe to it or read (replay) it.
    Subscribe,
    /// Call it as a command.
    Call,
    /// Handle it as a command: receive its calls and answer them.
    Serve,
    /// Join the consumer group of this name and settle its deliveries.
    Group,
    /// Register, check and delete the schema subjects it covers.
    Schemas,
    /// Administer: topics, groups, dead letters, metrics.
    Admin,
}

/// One configured token, as `herald.toml` gives it:
///
/// ```toml
/// [[tokens]]
/// name = "billing"
/// sha256 = "…"                 # herald token hash <secret>
/// publish = ["billing.>"]
/// subscribe = ["orders.*", "billing.>"]
/// call = ["pricing.quote"]
/// serve = ["billing.refund"]      # handle this command over the WebSocket
/// groups = ["billing"]            # join these consumer groups ("*": any)
/// schemas = ["billing.>"]         # register, check, delete these topics' schemas
/// admin = false
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// A name for logs and metrics; never the secret.
    pub name: String,
    /// Hex SHA-256 of the secret.
    pub sha256: String,
    /// Topic patterns it may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Topic patterns it may subscribe to and replay.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Command topic patterns it may call.
    #[serde(default)]
    pub call: Vec<String>,
    /// Command topic patterns it may handle (serve).
    #[serde(default)]
    pub serve: Vec<String>,
    /// Consumer group names it may join and settle deliveries of; `"*"`
    /// is every group.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Topic patterns whose schema subjects it may register, check and
    /// delete (a subject's pattern must lie inside one).
    #[serde(default)]
    pub schemas: Vec<String>,
    /// May list topics and groups, handle dead letters and read metrics.
    #[serde(default)]
    pub admin: bool,
}

/// The hex SHA-256 of `secret`, as a [`Grant`] stores it.
///
/// ```
/// let h = herald_server::auth::hash_token("s3cret");
/// assert_eq!(h.len(), 64);
/// ```
pub fn hash_token(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A fresh random secret: two v4 UUIDs' 244 random bits (from `uuid`'s
/// CSPRNG-backed generator), as 64 hex digits.
pub fn new_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

struct Compiled {
    grant: Grant,
    hash: [u8; 32],
    publish: Vec<Pattern>,
    subscribe: Vec<Pattern>,
    call: Vec<Pattern>,
    serve: Vec<Pattern>,
    schemas: Vec<Pattern>,
}

/// The configured tokens. Empty means the server is open.
#[derive(Clone, Default)]
pub struct Tokens {
    all: Arc<Vec<Compiled>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.all.iter().map(|c| &c.grant.name))
            .finish()
    }
}

impl Tokens {
    /// Check and compile `grants`: each hash is 64 hex digits, each pattern
    /// valid, names unique. Errors name `HERALD_TOKENS`.
    pub fn new(grants: Vec<Grant>) -> herald::Result<Tokens> {
        let bad = |what: String| {
            herald::config::invalid("HERALD_TOKENS", what, "see `herald token --help`")
        };
        let mut all = Vec::with_capacity(grants.len());
        for grant in grants {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&grant.sha256, &mut hash).map_err(|_| {
                bad(format!(
                    "token {:?} sha256 {:?} (64 hex digits)",
                    grant.name, grant.sha256
                ))
            })?;
            if grant.name.is_empty() || all.iter().any(|c: &Compiled| c.grant.name == grant.name) {
                return Err(bad(format!(
                    "token name {:?} (non-empty, unique)",
                    grant.name
                )));
            }
            let patterns = |list: &[String]| -> herald::Result<Vec<Pattern>> {
                list.iter()
                    .map(|p| {
                        Pattern::new(p)
                            .map_err(|e| bad(format!("token {:?}: {}", grant.name, e.message())))
                    })
                    .collect()
            };
            if let Some(g) = grant.groups.iter().find(|g| g.is_empty()) {
                return Err(bad(format!(
                    "token {:?}: group name {g:?} (non-empty, or \"*\" for every group)",
                    grant.name
                )));
            }
            all.push(Compiled {
                publish: patterns(&grant.publish)?,
                subscribe: patterns(&grant.subscribe)?,
                call: patterns(&grant.call)?,
                serve: patterns(&grant.serve)?,
                schemas: patterns(&grant.schemas)?,
                hash,
                grant,
            });
        }
        Ok(Tokens { all: Arc::new(all) })
    }

    /// No tokens: the server is open.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// How many tokens.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Who presents `secret` (`None` when it is no configured token). Every
    /// hash is compared, in constant time, whatever matches.
    fn find(&self, secret: &str) -> Option<usize> {
        let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let mut found = None;
        for (i, c) in self.all.iter().enumerate() {
            if bool::from(c.hash.ct_eq(&presented)) {
                found = Some(i);
            }
        }
        found
    }

    /// The caller a request's `Authorization: Bearer` value (or `?token=`)
    /// makes: everyone when the server is open; `UNAUTHORIZED` when a token
    /// is missing or unknown.
    pub fn caller(&self, secret: Option<&str>) -> Result<Caller, ApiError> {
        if self.is_empty() {
            return Ok(Caller::Open);
        }
        let secret = secret.ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "an API token is required (Authorization: Bearer <token>)",
            )
        })?;
        match self.find(secret) {
            Some(i) => Ok(Caller::Token {
                tokens: self.clone(),
                index: i,
            }),
            None => Err(ApiError::new(ErrorCode::Unauthorized, "unknown API token")),
        }
    }
}

/// Who a request comes from.
#[derive(Clone)]
pub enum Caller {
    /// The server has no tokens: everything is allowed.
    Open,
    /// A configured token.
    Token {
        /// All tokens (shared).
        tokens: Tokens,
        /// Which one.
        index: usize,
    },
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Caller({})", self.name())
    }
}

impl Caller {
    /// The token's name (`open` when there are no tokens), for logs and the
    /// rate limiter.
    pub fn name(&self) -> &str {
        match self {
            Caller::Open => "open",
            Caller::Token { tokens, index } => &tokens.all[*index].grant.name,
        }
    }

    /// `FORBIDDEN` unless this caller may do `what` to `target` (a topic, or
    /// for a subscription a pattern, which must lie inside one it may use;
    /// for [`Permission::Group`] a group name).
    pub fn require(&self, what: Permission, target: &str) -> Result<(), ApiError> {
        let Caller::Token { tokens, index } = self else {
            return Ok(());
        };
        let c = &tokens.all[*index];
        let allowed = match what {
            Permission::Admin => c.grant.admin,
            Permission::Publish => c.publish.iter().any(|p| covers(p.as_str(), target)),
            Permission::Subscribe => c.subscribe.iter().any(|p| covers(p.as_str(), target)),
            Permission::Call => c.call.iter().any(|p| covers(p.as_str(), target)),
            Permission::Serve => c.serve.iter().any(|p| covers(p.as_str(), target)),
            Permission::Group => c.grant.groups.iter().any(|g| g == "*" || g == target),
            Permission::Schemas => c.schemas.iter().any(|p| covers(p.as_str(), target)),
        };
        if allowed {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("token {:?} may not {} {target:?}", c.grant.name, verb(what)),
            ))
        }
    }
}

fn verb(what: Permission) -> &'static str {
    match what {
        Permission::Publish => "publish to",
        Permission::Subscribe => "subscribe to",
        Permission::Call => "call",
        Permission::Serve => "serve (handle) command",
        Permission::Group => "join consumer group",
        Permission::Schemas => "register or delete the schemas of",
        Permission::Admin => "administer",
    }
}

/// Whether every topic `inner` (a topic or a pattern) matches is matched by
/// pattern `outer`.
pub fn covers(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('.');
    let mut i = inner.split('.');
    loop {
        match (o.next(), i.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(seg)) if seg != ">" => {}
            (Some(a), Some(b)) if a == b && a != "*" && a != ">" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(vec![
            Grant {
                name: "billing".into(),
                sha256: hash_token("b-secret"),
                publish: vec!["billing.>".into()],
                subscribe: vec!["orders.*".into()],
                call: vec!["pricing.quote".into()],
                serve: vec!["billing.refund".into()],
                groups: vec!["billing".into()],
                schemas: vec![],
                admin: false,
            },
            Grant {
                name: "ops".into(),
                sha256: hash_token("o-secret"),
                publish: vec![],
                subscribe: vec![],
                call: vec![],
                serve: vec![],
                groups: vec!["*".into()],
                schemas: vec![],
                admin: true,
            },
        ])
        .unwrap()
    }

    #[test]
    fn patterns_cover_what_lies_inside_them() {
        assert!(covers(">", "a.b.c"));
        assert!(covers("a.>", "a.b"));
        assert!(covers("a.>", "a.*"));
        assert!(covers("a.>", "a.>"));
        assert!(!covers("a.>", "a"));
        assert!(covers("a.*", "a.b"));
        assert!(covers("a.*", "a.*"));
        assert!(!covers("a.*", "a.>"));
        assert!(!covers("a.*", "a.b.c"));
        assert!(covers("a.b", "a.b"));
        assert!(!covers("a.b", "a.*"));
        assert!(!covers("a.b", "a.c"));
        assert!(!covers("*.b", ">"));
    }

    #[test]
    fn a_missing_or_unknown_token_is_unauthorized() {
        let t = tokens();
        assert_eq!(t.caller(None).unwrap_err().code(), ErrorCode::Unauthorized);
        assert_eq!(
            t.caller(Some("nope")).unwrap_err().code(),
            ErrorCode::Unauthorized
        );
        assert_eq!(t.caller(Some("b-secret")).unwrap().name(), "billing");
    }

    #[test]
    fn a_token_may_do_only_what_its_patterns_allow() {
        let t = tokens();
        let billing = t.caller(Some("b-secret")).unwrap();
        billing
            .require(Permission::Publish, "billing.invoice.sent")
            .unwrap();
        billing.require(Permission::Subscribe, "orders.*").unwrap();
        billing.require(Permission::Call, "pricing.quote").unwrap();
        billing
            .require(Permission::Serve, "billing.refund")
            .unwrap();
        billing.require(Permission::Group, "billing").unwrap();
        for (what, target) in [
            (Permission::Publish, "orders.placed"),
            (Permission::Subscribe, "orders.>"),
            (Permission::Call, "pricing.refund"),
            (Permission::Serve, "pricing.quote"),
            (Permission::Serve, "orders.placed"),
            (Permission::Group, "fulfilment"),
            (Permission::Admin, ""),
        ] {
            let e = billing.require(what, target).unwrap_err();
            assert_eq!(e.code(), ErrorCode::Forbidden, "{what:?} {target}");
        }
        let ops = t.caller(Some("o-secret")).unwrap();
        ops.require(Permission::Admin, "").unwrap();
        ops.require(Permission::Group, "any-group").unwrap();
        assert_eq!(
            ops.require(Permission::Publish, "a.b").unwrap_err().code(),
            ErrorCode::Forbidden
        );
    }

    #[test]
    fn open_servers_allow_everything() {
        let open = Tokens::default().caller(None).unwrap();
        open.require(Permission::Admin, "").unwrap();
        open.require(Permission::Publish, "a.b").unwrap();
    }

    #[test]
    fn bad_token_config_names_the_key() {
        let e = Tokens::new(vec![Grant {
            name: "x".into(),
            sha256: "abc".into(),
            publish: vec![],
            subscribe: vec![],
            call: vec![],
            serve: vec![],
            groups: vec![],
            schemas: vec![],
            admin: false,
        }])
        .err()
        .unwrap();
        assert!(e.to_string().contains("HERALD_TOKENS"), "{e}");
    }
}
