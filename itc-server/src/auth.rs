//! Who calls: bearer tokens mapped to principals and their roles, from a tokens file.
//!
//! The tokens file (TOML) lists principals; each has the id it acts as (its session,
//! agent or coordinator id), its roles, and the SHA-256 of its token, never the token:
//!
//! ```toml
//! [[principal]]
//! id = "worker-1"
//! roles = ["agent"]
//! token_sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
//! ```
//!
//! [`AuthLayer`] authenticates every call to the ITC services (health and reflection
//! stay open, as load balancers and tools expect): no token or an unknown one answers
//! UNAUTHENTICATED; a known one puts its [`Principal`] in the request's extensions, where
//! the adapters' authorization ([`crate::grpc`]) finds it. [`Authenticator::reload`]
//! swaps in a re-read file (the binary does it on SIGHUP); a bad file keeps the old one.
//!
//! Tokens are random secrets, so a single SHA-256 is the right hash (as for API tokens
//! elsewhere): the file alone does not let anyone call, and a lookup by hash leaks
//! nothing through timing about other tokens.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::core::validate;
use crate::ratelimit::RateLimiter;

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs tasks: starts them as itself, changes its own, answers commands for them.
    Agent,
    /// Steers tasks: coordinates, locks, interrupts, answers input; sees every task.
    Coordinator,
    /// Sees everything, and may do what a coordinator does.
    Admin,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The id it acts as: its session id, and its agent or coordinator id.
    pub id: String,
    /// Its roles.
    pub roles: Vec<Role>,
}

impl Principal {
    /// Whether it has `role` (admin counts as coordinator too).
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role) || (role == Role::Coordinator && self.roles.contains(&Role::Admin))
    }

    /// Whether it sees every task and session (coordinators and admins), not only its own.
    pub fn sees_all(&self) -> bool {
        self.has(Role::Coordinator)
    }
}

/// Why a tokens file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("cannot read the tokens file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("invalid tokens file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    principal: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    roles: Vec<Role>,
    token_sha256: String,
}

/// Principals by the SHA-256 of their token.
type Tokens = HashMap<[u8; 32], Arc<Principal>>;

/// The principals of a tokens file, reloadable.
pub struct Authenticator {
    path: PathBuf,
    tokens: RwLock<Arc<Tokens>>,
    /// Bumped on every reload: open streams look again whether their principal stays.
    reloads: tokio::sync::watch::Sender<u64>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("path", &self.path)
            .field("principals", &self.current().len())
            .finish()
    }
}

impl Authenticator {
    /// Reads the tokens file at `path`.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let tokens = read(path)?;
        Ok(Self {
            path: path.to_owned(),
            tokens: RwLock::new(Arc::new(tokens)),
            reloads: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Reads the file again and, when it is valid, uses it from now on; returns how many
    /// principals it holds. A bad file leaves the current principals in place.
    pub fn reload(&self) -> Result<usize, AuthError> {
        let tokens = Arc::new(read(&self.path)?);
        let count = tokens.len();
        match self.tokens.write() {
            Ok(mut current) => *current = tokens,
            Err(poisoned) => *poisoned.into_inner() = tokens,
        }
        self.reloads.send_modify(|n| *n += 1);
        Ok(count)
    }

    /// Whether `principal` (as authenticated with `digest`) is still in the file: the
    /// same token, id and roles.
    fn still_holds(&self, digest: &[u8; 32], principal: &Principal) -> bool {
        self.current().get(digest).is_some_and(|p| **p == *principal)
    }

    /// The file it reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn current(&self) -> Arc<Tokens> {
        match self.tokens.read() {
            Ok(tokens) => tokens.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The principal of an `authorization` header value (`Bearer <token>`).
    pub fn authenticate(&self, header: Option<&http::HeaderValue>) -> Result<Arc<Principal>, tonic::Status> {
        self.credential(header).map(|(principal, _)| principal)
    }

    /// The principal of an `authorization` header value, and its token's digest (what a
    /// later reload is checked against).
    fn credential(&self, header: Option<&http::HeaderValue>) -> Result<(Arc<Principal>, [u8; 32]), tonic::Status> {
        let Some(header) = header else {
            return Err(tonic::Status::unauthenticated(
                "no credentials: send `authorization: Bearer <token>`",
            ));
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| tonic::Status::unauthenticated("the authorization header is not `Bearer <token>`"))?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let principal = self
            .current()
            .get(&digest)
            .cloned()
            .ok_or_else(|| tonic::Status::unauthenticated("unknown token"))?;
        Ok((principal, digest))
    }
}

/// What a long-lived call (Subscribe, Heartbeat) watches: it resolves once a reload of the
/// tokens file has removed or changed the caller's token, so that the stream ends.
#[derive(Debug, Clone)]
pub struct Revocation {
    auth: Arc<Authenticator>,
    digest: [u8; 32],
    principal: Arc<Principal>,
}

impl Revocation {
    /// Resolves when the caller's credentials no longer hold.
    pub async fn revoked(self) {
        let mut reloads = self.auth.reloads.subscribe();
        loop {
            if !self.auth.still_holds(&self.digest, &self.principal) {
                return;
            }
            if reloads.changed().await.is_err() {
                // The authenticator is gone (the server stopped): nothing more to watch.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Authenticator {}

/// The SHA-256 of a token, as the tokens file writes it (lowercase hex).
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn read(path: &Path) -> Result<Tokens, AuthError> {
    let invalid = |reason: String| AuthError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.to_owned(),
        source,
    })?;
    let file: TokensFile = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    if file.principal.is_empty() {
        return Err(invalid("it lists no [[principal]]: nobody could call".into()));
    }
    let mut tokens = Tokens::new();
    let mut ids = HashMap::new();
    for (n, entry) in file.principal.into_iter().enumerate() {
        let at = format!("principal {} (`{}`)", n + 1, entry.id);
        validate::id("id", &entry.id).map_err(|e| invalid(format!("{at}: {e}")))?;
        if entry.roles.is_empty() {
            return Err(invalid(format!("{at}: `roles` is empty (agent, coordinator, admin)")));
        }
        let mut digest = [0u8; 32];
        hex::decode_to_slice(entry.token_sha256.trim(), &mut digest).map_err(|_| {
            invalid(format!(
                "{at}: `token_sha256` must be 64 hex digits (the SHA-256 of the token, e.g. \
                 `printf %s \"$TOKEN\" | sha256sum`)"
            ))
        })?;
        if let Some(other) = ids.insert(entry.id.clone(), n + 1) {
            return Err(invalid(format!("{at}: the id is also principal {other}'s")));
        }
        let principal = Arc::new(Principal {
            id: entry.id,
            roles: entry.roles,
        });
        if tokens.insert(digest, principal).is_some() {
            return Err(invalid(format!("{at}: the same token as another principal")));
        }
    }
    Ok(tokens)
}

/// Paths that need no credentials: health checks and reflection.
fn is_open(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

/// Authenticates every call to the ITC services (see the module docs), then takes a token
/// of the principal's request rate ([`RateLimiter`]); with no authenticator (auth off),
/// lets every call through as it is. One layer: a call pays one check when auth is off.
#[derive(Debug, Clone)]
pub(crate) struct AuthLayer {
    auth: Option<Arc<Authenticator>>,
    rate: Option<Arc<RateLimiter>>,
}

impl AuthLayer {
    pub(crate) fn new(auth: Option<Arc<Authenticator>>, rate: Option<Arc<RateLimiter>>) -> Self {
        Self { auth, rate }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
            rate: self.rate.clone(),
        }
    }
}

/// The service of [`AuthLayer`].
#[derive(Debug, Clone)]
pub(crate) struct AuthService<S> {
    inner: S,
    auth: Option<Arc<Authenticator>>,
    rate: Option<Arc<RateLimiter>>,
}

type Refused<R, E> = std::future::Ready<Result<R, E>>;

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for AuthService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = futures_util::future::Either<Refused<Self::Response, Self::Error>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        if let Some(auth) = &self.auth
            && !is_open(request.uri().path())
        {
            let refused =
                |status: tonic::Status| futures_util::future::Either::Left(std::future::ready(Ok(status.into_http())));
            let (principal, digest) = match auth.credential(request.headers().get(http::header::AUTHORIZATION)) {
                Ok(credential) => credential,
                Err(status) => {
                    tracing::debug!(path = %request.uri().path(), reason = status.message(), "unauthenticated call");
                    return refused(status);
                }
            };
            if let Some(rate) = &self.rate {
                if let Err(status) = rate.check(&principal.id) {
                    return refused(status);
                }
                // For what a stream does after it opened: Heartbeat pings count too.
                request.extensions_mut().insert(rate.clone());
            }
            request.extensions_mut().insert(Revocation {
                auth: auth.clone(),
                digest,
                principal: principal.clone(),
            });
            request.extensions_mut().insert(principal);
        }
        futures_util::future::Either::Right(self.inner.call(request))
    }
}

/// Reloads the tokens file on every SIGHUP, for as long as the server runs. The handler is
/// registered here, at once; the returned future waits for the signals.
#[cfg(unix)]
pub(crate) fn reload_on_sighup(auth: Arc<Authenticator>) -> impl std::future::Future<Output = ()> + Send {
    use tokio::signal::unix::{SignalKind, signal};
    let hangups = signal(SignalKind::hangup());
    async move {
        let mut hangups = match hangups {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: the tokens file will not be reloaded");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            match auth.reload() {
                Ok(count) => {
                    tracing::info!(path = %auth.path().display(), principals = count, "tokens file reloaded (SIGHUP)");
                }
                Err(e) => {
                    tracing::error!(error = %e, "tokens file not reloaded (SIGHUP); the previous principals stay")
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failed expectation is a failed test
mod tests {
    use super::*;

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn entry(id: &str, roles: &str, token: &str) -> String {
        format!(
            "[[principal]]\nid = \"{id}\"\nroles = {roles}\ntoken_sha256 = \"{}\"\n",
            token_sha256(token)
        )
    }

    fn bearer(token: &str) -> http::HeaderValue {
        http::HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
    }

    #[test]
    fn tokens_map_to_principals_and_reload() {
        let (_dir, path) =
            file(&(entry("worker-1", r#"["agent"]"#, "s3cret") + &entry("sup", r#"["coordinator"]"#, "other")));
        let auth = Authenticator::load(&path).unwrap();
        let worker = auth.authenticate(Some(&bearer("s3cret"))).unwrap();
        assert_eq!(
            (worker.id.as_str(), worker.has(Role::Agent), worker.sees_all()),
            ("worker-1", true, false)
        );
        let sup = auth.authenticate(Some(&bearer("other"))).unwrap();
        assert!(sup.has(Role::Coordinator) && !sup.has(Role::Agent) && sup.sees_all());
        for bad in [
            None,
            Some(bearer("nope")),
            Some(http::HeaderValue::from_static("Basic czNjcmV0")),
        ] {
            let status = auth.authenticate(bad.as_ref()).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
        }

        // A new file takes over; a broken one leaves the last good one.
        std::fs::write(&path, entry("admin", r#"["admin"]"#, "root")).unwrap();
        assert_eq!(auth.reload().unwrap(), 1);
        assert!(auth.authenticate(Some(&bearer("s3cret"))).is_err());
        let admin = auth.authenticate(Some(&bearer("root"))).unwrap();
        assert!(admin.has(Role::Coordinator) && admin.sees_all());
        std::fs::write(&path, "[[principal]]\nid = 'x'\n").unwrap();
        assert!(auth.reload().is_err());
        assert!(auth.authenticate(Some(&bearer("root"))).is_ok());
    }

    #[test]
    fn bad_files_say_what_and_where() {
        let cases = [
            ("", "lists no [[principal]]"),
            (
                r#"[[principal]]
id = "a b"
roles = ["agent"]
token_sha256 = "00""#,
                "principal 1 (`a b`)",
            ),
            (
                r#"[[principal]]
id = "a"
roles = []
token_sha256 = "00""#,
                "`roles` is empty",
            ),
            (
                r#"[[principal]]
id = "a"
roles = ["agent"]
token_sha256 = "xyz""#,
                "64 hex digits",
            ),
            (
                r#"[[principal]]
id = "a"
roles = ["root"]
token_sha256 = "00""#,
                "unknown variant `root`",
            ),
        ];
        for (text, wanted) in cases {
            let (_dir, path) = file(text);
            let err = Authenticator::load(&path).unwrap_err().to_string();
            assert!(err.contains(wanted), "{text:?}: {err}");
        }
        let (_dir, path) = file(&(entry("a", r#"["agent"]"#, "t") + &entry("a", r#"["agent"]"#, "u")));
        assert!(
            Authenticator::load(&path)
                .unwrap_err()
                .to_string()
                .contains("also principal 1's")
        );
        let (_dir, path) = file(&(entry("a", r#"["agent"]"#, "t") + &entry("b", r#"["agent"]"#, "t")));
        assert!(
            Authenticator::load(&path)
                .unwrap_err()
                .to_string()
                .contains("same token")
        );
        let missing = Authenticator::load(Path::new("/nonexistent/tokens.toml")).unwrap_err();
        assert!(missing.to_string().contains("cannot read the tokens file"));
    }

    #[test]
    fn health_and_reflection_stay_open() {
        assert!(is_open("/grpc.health.v1.Health/Check"));
        assert!(is_open("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"));
        assert!(!is_open("/itc.v1.AgentService/StartTask"));
        assert!(!is_open("/grpc.healthz/Check"));
    }
}
