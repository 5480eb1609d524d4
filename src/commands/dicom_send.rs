//! `xray dicom-send DIR --to AE@HOST:PORT [--ae-title XRAY]`: C-STORE of the DICOM files under
//! DIR (what `predict --dicom-out` wrote) to a PACS, one line per file.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;

use crate::dicom::scu::{check_ae_title, files_under, store, Node, Sent};

/// Arguments of `xray dicom-send`.
#[derive(Debug, Args)]
pub struct DicomSendArgs {
    /// A DICOM file, or a folder whose `*.dcm` files are sent (walked recursively).
    pub input: PathBuf,
    /// The receiving node, AE@HOST:PORT (for example ORTHANC@pacs.example:4242).
    #[arg(long, value_name = "AE@HOST:PORT")]
    pub to: String,
    /// Our calling AE title.
    #[arg(long, default_value = "XRAY")]
    pub ae_title: String,
    /// Seconds to wait for the peer at each step.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
}

impl DicomSendArgs {
    /// Sends the files; exit code 1 when any was not stored.
    pub fn execute(self) -> Result<()> {
        let to = Node::parse(&self.to, "--to")?;
        check_ae_title(&self.ae_title, "--ae-title")?;
        let files = files_under(&self.input)?;
        if files.is_empty() {
            bail!("{}: no .dcm files to send", self.input.display());
        }
        let sent = store(
            &files,
            &to,
            &self.ae_title,
            Duration::from_secs_f64(self.timeout),
        )?;
        let mut failed = 0;
        for (file, s) in files.iter().zip(&sent) {
            match s {
                Sent::Stored => println!("{}\tstored", file.display()),
                Sent::Refused(status) => {
                    failed += 1;
                    println!("{}\trefused (status 0x{status:04X})", file.display());
                }
                Sent::Later => {
                    failed += 1;
                    println!("{}\tnot sent", file.display());
                }
            }
        }
        if failed > 0 {
            bail!("{failed} of {} file(s) not stored by {to}", files.len());
        }
        eprintln!("{} file(s) stored by {to}", files.len());
        Ok(())
    }
}
