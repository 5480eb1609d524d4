//! The single page of `xray serve` (`templates/serve.html`, with `serve.js` and `serve.css`): upload an image, see the label, a bar per class and the
//! Grad-CAM overlay. No outside resources: it works on a hospital network with no internet.

use serde_json::Value;

use super::html::escape_html as esc;

/// The page, with the model's name and validation figures filled in.
pub fn render(info: &Value, max_upload_bytes: usize) -> String {
    let fig = |v: &Value| v.as_f64().map_or("n/a".to_string(), |v| format!("{v:.3}"));
    let classes: Vec<&str> = info["classes"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c.as_str()).collect())
        .unwrap_or_default();
    // Many classes: their count here, their names on the bars of each answer.
    let classes = if classes.len() > 8 {
        format!("{} classes", classes.len())
    } else {
        format!("classes {}", classes.join(", "))
    };
    let model_line = format!(
        "Model {} ({}), {}; validation accuracy {}, AUC {}.",
        esc(info["model"].as_str().unwrap_or("")),
        esc(info["arch"].as_str().unwrap_or("")),
        esc(&classes),
        fig(&info["validation"]["accuracy"]),
        fig(&info["validation"]["auc"]),
    );
    let guard = match info["ood_guard"]["val_flag_rate"].as_f64() {
        Some(rate) => format!(
            "Images unlike the training images are refused (out-of-distribution guard; it \
             refuses {:.1}% of validation images).",
            100.0 * rate
        ),
        None => "No out-of-distribution guard is fitted for this model: every image gets a \
                 class, whatever it shows."
            .to_string(),
    };
    // With bearer tokens the page asks for one; the API refuses requests without it.
    let auth = if info["auth"] == "bearer" {
        "<p id=\"auth\"><label>Access token <input id=\"token\" type=\"password\" \
         autocomplete=\"off\" spellcheck=\"false\"></label></p>"
    } else {
        ""
    };
    PAGE.replace("{{MODEL}}", &format!("{model_line} {}", esc(&guard)))
        .replace("{{AUTH}}", auth)
        .replace("{{MAX_MB}}", &format!("{}", max_upload_bytes >> 20))
}

/// The page, with `{{MODEL}}`, `{{AUTH}}` and `{{MAX_MB}}` to fill in.
const PAGE: &str = include_str!("templates/serve.html");

/// The page's script, served as a file (the page's Content-Security-Policy allows no inline
/// script).
pub const SCRIPT: &str = include_str!("templates/serve.js");

/// The page's style, served as a file (no inline style either).
pub const STYLE: &str = include_str!("templates/serve.css");
