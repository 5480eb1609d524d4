//! DICOMweb STOW-RS as a client: results sent to a PACS that prefers HTTP
//! (`serve --results-stow URL`), one instance per request, `multipart/related;
//! type="application/dicom"` (PS3.18 10.5).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Result};
use base64::Engine;

use super::scu::Sent;
use crate::error::Error;

/// A STOW-RS endpoint: `.../studies`, with the credentials of the URL as Basic auth.
#[derive(Clone)]
pub struct Stow {
    url: String,
    authorization: Option<String>,
}

impl std::fmt::Debug for Stow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stow({})", self.url)
    }
}

impl std::fmt::Display for Stow {
    /// The URL without its credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl Stow {
    /// Parses `http(s)://[user@]host[:port]/path`: the DICOMweb root (`/studies` is appended)
    /// or its `/studies` resource; with `password` (from a file or the environment, never
    /// the command line, where `ps` shows it), `user:password` becomes a Basic authorization
    /// that is never shown. A password in the URL is refused, as is Basic auth over `http://`
    /// to another host unless `insecure_http`.
    pub fn parse(text: &str, password: Option<&str>, insecure_http: bool) -> Result<Stow> {
        let bad = |why: &str| Error::usage(format!("--results-stow: {why}"));
        let (scheme, rest) = text
            .split_once("://")
            .filter(|(s, _)| *s == "http" || *s == "https")
            .ok_or_else(|| bad("expected an http:// or https:// URL"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (user, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if host.is_empty() {
            return Err(bad("no host in the URL").into());
        }
        if user.is_some_and(|u| u.contains(':')) {
            return Err(bad(
                "a password in the URL shows in `ps` and in shell history: give user@host in the URL and the password in --results-stow-password-file FILE or XRAY_STOW_PASSWORD",
            )
            .into());
        }
        let authorization = match (user, password) {
            (Some(user), Some(password)) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )),
            (None, Some(_)) => {
                return Err(bad("a STOW password without a user: write user@host in the URL").into())
            }
            (Some(_), None) => {
                return Err(bad(
                    "user@ in the URL without a password: give it in --results-stow-password-file FILE or XRAY_STOW_PASSWORD",
                )
                .into())
            }
            (None, None) => None,
        };
        if authorization.is_some() && scheme == "http" && !insecure_http && !is_loopback(host) {
            return Err(bad(
                "Basic auth over http:// sends the password in clear text: use https://, or --insecure-http to accept that",
            )
            .into());
        }
        let path = path.trim_end_matches('/');
        let path = if path.ends_with("studies") {
            path.to_string()
        } else if path.is_empty() {
            "studies".to_string()
        } else {
            format!("{path}/studies")
        };
        Ok(Stow {
            url: format!("{scheme}://{host}/{path}"),
            authorization,
        })
    }

    /// Sends `files`, one request each, until the server cannot be reached or fails (5xx):
    /// those and the rest are [`Sent::Later`]. Fails as a whole when not even the first
    /// request got an answer.
    pub fn store(&self, files: &[PathBuf], timeout: Duration) -> Result<Vec<Sent>> {
        let agent = ureq::AgentBuilder::new()
            .timeout(timeout)
            .redirects(0)
            .build();
        let boundary = format!("xray-{:016x}", rand::random::<u64>());
        let mut out = Vec::with_capacity(files.len());
        for path in files {
            if out.last() == Some(&Sent::Later) {
                out.push(Sent::Later);
                continue;
            }
            let bytes = std::fs::read(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            let mut body = Vec::with_capacity(bytes.len() + 256);
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes(),
            );
            body.extend_from_slice(&bytes);
            body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
            let mut request = agent
                .post(&self.url)
                .set(
                    "Content-Type",
                    &format!("multipart/related; type=\"application/dicom\"; boundary={boundary}"),
                )
                .set("Accept", "application/dicom+json");
            if let Some(auth) = &self.authorization {
                request = request.set("Authorization", auth);
            }
            match request.send_bytes(&body) {
                // Stored only when the server says so of this instance (PS3.18 10.5.3): 200
                // with the instance in its Referenced SOP Sequence and no Failed SOP Sequence.
                // A redirect (not followed: the POST would become a GET), 202 (some or all
                // failed, or warnings) or a 200 that does not list it is not a delivery.
                Ok(r) => {
                    let status = r.status();
                    let text = r.into_string().unwrap_or_default();
                    let instance = instance_uid(&bytes);
                    out.push(
                        if status == 200 && lists_stored(&text, instance.as_deref()) {
                            Sent::Stored
                        } else {
                            Sent::Refused(status)
                        },
                    );
                }
                Err(ureq::Error::Status(code, _)) if code >= 500 => out.push(Sent::Later),
                Err(ureq::Error::Status(code, _)) => out.push(Sent::Refused(code)),
                Err(e) if out.is_empty() => return Err(anyhow!("cannot reach {self}: {e}")),
                Err(_) => out.push(Sent::Later),
            }
        }
        Ok(out)
    }
}

/// Whether `host` (`name[:port]`, `[v6]:port`) is this machine's loopback.
fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The SOP Instance UID of a Part 10 file held in memory.
fn instance_uid(bytes: &[u8]) -> Option<String> {
    use dicom_dictionary_std::tags;
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .from_reader(bytes)
        .ok()?;
    super::text(&obj, tags::SOP_INSTANCE_UID)
}

/// Whether a STOW-RS response (DICOM JSON, PS3.18 F.2) lists `instance` in its Referenced
/// SOP Sequence (0008,1199) and has no Failed SOP Sequence (0008,1198).
fn lists_stored(response: &str, instance: Option<&str>) -> bool {
    let Some(instance) = instance else {
        return false;
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(response) else {
        return false;
    };
    let failed = json["00081198"]["Value"]
        .as_array()
        .is_some_and(|items| !items.is_empty());
    let stored = json["00081199"]["Value"].as_array().is_some_and(|items| {
        items
            .iter()
            .any(|item| item["00081155"]["Value"][0].as_str() == Some(instance))
    });
    stored && !failed
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_response_counts_as_stored_only_when_it_lists_the_instance() {
        let ok = r#"{"00081199":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["1.2.3"]}}]}}"#;
        assert!(super::lists_stored(ok, Some("1.2.3")));
        assert!(!super::lists_stored(ok, Some("1.2.4")));
        assert!(!super::lists_stored(ok, None));
        let failed = r#"{"00081199":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["1.2.3"]}}]},"00081198":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["1.2.3"]}}]}}"#;
        assert!(!super::lists_stored(failed, Some("1.2.3")));
        assert!(!super::lists_stored("<html>moved</html>", Some("1.2.3")));
        assert!(!super::lists_stored("{}", Some("1.2.3")));
    }

    use super::*;

    #[test]
    fn urls_are_parsed_and_credentials_hidden() {
        let s = Stow::parse("https://alice@pacs:8042/dicom-web/", Some("secret"), false).unwrap();
        assert_eq!(s.to_string(), "https://pacs:8042/dicom-web/studies");
        assert!(!format!("{s} {s:?}").contains("secret"));
        assert_eq!(s.authorization.as_deref(), Some("Basic YWxpY2U6c2VjcmV0"));
        let s = Stow::parse("https://pacs/wado/studies", None, false).unwrap();
        assert_eq!(s.to_string(), "https://pacs/wado/studies");
        assert!(s.authorization.is_none());
        assert_eq!(
            Stow::parse("http://pacs", None, false).unwrap().to_string(),
            "http://pacs/studies"
        );
        // Basic auth in clear text: only to the loopback, or when asked for.
        assert!(Stow::parse("http://alice@127.0.0.1:8042/x", Some("pw"), false).is_ok());
        assert!(Stow::parse("http://alice@[::1]:8042/x", Some("pw"), false).is_ok());
        assert!(Stow::parse("http://alice@pacs:8042/x", Some("pw"), true).is_ok());
        for (bad, password) in [
            ("pacs:8042", None),
            ("ftp://pacs/x", None),
            ("http:///x", None),
            ("https://alice:secret@pacs/x", None),
            ("https://alice@pacs/x", None),
            ("https://pacs/x", Some("pw")),
            ("http://alice@pacs:8042/x", Some("pw")),
        ] {
            let e = Stow::parse(bad, password, false).unwrap_err();
            assert!(e.to_string().contains("--results-stow"), "{bad}: {e}");
            assert!(!e.to_string().contains("secret"), "{bad}: {e}");
        }
    }
}
