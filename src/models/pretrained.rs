//! Loading pretrained weights (safetensors, torchvision names) into a model, everything but the
//! classifier, with a report of what was loaded and what was left.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use tch::{nn::VarStore, Tensor};

use crate::error::{Error, TorchResultExt};

/// What [`load_pretrained`] did with each tensor.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Model variables set from the file.
    pub loaded: Vec<String>,
    /// First-layer weights adapted to a grey input by summing over the colour channels.
    pub adapted: Vec<String>,
    /// File tensors not used, with the reason (the classifier, a shape mismatch, unknown name).
    pub skipped: Vec<(String, String)>,
    /// Model variables the file did not provide (left at their fresh initialisation).
    pub missing: Vec<String>,
}

impl LoadReport {
    /// One line for the user.
    pub fn summary(&self) -> String {
        format!(
            "loaded {} tensors{}, skipped {} ({}), {} left initialised ({})",
            self.loaded.len() + self.adapted.len(),
            if self.adapted.is_empty() {
                String::new()
            } else {
                format!(" ({} adapted to grey input)", self.adapted.len())
            },
            self.skipped.len(),
            short_list(self.skipped.iter().map(|s| s.0.as_str())),
            self.missing.len(),
            short_list(self.missing.iter().map(String::as_str)),
        )
    }
}

fn short_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    match names.len() {
        0 => "none".into(),
        n if n <= 3 => names.join(", "),
        n => format!("{}, ... {} more", names[..2].join(", "), n - 2),
    }
}

/// Copies every tensor of `path` whose name and shape match a variable of `vs`, except those
/// under `head_prefix` (the classifier is re-made for the task's classes).
pub fn load_pretrained(vs: &mut VarStore, path: &Path, head_prefix: &str) -> Result<LoadReport> {
    if !path.is_file() {
        return Err(Error::usage(format!(
            "model.pretrained: {} does not exist",
            path.display()
        ))
        .into());
    }
    let tensors = Tensor::read_safetensors(path)
        .torch()
        .with_context(|| format!("cannot read pretrained weights {}", path.display()))?;
    let file: HashMap<String, Tensor> = tensors.into_iter().collect();
    let vars = vs.variables();
    let mut report = LoadReport::default();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    tch::no_grad(|| -> Result<()> {
        for name in names {
            let mut var = vars[name].shallow_clone();
            let Some(src) = file.get(name) else {
                report.missing.push(name.clone());
                continue;
            };
            if name.starts_with(head_prefix) {
                continue;
            }
            let (want, have) = (var.size(), src.size());
            if want == have {
                var.f_copy_(&src.to_device(var.device()).to_kind(var.kind()))
                    .torch()?;
                report.loaded.push(name.clone());
            } else if want.len() == 4
                && have.len() == 4
                && want[1] == 1
                && have[1] == 3
                && want[0] == have[0]
            {
                // A grey input: the sum over RGB keeps the response to a grey image unchanged.
                let summed = src.sum_dim_intlist([1i64].as_slice(), true, src.kind());
                var.f_copy_(&summed.to_device(var.device()).to_kind(var.kind()))
                    .torch()?;
                report.adapted.push(name.clone());
            } else {
                report
                    .skipped
                    .push((name.clone(), format!("shape {have:?} vs model {want:?}")));
            }
        }
        Ok(())
    })?;
    let mut extra: Vec<(String, String)> = file
        .keys()
        .filter(|k| !vars.contains_key(*k) || k.starts_with(head_prefix))
        .map(|k| {
            let why = if k.starts_with(head_prefix) {
                "classifier, re-made for this task"
            } else {
                "not in this model"
            };
            (k.clone(), why.to_string())
        })
        .collect();
    extra.sort();
    report.skipped.extend(extra);
    report.missing.retain(|m| !m.starts_with(head_prefix));
    Ok(report)
}
