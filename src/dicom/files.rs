//! `xray predict --dicom-out DIR [--heatmap]`: the result objects of DICOM files written to a
//! folder, for batch work and for `xray dicom-send`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::uid::UidRoot;
use super::{encode, results, Producer, Source};
use crate::data::decode::{decode_image, is_dicom_file, to_model_pixels};
use crate::explain::overlay::preview;
use crate::explain::{answer_pixels, explainer};
use crate::infer::Predictor;

/// What was written for one input.
#[derive(Debug, Clone)]
pub struct Written {
    /// The DICOM input.
    pub input: PathBuf,
    /// The report file.
    pub report: PathBuf,
    /// The overlay file, when one was made.
    pub capture: Option<PathBuf>,
}

/// Writes, for each DICOM file of `inputs` (others are skipped), `DIR/STEM.sr.dcm` and with
/// `heatmap` `DIR/STEM.sc.dcm`. An input that cannot be read is an error naming it.
pub fn write_results(
    predictor: &Predictor,
    inputs: &[PathBuf],
    dir: &Path,
    heatmap: bool,
    uids: &UidRoot,
) -> Result<Vec<Written>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let producer = Producer::of(predictor)?;
    let device_uid = Producer::device_uid("XRAY");
    let explainer = explainer(predictor, 1);
    let spec = predictor.input_spec();
    let mut out = Vec::new();
    for input in inputs.iter().filter(|p| is_dicom_file(p)) {
        let source = Source::read(input)?;
        let image = decode_image(input)?;
        let pixels = to_model_pixels(image.clone(), spec.size, spec.channels);
        let picture = heatmap.then(|| preview(&image));
        let answered = answer_pixels(predictor, &explainer, &[&pixels], &[picture.as_ref()])?;
        let a = &answered[0];
        let set = results(
            &source,
            &a.prediction,
            &predictor.card,
            a.overlay.as_ref(),
            &producer,
            uids,
            &device_uid,
        )?;
        let stem = input
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let report = dir.join(format!("{stem}.sr.dcm"));
        crate::fsutil::write_private(&report, &encode(set.report)?)?;
        let capture = match set.capture {
            Some(obj) => {
                let path = dir.join(format!("{stem}.sc.dcm"));
                crate::fsutil::write_private(&path, &encode(obj)?)?;
                Some(path)
            }
            None => None,
        };
        out.push(Written {
            input: input.clone(),
            report,
            capture,
        });
    }
    Ok(out)
}
