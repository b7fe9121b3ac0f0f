//! Who may see the dashboard, the API, the event stream and `/metrics`: the `[auth]` section of
//! the configuration file, its flags and environment variables, and the two commands that make
//! its secrets (`ledtemp-web hash-password`, `ledtemp-web new-token`).
//!
//! ```toml
//! [auth]
//! password_hash_file = "/etc/ledtemp/password.hash"   # or password_hash = "$argon2id$v=19$..."
//! token_hashes = ["<SHA-256 hex of an API token>"]    # for scripts and scrapers (Bearer)
//! # cookie_secure = true      # false only for plain HTTP off loopback (put it behind TLS instead)
//! # session_idle_secs = 3600  # session_max_secs = 604800, max_sessions = 64
//! ```
//!
//! Nothing configured and HTTP on loopback: the dashboard is open (as `ledtemp-web demo` runs
//! it). Nothing configured and HTTP on any other address: the server refuses to start, unless
//! `--insecure-no-auth` says so explicitly. Anything configured: login required everywhere but
//! `/healthz`, the login page and the static assets.

use std::fmt;
use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use argon2::password_hash::PasswordHasher;
use argon2::{Argon2, PasswordHash};
use clap::Args;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::session::{random_secret, sha256};
use crate::Error;

/// The shortest password `ledtemp-web hash-password` accepts.
pub const MIN_PASSWORD_LEN: usize = 10;

const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(3600);
const DEFAULT_SESSION_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
const DEFAULT_MAX_SESSIONS: usize = 64;

/// The authentication options of `ledtemp-web serve` (each also an `[auth]` key of the file).
#[derive(Debug, Clone, Default, Args)]
pub struct AuthArgs {
    /// File holding the Argon2id hash of the dashboard password (from `ledtemp-web
    /// hash-password`). Setting a password turns the login on, also on loopback.
    #[arg(long, env = "LEDTEMP_PASSWORD_HASH_FILE", value_name = "FILE")]
    pub password_hash_file: Option<PathBuf>,
    /// The Argon2id hash itself (`$argon2id$v=19$...`), instead of a file.
    #[arg(long, env = "LEDTEMP_PASSWORD_HASH", value_name = "PHC", hide_env_values = true)]
    pub password_hash: Option<String>,
    /// SHA-256 (hex) of an API token that scripts and scrapers send as `Authorization: Bearer
    /// TOKEN` (from `ledtemp-web new-token`); repeat the flag, or separate with commas.
    #[arg(
        long = "api-token-hash",
        env = "LEDTEMP_API_TOKEN_HASHES",
        value_name = "SHA256_HEX",
        value_delimiter = ','
    )]
    pub api_token_hashes: Vec<String>,
    /// Serve the dashboard and API without any login on an address other than loopback. Anyone
    /// who can reach the port sees everything: for a closed lab network only.
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Mark the session cookie `Secure` (sent over HTTPS only) [default: true]. Browsers accept
    /// it over plain HTTP on loopback only: off loopback, serve through a TLS proxy, or set false.
    #[arg(long, env = "LEDTEMP_COOKIE_SECURE", value_name = "BOOL")]
    pub cookie_secure: Option<bool>,
}

/// The `[auth]` section of the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthSection {
    password_hash: Option<String>,
    password_hash_file: Option<PathBuf>,
    #[serde(default)]
    token_hashes: Vec<String>,
    cookie_secure: Option<bool>,
    session_idle_secs: Option<u64>,
    session_max_secs: Option<u64>,
    max_sessions: Option<usize>,
}

/// The resolved authentication settings. `Debug` shows no hash.
#[derive(Clone)]
pub struct AuthConfig {
    /// The dashboard password's Argon2id hash in PHC form; `None`: no password login.
    pub password_hash: Option<String>,
    /// SHA-256 of each accepted API token.
    pub token_hashes: Vec<[u8; 32]>,
    /// Serve without login even off loopback (`--insecure-no-auth`).
    pub insecure_no_auth: bool,
    /// Mark cookies `Secure` (and name them with the `__Host-` prefix).
    pub cookie_secure: bool,
    /// A session unused this long ends.
    pub session_idle: Duration,
    /// A session ends this long after its login.
    pub session_max: Duration,
    /// Most sessions at once; another login ends the least recently used.
    pub max_sessions: usize,
}

impl Default for AuthConfig {
    /// No password, no tokens: open on loopback, refused elsewhere.
    fn default() -> Self {
        AuthConfig {
            password_hash: None,
            token_hashes: Vec::new(),
            insecure_no_auth: false,
            cookie_secure: true,
            session_idle: DEFAULT_SESSION_IDLE,
            session_max: DEFAULT_SESSION_MAX,
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("password_hash", &self.password_hash.as_ref().map(|_| "<set>"))
            .field("token_hashes", &self.token_hashes.len())
            .field("insecure_no_auth", &self.insecure_no_auth)
            .field("cookie_secure", &self.cookie_secure)
            .field("session_idle", &self.session_idle)
            .field("session_max", &self.session_max)
            .field("max_sessions", &self.max_sessions)
            .finish()
    }
}

/// Checks that `text` is an Argon2id PHC string.
fn parse_password_hash(text: &str, from: &str) -> Result<String, Error> {
    let text = text.trim();
    let hash = PasswordHash::new(text).map_err(|e| {
        Error::Config(format!(
            "{from}: not a PHC password hash ({e}); make one with `ledtemp-web hash-password`"
        ))
    })?;
    if hash.algorithm.as_str() != argon2::ARGON2ID_IDENT.as_str() {
        return Err(Error::Config(format!(
            "{from}: the hash is {}, expected argon2id; make one with `ledtemp-web hash-password`",
            hash.algorithm
        )));
    }
    Ok(text.to_owned())
}

fn parse_token_hash(text: &str) -> Result<[u8; 32], Error> {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut hash).map_err(|_| {
        Error::Config(format!(
            "API token hash {text:?}: expected 64 hex digits (the SHA-256 that `ledtemp-web \
             new-token` prints)"
        ))
    })?;
    Ok(hash)
}

fn secs(name: &str, value: Option<u64>, default: Duration) -> Result<Duration, Error> {
    match value {
        None => Ok(default),
        Some(0) => Err(Error::Config(format!("auth.{name} must be at least 1"))),
        Some(secs) => Ok(Duration::from_secs(secs)),
    }
}

impl AuthArgs {
    /// Merges flags and environment (in `self`) with the file's `[auth]` section and defaults.
    pub(crate) fn resolve(self, file: AuthSection) -> Result<AuthConfig, Error> {
        let inline = self.password_hash.or(file.password_hash);
        let path = self.password_hash_file.or(file.password_hash_file);
        let password_hash = match (inline, path) {
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "password_hash and password_hash_file are both set: give one".into(),
                ));
            }
            (Some(text), None) => Some(parse_password_hash(&text, "password_hash")?),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    Error::io(format!("reading password_hash_file {}", path.display()), e)
                })?;
                Some(parse_password_hash(&text, &path.display().to_string())?)
            }
            (None, None) => None,
        };
        let tokens = if self.api_token_hashes.is_empty() {
            file.token_hashes
        } else {
            self.api_token_hashes
        };
        let token_hashes = tokens
            .iter()
            .filter(|t| !t.trim().is_empty())
            .map(|t| parse_token_hash(t))
            .collect::<Result<_, _>>()?;
        let max_sessions = file.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS);
        if max_sessions == 0 {
            return Err(Error::Config("auth.max_sessions must be at least 1".into()));
        }
        Ok(AuthConfig {
            password_hash,
            token_hashes,
            insecure_no_auth: self.insecure_no_auth,
            cookie_secure: self.cookie_secure.or(file.cookie_secure).unwrap_or(true),
            session_idle: secs("session_idle_secs", file.session_idle_secs, DEFAULT_SESSION_IDLE)?,
            session_max: secs("session_max_secs", file.session_max_secs, DEFAULT_SESSION_MAX)?,
            max_sessions,
        })
    }
}

impl AuthConfig {
    /// Whether a password or an API token is configured, which makes login required.
    pub fn is_configured(&self) -> bool {
        self.password_hash.is_some() || !self.token_hashes.is_empty()
    }

    /// Refuses to serve without login on an address other than loopback, unless
    /// `--insecure-no-auth` was given (then warns loudly).
    pub fn check_listen(&self, listen: SocketAddr) -> Result<(), Error> {
        if self.is_configured() {
            if !self.cookie_secure && !listen.ip().is_loopback() {
                tracing::warn!(
                    %listen,
                    "cookie_secure = false: session cookies travel in clear text; serve the \
                     dashboard through a TLS proxy instead"
                );
            }
            return Ok(());
        }
        if listen.ip().is_loopback() {
            return Ok(());
        }
        if self.insecure_no_auth {
            let warning = format!(
                "WARNING: --insecure-no-auth: the dashboard, API, event stream and metrics on \
                 {listen} are open to anyone who can reach it"
            );
            eprintln!("ledtemp-web: {warning}");
            tracing::warn!("{warning}");
            return Ok(());
        }
        Err(Error::Config(format!(
            "HTTP listens on {listen}, which is not loopback, and no login is configured: set \
             [auth] password_hash_file (or --password-hash-file, LEDTEMP_PASSWORD_HASH_FILE) to \
             a hash from `ledtemp-web hash-password`, and/or [auth] token_hashes (or \
             --api-token-hash) from `ledtemp-web new-token`; or pass --insecure-no-auth to \
             serve without login"
        )))
    }
}

/// The Argon2id hash (PHC string, default parameters: 19 MiB, 2 passes) of `password`, with a
/// fresh random salt.
pub fn hash_password(password: &str) -> Result<String, Error> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| Error::Config(format!("hashing the password: {e}")))
}

/// A new random API token (`ltk_` and 64 hex digits) and the SHA-256 hex to configure.
pub fn new_api_token() -> Result<(String, String), Error> {
    let secret =
        random_secret().ok_or_else(|| Error::Config("the system's random source failed".into()))?;
    let token = format!("ltk_{secret}");
    let hash = hex::encode(sha256(&token));
    Ok((token, hash))
}

/// Runs `stty` on the terminal (to turn echo off and on again); a failure only means the
/// password is echoed.
fn stty(setting: &str) {
    let _ = std::process::Command::new("stty")
        .arg(setting)
        .stdin(std::process::Stdio::inherit())
        .status();
}

fn read_line(stdin: &mut impl BufRead) -> Result<Zeroizing<String>, Error> {
    let mut line = Zeroizing::new(String::new());
    stdin.read_line(&mut line).map_err(|e| Error::io("reading the password", e))?;
    let end = line.trim_end_matches(['\n', '\r']).len();
    line.truncate(end);
    Ok(line)
}

/// `ledtemp-web hash-password`: reads a password from standard input (without echo, and twice,
/// on a terminal) and prints its Argon2id hash for `[auth] password_hash`.
pub fn hash_password_command() -> Result<(), Error> {
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let mut stdin = stdin.lock();
    let password = if interactive {
        eprint!("Password: ");
        let _ = std::io::stderr().flush();
        stty("-echo");
        let first = read_line(&mut stdin);
        eprint!("\nAgain: ");
        let _ = std::io::stderr().flush();
        let second = read_line(&mut stdin);
        stty("echo");
        eprintln!();
        let (first, second) = (first?, second?);
        if *first != *second {
            return Err(Error::Config("the two passwords differ".into()));
        }
        first
    } else {
        read_line(&mut stdin)?
    };
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(Error::Config(format!(
            "the password is too short: use at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    println!("{}", hash_password(&password)?);
    Ok(())
}

/// `ledtemp-web new-token`: prints a new API token (give it to the script or scraper) and its
/// SHA-256 (put it in `[auth] token_hashes`).
pub fn new_token_command() -> Result<(), Error> {
    let (token, hash) = new_api_token()?;
    println!("token: {token}");
    println!("hash:  {hash}");
    eprintln!(
        "ledtemp-web: give the token to the client (Authorization: Bearer TOKEN) and add the \
         hash to [auth] token_hashes; the token is not stored anywhere"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap_hash(password: &str) -> String {
        let params = argon2::Params::new(64, 1, 1, None).unwrap();
        let argon = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        argon.hash_password(password.as_bytes()).unwrap().to_string()
    }

    #[test]
    fn off_loopback_without_auth_is_refused_unless_explicitly_insecure() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let error = AuthConfig::default().check_listen(any).unwrap_err().to_string();
        for what in ["password_hash_file", "hash-password", "token_hashes", "--insecure-no-auth"] {
            assert!(error.contains(what), "{error}");
        }
        assert!(AuthConfig::default().check_listen("127.0.0.1:8080".parse().unwrap()).is_ok());
        assert!(AuthConfig::default().check_listen("[::1]:8080".parse().unwrap()).is_ok());
        let insecure = AuthConfig { insecure_no_auth: true, ..AuthConfig::default() };
        assert!(insecure.check_listen(any).is_ok());
        let tokens = AuthConfig { token_hashes: vec![[0; 32]], ..AuthConfig::default() };
        assert!(tokens.check_listen(any).is_ok());
    }

    #[test]
    fn hashes_from_flags_or_the_file_are_checked() {
        let hash = cheap_hash("correct horse");
        let args = AuthArgs { password_hash: Some(hash.clone()), ..AuthArgs::default() };
        let config = args.resolve(AuthSection::default()).unwrap();
        assert_eq!(config.password_hash.as_deref(), Some(hash.as_str()));
        assert!(config.is_configured() && config.cookie_secure);
        assert!(!format!("{config:?}").contains("argon2"), "Debug shows no hash");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password.hash");
        std::fs::write(&file, format!("{hash}\n")).unwrap();
        let section: AuthSection = toml::from_str(&format!(
            "password_hash_file = {file:?}\ntoken_hashes = [\"{}\"]\ncookie_secure = false\n",
            "ab".repeat(32)
        ))
        .unwrap();
        let config = AuthArgs::default().resolve(section).unwrap();
        assert_eq!(config.password_hash.as_deref(), Some(hash.as_str()));
        assert_eq!(config.token_hashes, vec![[0xab; 32]]);
        assert!(!config.cookie_secure);

        let argon2i = Argon2::new(
            argon2::Algorithm::Argon2i,
            argon2::Version::V0x13,
            argon2::Params::new(64, 1, 1, None).unwrap(),
        )
        .hash_password(b"correct horse")
        .unwrap()
        .to_string();
        for bad in [
            AuthArgs { password_hash: Some("hunter2".into()), ..AuthArgs::default() },
            AuthArgs { password_hash: Some(argon2i), ..AuthArgs::default() },
            AuthArgs { api_token_hashes: vec!["abc".into()], ..AuthArgs::default() },
            AuthArgs {
                password_hash: Some(hash.clone()),
                password_hash_file: Some(file.clone()),
                ..AuthArgs::default()
            },
        ] {
            assert!(matches!(bad.resolve(AuthSection::default()), Err(Error::Config(_))));
        }
        assert!(toml::from_str::<AuthSection>("password = \"x\"").is_err(), "unknown key");
    }

    #[test]
    fn new_tokens_are_random_and_their_hash_is_the_sha256() {
        let (token, hash) = new_api_token().unwrap();
        let (other, _) = new_api_token().unwrap();
        assert_ne!(token, other);
        assert!(token.starts_with("ltk_") && token.len() == 68);
        assert_eq!(parse_token_hash(&hash).unwrap(), sha256(&token));
    }

    #[test]
    fn hash_password_makes_a_default_argon2id_hash() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert!(parse_password_hash(&hash, "test").is_ok());
    }
}
