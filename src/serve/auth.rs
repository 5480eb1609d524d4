//! Bearer tokens of `serve --token-file`.
//!
//! The file holds one token per line, optionally followed by an expiry (`2027-01-31`, valid
//! through that day in UTC, or an RFC 3339 time); blank lines and lines starting with `#` are
//! skipped. Tokens are kept only as sha256 digests and compared in constant time, so neither the
//! bytes of a guess nor its length shape the answer's timing. The file is read again when it
//! changes, so a token is revoked by deleting its line, without a restart; a file that can no
//! longer be read or parsed refuses every token (fail closed) until it is mended.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use chrono::{DateTime, NaiveDate, Utc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::Error;

/// Shortest accepted token: 16 characters (about 96 bits when random base64).
pub const MIN_TOKEN_CHARS: usize = 16;

/// One accepted token.
#[derive(Debug, Clone)]
struct Token {
    digest: [u8; 32],
    /// The first 12 hex digits of the digest: names the client in logs without revealing it.
    id: String,
    expires: Option<DateTime<Utc>>,
}

/// What a presented token turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A listed token, not expired; its id.
    Valid(String),
    /// A listed token past its expiry; its id.
    Expired(String),
    /// Not a listed token (or no token at all).
    Unknown,
}

/// The token file and its tokens as last read.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    /// The file's modification time, mode and owner when last read.
    modified: Option<Stamp>,
    /// `None` after a failed reload: every token is refused.
    tokens: Option<Vec<Token>>,
}

impl TokenFile {
    /// Reads `path`; a missing, empty or malformed file is a usage error (exit 2) naming the
    /// line, never the token.
    pub fn load(path: &Path) -> Result<TokenFile, Error> {
        let tokens = read_tokens(path)?;
        super::tls::check_private(path, "--token-file")?;
        Ok(TokenFile {
            path: path.to_path_buf(),
            loaded: Mutex::new(Loaded {
                modified: modified(path),
                tokens: Some(tokens),
            }),
        })
    }

    /// How many tokens the file lists now.
    pub fn len(&self) -> usize {
        self.loaded
            .lock()
            .map(|l| l.tokens.as_ref().map_or(0, Vec::len))
            .unwrap_or(0)
    }

    /// Whether the file lists no token (never true after a successful [`TokenFile::load`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Judges a presented token against the file as it is now.
    pub fn check(&self, presented: &str) -> Verdict {
        let Ok(mut loaded) = self.loaded.lock() else {
            return Verdict::Unknown;
        };
        let now_modified = modified(&self.path);
        if now_modified != loaded.modified {
            loaded.modified = now_modified;
            // A chmod changes no content but may open the file to others: its permissions
            // are judged again, as at start, before its tokens count.
            let read = super::tls::check_private(&self.path, "--token-file")
                .and_then(|()| read_tokens(&self.path));
            loaded.tokens = match read {
                Ok(t) => {
                    tracing::warn!(
                        "serve: {} read again: {} tokens",
                        self.path.display(),
                        t.len()
                    );
                    Some(t)
                }
                Err(e) => {
                    tracing::error!("serve: {e}; every token is refused until the file is mended");
                    None
                }
            };
        }
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every listed token is compared, whatever matched before it.
        let mut hit: Option<&Token> = None;
        for token in loaded.tokens.iter().flatten() {
            if bool::from(token.digest.ct_eq(&digest)) {
                hit = Some(token);
            }
        }
        match hit {
            None => Verdict::Unknown,
            Some(t) if t.expires.is_some_and(|e| e <= Utc::now()) => Verdict::Expired(t.id.clone()),
            Some(t) => Verdict::Valid(t.id.clone()),
        }
    }
}

/// What tells that the token file changed: its modification time, mode and owner.
type Stamp = (SystemTime, u32, u32);

fn modified(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.mode(), meta.uid()))
}

fn read_tokens(path: &Path) -> Result<Vec<Token>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::usage(format!(
            "--token-file {}: cannot read it: {e}",
            path.display()
        ))
    })?;
    let tokens = parse_tokens(&text).map_err(|(line, why)| {
        Error::usage(format!(
            "--token-file {} line {line}: {why}",
            path.display()
        ))
    })?;
    if tokens.is_empty() {
        return Err(Error::usage(format!(
            "--token-file {}: no token in it (one token per line, optionally followed by an expiry date)",
            path.display()
        )));
    }
    Ok(tokens)
}

/// Parses the file's text; an error is the line number and the reason (never the token).
fn parse_tokens(text: &str) -> Result<Vec<Token>, (usize, String)> {
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let secret = words.next().unwrap_or_default();
        if secret.chars().count() < MIN_TOKEN_CHARS {
            return Err((
                i + 1,
                format!("the token is shorter than {MIN_TOKEN_CHARS} characters"),
            ));
        }
        let expires = match words.next() {
            None => None,
            Some(when) => Some(parse_expiry(when).ok_or_else(|| {
                (
                    i + 1,
                    format!("{when:?} is not an expiry (YYYY-MM-DD or an RFC 3339 time)"),
                )
            })?),
        };
        if let Some(extra) = words.next() {
            return Err((i + 1, format!("unexpected {extra:?} after the expiry")));
        }
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let id = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        tokens.push(Token {
            digest,
            id,
            expires,
        });
    }
    Ok(tokens)
}

/// `YYYY-MM-DD` (valid through that day, UTC) or an RFC 3339 time.
fn parse_expiry(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return day.succ_opt()?.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    }
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> (tempfile::NamedTempFile, TokenFile) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        let t = TokenFile::load(f.path()).unwrap();
        (f, t)
    }

    #[test]
    fn valid_expired_and_unknown_tokens() {
        let (_f, tokens) = file(
            "# clinic tokens\n\nalpha-0123456789abcdef\nbeta-0123456789abcdef 2001-01-01\n\
             gamma-0123456789abcdef 2999-12-31T00:00:00Z\n",
        );
        assert_eq!(tokens.len(), 3);
        assert!(matches!(
            tokens.check("alpha-0123456789abcdef"),
            Verdict::Valid(_)
        ));
        assert!(matches!(
            tokens.check("beta-0123456789abcdef"),
            Verdict::Expired(_)
        ));
        assert!(matches!(
            tokens.check("gamma-0123456789abcdef"),
            Verdict::Valid(_)
        ));
        assert_eq!(tokens.check("alpha-0123456789abcde"), Verdict::Unknown);
        assert_eq!(tokens.check(""), Verdict::Unknown);
        let Verdict::Valid(id) = tokens.check("alpha-0123456789abcdef") else {
            unreachable!()
        };
        assert_eq!(id.len(), 12);
        assert!(!id.contains("alpha"));
    }

    #[test]
    fn a_day_expiry_lasts_through_that_day() {
        let end = parse_expiry("2027-01-31").unwrap();
        assert_eq!(end.to_rfc3339(), "2027-02-01T00:00:00+00:00");
        assert!(parse_expiry("31/01/2027").is_none());
    }

    #[test]
    fn bad_files_name_the_line_not_the_token() {
        for (text, want) in [
            ("short\n", "line 1: the token is shorter than 16"),
            ("# only a comment\n", "no token in it"),
            (
                "alpha-0123456789abcdef tomorrow\n",
                "line 1: \"tomorrow\" is not an expiry",
            ),
            (
                "\nalpha-0123456789abcdef 2027-01-01 x\n",
                "line 2: unexpected \"x\"",
            ),
        ] {
            let f = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(f.path(), text).unwrap();
            let err = TokenFile::load(f.path()).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains("alpha"), "{err}");
            assert!(matches!(TokenFile::load(f.path()), Err(Error::Usage(_))));
        }
    }

    #[test]
    fn the_file_is_read_again_when_it_changes() {
        let (f, tokens) = file("alpha-0123456789abcdef\n");
        assert!(matches!(
            tokens.check("alpha-0123456789abcdef"),
            Verdict::Valid(_)
        ));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(f.path(), "delta-0123456789abcdef\n").unwrap();
        // Some file systems keep mtime in seconds: make the change visible for certain.
        let later = SystemTime::now() + std::time::Duration::from_secs(2);
        std::fs::File::options()
            .write(true)
            .open(f.path())
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(tokens.check("alpha-0123456789abcdef"), Verdict::Unknown);
        assert!(matches!(
            tokens.check("delta-0123456789abcdef"),
            Verdict::Valid(_)
        ));
        // Broken: every token refused.
        std::fs::write(f.path(), "short\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(f.path())
            .unwrap()
            .set_modified(later + std::time::Duration::from_secs(2))
            .unwrap();
        assert_eq!(tokens.check("delta-0123456789abcdef"), Verdict::Unknown);
    }

    #[test]
    fn a_token_file_opened_to_others_refuses_every_token_until_it_is_private_again() {
        use std::os::unix::fs::PermissionsExt;
        let (f, tokens) = file("alpha-0123456789abcdef\n");
        let mode = |m| std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(m));
        assert!(matches!(
            tokens.check("alpha-0123456789abcdef"),
            Verdict::Valid(_)
        ));
        mode(0o644).unwrap();
        assert_eq!(tokens.check("alpha-0123456789abcdef"), Verdict::Unknown);
        mode(0o600).unwrap();
        assert!(matches!(
            tokens.check("alpha-0123456789abcdef"),
            Verdict::Valid(_)
        ));
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }
}
