//! HTTP basic authentication, as Kea's Control Agent had it (`authentication.clients`;
//! kea-shell `--auth-user`): `routes[].basic_auth` asks callers for credentials checked
//! against a file of bcrypt hashes, and the user becomes the identity `user:NAME` of the
//! rules, audit and rate limits. `upstreams.<name>.basic_auth` is the other direction: the
//! credentials Gatehouse gives a daemon that requires them.
//!
//! bcrypt is slow on purpose (tens of milliseconds): a pair that checked out is remembered
//! for a few minutes by its SHA-256, so a client sending one command after another pays once,
//! and a wrong password is never remembered.

use base64::Engine;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a checked pair is remembered.
const REMEMBER: Duration = Duration::from_secs(300);
/// Most pairs remembered at once (the oldest half is dropped beyond).
const REMEMBERED_MAX: usize = 4096;

/// A route's users and realm.
pub struct BasicAuth {
    realm: String,
    users: HashMap<String, String>,
    checked: Mutex<HashMap<[u8; 32], (String, Instant)>>,
}

/// Names the realm and how many users, never a hash.
impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("realm", &self.realm)
            .field("users", &self.users.len())
            .finish()
    }
}

impl BasicAuth {
    /// Reads `users_file`: one `name:hash` per line (bcrypt `$2a$`/`$2b$`/`$2y$`), `#`
    /// comments and blank lines skipped. The error names the file and line.
    pub fn load(users_file: &Path, realm: &str) -> Result<BasicAuth, String> {
        let text = std::fs::read_to_string(users_file)
            .map_err(|e| format!("{}: {e}", users_file.display()))?;
        BasicAuth::parse(&text, realm).map_err(|e| format!("{}: {e}", users_file.display()))
    }

    /// [`BasicAuth::load`] on the file's text.
    pub fn parse(text: &str, realm: &str) -> Result<BasicAuth, String> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, hash)) = line.split_once(':') else {
                return Err(format!("line {}: expected `name:bcrypt-hash`", i + 1));
            };
            if name.is_empty() || !["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
                return Err(format!(
                    "line {}: expected `name:bcrypt-hash` (`gatehouse kea hash-password` writes one)",
                    i + 1
                ));
            }
            if users.insert(name.to_string(), hash.to_string()).is_some() {
                return Err(format!("line {}: user `{name}` is listed twice", i + 1));
            }
        }
        if users.is_empty() {
            return Err("no users".into());
        }
        Ok(BasicAuth {
            realm: realm.to_string(),
            users,
            checked: Mutex::new(HashMap::new()),
        })
    }

    /// The `WWW-Authenticate` value of a 401.
    pub fn challenge(&self) -> String {
        format!("Basic realm=\"{}\"", self.realm)
    }

    /// The user whose credentials `authorization` (the header's value) carries, if they
    /// check out. The bcrypt check runs on a blocking thread, off the proxy's workers.
    pub async fn check(&self, authorization: Option<&[u8]>) -> Option<String> {
        let value = authorization?;
        let key = boring::sha::sha256(value);
        let now = Instant::now();
        if let Ok(mut c) = self.checked.lock() {
            match c.get(&key) {
                Some((user, at)) if now.duration_since(*at) < REMEMBER => {
                    return Some(user.clone())
                }
                Some(_) => {
                    c.remove(&key);
                }
                None => {}
            }
        }
        let (user, password) = credentials(value)?;
        let hash = self.users.get(&user)?.clone();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()?
            .unwrap_or(false);
        if !ok {
            return None;
        }
        if let Ok(mut c) = self.checked.lock() {
            if c.len() >= REMEMBERED_MAX {
                let mut ages: Vec<Instant> = c.values().map(|(_, at)| *at).collect();
                ages.sort();
                let cut = ages[ages.len() / 2];
                c.retain(|_, (_, at)| *at > cut);
            }
            c.insert(key, (user.clone(), now));
        }
        Some(user)
    }
}

/// `Basic <base64(user:password)>` → (user, password).
fn credentials(value: &[u8]) -> Option<(String, String)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

pub use crate::upstream::basic_authorization as header_value;

/// A bcrypt hash of `password` for a users file (cost 10).
pub fn hash(password: &str) -> Result<String, String> {
    bcrypt::hash(password, 10).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn good_pairs_pass_and_bad_ones_never_do() {
        let h = bcrypt::hash("s3cret", 4).unwrap();
        let a = BasicAuth::parse(&format!("# users\n\nalice:{h}\n"), "kea").unwrap();
        let good = header_value("alice", "s3cret");
        assert_eq!(
            a.check(Some(good.as_bytes())).await.as_deref(),
            Some("alice")
        );
        assert_eq!(
            a.check(Some(good.as_bytes())).await.as_deref(),
            Some("alice"),
            "remembered"
        );
        for bad in [
            header_value("alice", "wrong"),
            header_value("bob", "s3cret"),
            "Bearer x".to_string(),
            "Basic !!!".to_string(),
            "Basic".to_string(),
        ] {
            assert_eq!(a.check(Some(bad.as_bytes())).await, None, "{bad}");
        }
        assert_eq!(a.check(None).await, None);
        assert_eq!(a.challenge(), "Basic realm=\"kea\"");
    }

    #[test]
    fn users_file_errors_name_the_line() {
        let h = bcrypt::hash("x", 4).unwrap();
        assert!(BasicAuth::parse("alice", "r")
            .unwrap_err()
            .starts_with("line 1"));
        assert!(BasicAuth::parse("alice:plaintext", "r")
            .unwrap_err()
            .contains("bcrypt"));
        assert!(BasicAuth::parse(&format!("a:{h}\na:{h}"), "r")
            .unwrap_err()
            .contains("twice"));
        assert_eq!(
            BasicAuth::parse("# none\n", "r").err().as_deref(),
            Some("no users")
        );
    }
}
