//! The single page of `xray serve` (its HTML is `templates/serve.html`): upload an image, see the label, a bar per class and the
//! Grad-CAM overlay. No outside resources: it works on a hospital network with no internet.

use serde_json::Value;

use super::html::escape_html as esc;

/// The page, with the model's name and validation figures filled in.
pub fn render(info: &Value, max_upload_bytes: usize) -> String {
    let fig = |v: &Value| v.as_f64().map_or("n/a".to_string(), |v| format!("{v:.3}"));
    let model_line = format!(
        "Model {} ({}), classes {}; validation accuracy {}, AUC {}.",
        esc(info["model"].as_str().unwrap_or("")),
        esc(info["arch"].as_str().unwrap_or("")),
        esc(&info["classes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()),
        fig(&info["validation"]["accuracy"]),
        fig(&info["validation"]["auc"]),
    );
    PAGE.replace("{{MODEL}}", &model_line)
        .replace("{{MAX_MB}}", &format!("{}", max_upload_bytes >> 20))
}

/// The page, with `{{MODEL}}` and `{{MAX_MB}}` to fill in.
const PAGE: &str = include_str!("templates/serve.html");
