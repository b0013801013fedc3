//! Who calls, and what they may do with an adapter.
//!
//! An authenticator (crate `mcp-gateway-auth`) turns a bearer token into a [`Principal`]; the
//! [`Authorizer`] port decides per adapter and [`Action`]. [`RolePolicy`] is the default
//! authorizer, with the semantics of microsoft/mcp-gateway:
//!
//! - a principal holding the admin role (`mcp.admin` by default) may do everything;
//! - the creator of an adapter may read, use, update and delete it;
//! - a principal holding any of an adapter's `requiredRoles` may read and use it; an adapter
//!   with no `requiredRoles` may be read and used by every authenticated principal;
//! - creating an adapter needs the creator role when one is configured (by default any
//!   authenticated principal may create).
//!
//! Roles compare ASCII case-insensitively, as the anchor does; the creator is matched by exact
//! subject and issuer (the anchor ignores case and issuer, which lets a namesake of another
//! issuer, or an API key of that name, act as the creator).

use std::fmt;
use std::sync::Arc;

/// An authenticated caller.
///
/// A request carries its caller as a request extension, either as a `Principal` or as an
/// `Arc<Principal>`: a front that serves many requests as one principal (the anonymous caller
/// of a gateway without authentication, the holder of an API key) shares it instead of copying
/// its strings for every request. [`Principal::of`] reads either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who: the token's subject claim, or the name of a static API key. Recorded as an
    /// adapter's `createdBy` and forwarded upstream as `X-Mcp-UserId`.
    pub subject: String,
    /// Who vouched for it: the JWT's `iss`, [`Principal::API_KEY_ISSUER`] for static keys,
    /// `None` for the anonymous caller of a gateway running without authentication.
    pub issuer: Option<String>,
    /// Roles, as the token's role claim or the key's configuration lists them.
    pub roles: Vec<String>,
}

impl Principal {
    /// The issuer of principals authenticated by a static API key.
    pub const API_KEY_ISSUER: &'static str = "api-key";
    /// The subject of requests to a gateway that runs without authentication.
    pub const ANONYMOUS: &'static str = "anonymous";

    pub fn new(subject: impl Into<String>, issuer: Option<String>, roles: Vec<String>) -> Self {
        Self {
            subject: subject.into(),
            issuer,
            roles,
        }
    }

    /// The caller of a gateway running with `--insecure-no-auth`. It holds `roles` (the
    /// gateway gives it the admin role: without authentication there is nobody to refuse).
    pub fn anonymous(roles: Vec<String>) -> Self {
        Self::new(Self::ANONYMOUS, None, roles)
    }

    /// The caller of a request: its `Arc<Principal>` extension, else its `Principal` one.
    pub fn of(extensions: &http::Extensions) -> Option<&Principal> {
        extensions
            .get::<Arc<Principal>>()
            .map(|shared| &**shared)
            .or_else(|| extensions.get::<Principal>())
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r.eq_ignore_ascii_case(role))
    }

    /// The owner key a session is bound to: issuer and subject, so the same subject from two
    /// issuers are two owners.
    pub fn session_owner(&self) -> String {
        match &self.issuer {
            Some(iss) => format!("{iss}#{}", self.subject),
            None => self.subject.clone(),
        }
    }

    /// Whether `owner` (a recorded [`session_owner`](Self::session_owner)) is this principal,
    /// without building the owner string.
    pub fn is_session_owner(&self, owner: &str) -> bool {
        match &self.issuer {
            Some(iss) => owner
                .strip_prefix(iss.as_str())
                .and_then(|rest| rest.strip_prefix('#'))
                .is_some_and(|sub| sub == self.subject),
            None => owner == self.subject,
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.issuer {
            Some(iss) => write!(f, "{} ({iss})", self.subject),
            None => f.write_str(&self.subject),
        }
    }
}

/// What a principal wants to do with an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// See its resource and status (`GET /adapters`, `GET /adapters/{name}[/status]`).
    Read,
    /// Open sessions and send requests on the data plane.
    Use,
    /// Update or delete it, read its logs.
    Write,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Use => "use",
            Action::Write => "write",
        }
    }
}

/// The access-relevant fields of an adapter: who created it and which roles may use it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdapterAccess {
    /// The creator's subject; `None` for adapters of the gateway's configuration file, which
    /// nobody created through the API.
    pub created_by: Option<String>,
    /// The creator's issuer; when known, a principal is the creator only if both match.
    pub created_by_issuer: Option<String>,
    /// Any of these roles lets a principal read and use the adapter; empty: every
    /// authenticated principal may.
    pub required_roles: Vec<String>,
}

/// Port: may this principal do this with this adapter.
pub trait Authorizer: Send + Sync + 'static {
    /// Whether `principal` may perform `action` on the adapter described by `access`.
    fn allows(&self, principal: &Principal, access: &AdapterAccess, action: Action) -> bool;
    /// Whether `principal` may create adapters at all.
    fn may_create(&self, principal: &Principal) -> bool;
    /// Whether `principal` holds the admin role (which privileged fields require).
    fn is_admin(&self, principal: &Principal) -> bool;
}

/// The role names [`RolePolicy`] uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolePolicy {
    /// May do everything (default `mcp.admin`).
    pub admin_role: String,
    /// When set, only holders of this role (or the admin role) may create adapters; when
    /// `None`, every authenticated principal may.
    pub creator_role: Option<String>,
}

impl Default for RolePolicy {
    fn default() -> Self {
        Self {
            admin_role: "mcp.admin".to_owned(),
            creator_role: None,
        }
    }
}

impl Authorizer for RolePolicy {
    fn allows(&self, principal: &Principal, access: &AdapterAccess, action: Action) -> bool {
        if self.is_admin(principal) {
            return true;
        }
        // Subjects compare exactly (OIDC subjects are case-sensitive), and with the issuer
        // when it was recorded: `alice` of one issuer is not `alice` of another, nor an API
        // key named `alice`.
        let creator = access.created_by.as_deref() == Some(principal.subject.as_str())
            && access
                .created_by_issuer
                .as_ref()
                .is_none_or(|iss| principal.issuer.as_ref() == Some(iss));
        if creator {
            return true;
        }
        match action {
            Action::Read | Action::Use => {
                access.required_roles.is_empty()
                    || access.required_roles.iter().any(|r| principal.has_role(r))
            }
            Action::Write => false,
        }
    }

    fn may_create(&self, principal: &Principal) -> bool {
        match &self.creator_role {
            Some(role) => self.is_admin(principal) || principal.has_role(role),
            None => true,
        }
    }

    fn is_admin(&self, principal: &Principal) -> bool {
        principal.has_role(&self.admin_role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(sub: &str, roles: &[&str]) -> Principal {
        Principal::new(
            sub,
            Some("https://idp".into()),
            roles.iter().map(|r| r.to_string()).collect(),
        )
    }

    fn access(by: Option<&str>, roles: &[&str]) -> AdapterAccess {
        AdapterAccess {
            created_by: by.map(str::to_owned),
            created_by_issuer: by.map(|_| "https://idp".to_owned()),
            required_roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn matrix() {
        let policy = RolePolicy::default();
        let guarded = access(Some("alice"), &["team-a"]);
        let open = access(Some("alice"), &[]);
        let cases: &[(Principal, &AdapterAccess, [bool; 3])] = &[
            // read, use, write
            (who("root", &["MCP.Admin"]), &guarded, [true, true, true]),
            (who("alice", &[]), &guarded, [true, true, true]),
            (who("ALICE", &[]), &guarded, [false, false, false]),
            (who("bob", &["team-a", "x"]), &guarded, [true, true, false]),
            (who("carol", &["team-b"]), &guarded, [false, false, false]),
            (who("carol", &[]), &open, [true, true, false]),
        ];
        for (p, a, expect) in cases {
            let got = [Action::Read, Action::Use, Action::Write].map(|x| policy.allows(p, a, x));
            assert_eq!(&got, expect, "{p} on {a:?}");
        }
    }

    #[test]
    fn config_adapters_have_no_creator() {
        let policy = RolePolicy::default();
        let configured = access(None, &["ops"]);
        let anyone = who("anonymous", &[]);
        assert!(!policy.allows(&anyone, &configured, Action::Use));
        assert!(!policy.allows(&anyone, &configured, Action::Write));
        assert!(policy.allows(&who("x", &["ops"]), &configured, Action::Use));
    }

    #[test]
    fn the_creator_is_subject_and_issuer() {
        let policy = RolePolicy::default();
        let mine = access(Some("alice"), &["ops"]);
        let mut namesake = who("alice", &[]);
        namesake.issuer = Some(Principal::API_KEY_ISSUER.into());
        assert!(!policy.allows(&namesake, &mine, Action::Write));
        assert!(policy.allows(&who("alice", &[]), &mine, Action::Write));
        // Records without an issuer (older ones) match on the subject alone.
        let old = AdapterAccess {
            created_by_issuer: None,
            ..mine
        };
        assert!(policy.allows(&namesake, &old, Action::Write));
    }

    #[test]
    fn creator_role() {
        let mut policy = RolePolicy::default();
        assert!(policy.may_create(&who("x", &[])));
        policy.creator_role = Some("mcp.creator".into());
        assert!(!policy.may_create(&who("x", &[])));
        assert!(policy.may_create(&who("x", &["mcp.creator"])));
        assert!(policy.may_create(&who("x", &["mcp.admin"])));
    }

    #[test]
    fn the_caller_is_read_shared_or_owned() {
        let mut extensions = http::Extensions::new();
        assert_eq!(Principal::of(&extensions), None);
        extensions.insert(who("owned", &[]));
        assert_eq!(
            Principal::of(&extensions).map(|p| p.subject.as_str()),
            Some("owned")
        );
        // A shared one wins: a front that inserts it means it (and inserts no other).
        extensions.insert(Arc::new(who("shared", &["r"])));
        assert_eq!(
            Principal::of(&extensions).map(|p| p.subject.as_str()),
            Some("shared")
        );
        extensions.remove::<Principal>();
        assert_eq!(Principal::of(&extensions), Some(&who("shared", &["r"])));
    }

    #[test]
    fn session_owner_includes_issuer() {
        let a = who("bob", &[]);
        let mut b = a.clone();
        b.issuer = Some("https://other".into());
        assert_ne!(a.session_owner(), b.session_owner());
        assert_eq!(Principal::anonymous(vec![]).session_owner(), "anonymous");
        for p in [&a, &b, &Principal::anonymous(vec![])] {
            assert!(p.is_session_owner(&p.session_owner()));
        }
        assert!(!a.is_session_owner(&b.session_owner()));
        assert!(!b.is_session_owner(&a.session_owner()));
        assert!(!a.is_session_owner("bob"));
        assert!(!Principal::anonymous(vec![]).is_session_owner(&a.session_owner()));
    }
}
