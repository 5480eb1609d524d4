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
    /// Parses `http(s)://[user:password@]host[:port]/path`: the DICOMweb root (`/studies` is
    /// appended) or its `/studies` resource. Credentials become a Basic authorization and are
    /// never shown.
    pub fn parse(text: &str) -> Result<Stow> {
        let bad = |why: &str| Error::usage(format!("--results-stow: {why}"));
        let (scheme, rest) = text
            .split_once("://")
            .filter(|(s, _)| *s == "http" || *s == "https")
            .ok_or_else(|| bad("expected an http:// or https:// URL"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (credentials, host) = match authority.rsplit_once('@') {
            Some((c, h)) => (Some(c), h),
            None => (None, authority),
        };
        if host.is_empty() {
            return Err(bad("no host in the URL").into());
        }
        let path = path.trim_end_matches('/');
        let path = if path.ends_with("studies") {
            path.to_string()
        } else if path.is_empty() {
            "studies".to_string()
        } else {
            format!("{path}/studies")
        };
        let authorization = credentials.map(|c| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(c.as_bytes())
            )
        });
        Ok(Stow {
            url: format!("{scheme}://{host}/{path}"),
            authorization,
        })
    }

    /// Sends `files`, one request each, until the server cannot be reached or fails (5xx):
    /// those and the rest are [`Sent::Later`]. Fails as a whole when not even the first
    /// request got an answer.
    pub fn store(&self, files: &[PathBuf], timeout: Duration) -> Result<Vec<Sent>> {
        let agent = ureq::AgentBuilder::new().timeout(timeout).build();
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
                Ok(r) if r.status() == 200 => out.push(Sent::Stored),
                // 202: stored with warnings, or some instances failed (here, the one).
                Ok(r) => {
                    let status = r.status();
                    let text = r.into_string().unwrap_or_default();
                    out.push(if text.contains("00081198") {
                        Sent::Refused(status)
                    } else {
                        Sent::Stored
                    });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_and_credentials_hidden() {
        let s = Stow::parse("http://alice:secret@pacs:8042/dicom-web/").unwrap();
        assert_eq!(s.to_string(), "http://pacs:8042/dicom-web/studies");
        assert!(!format!("{s} {s:?}").contains("secret"));
        assert_eq!(s.authorization.as_deref(), Some("Basic YWxpY2U6c2VjcmV0"));
        let s = Stow::parse("https://pacs/wado/studies").unwrap();
        assert_eq!(s.to_string(), "https://pacs/wado/studies");
        assert!(s.authorization.is_none());
        assert_eq!(
            Stow::parse("http://pacs").unwrap().to_string(),
            "http://pacs/studies"
        );
        for bad in ["pacs:8042", "ftp://pacs/x", "http:///x"] {
            let e = Stow::parse(bad).unwrap_err();
            assert!(e.to_string().contains("--results-stow"), "{bad}: {e}");
        }
    }
}
