//! `report.md` and the self-contained `report.html` of `xray eval`: the same sections, once as
//! Markdown linking the PNG files beside it, once as one HTML page with the PNGs inlined.

use base64::Engine;

use crate::evaluate::EvalReport;

/// A table: header and rows of already formatted cells.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// A picture of the report: its file name in the eval folder, its PNG bytes and a heading.
pub struct Figure {
    /// File name beside the report (e.g. `roc.png`).
    pub file: String,
    /// Heading above the picture.
    pub title: String,
    /// The PNG file's bytes, inlined into the HTML page.
    pub png: Vec<u8>,
    /// Wider than tall: given the page's whole width.
    pub wide: bool,
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("undefined".into(), |v| format!("{v:.4}"))
}

fn with_ci(v: Option<f64>, ci: Option<[f64; 2]>) -> String {
    match (v, ci) {
        (Some(v), Some([lo, hi])) => format!("{v:.4} (95% CI {lo:.4}–{hi:.4})"),
        (v, _) => fmt(v),
    }
}

/// The headline figures, one (name, value) a row.
fn headline(r: &EvalReport) -> Table {
    let mut rows = vec![
        vec!["images".into(), r.n.to_string()],
        vec!["accuracy".into(), with_ci(r.accuracy, r.ci95.accuracy)],
        vec!["balanced accuracy".into(), fmt(r.balanced_accuracy)],
        vec!["Cohen's kappa".into(), fmt(r.cohen_kappa)],
    ];
    if r.classes.len() == 2 {
        let positive = &r.classes[1];
        rows.push(vec![
            format!("ROC-AUC ({positive})"),
            with_ci(r.roc_auc, r.ci95.roc_auc),
        ]);
        let ap = r.pr_auc.get(positive).copied().flatten();
        rows.push(vec![format!("PR-AUC ({positive})"), fmt(ap)]);
        rows.push(vec![
            format!("sensitivity at threshold {:.4}", r.threshold),
            with_ci(r.sensitivity, r.ci95.sensitivity),
        ]);
        rows.push(vec![
            format!("specificity at threshold {:.4}", r.threshold),
            with_ci(r.specificity, r.ci95.specificity),
        ]);
    } else {
        rows.push(vec![
            "ROC-AUC (macro one-vs-rest)".into(),
            with_ci(r.roc_auc_macro, r.ci95.roc_auc),
        ]);
    }
    rows.push(vec![
        "ECE, 15 bins (raw → temperature-scaled)".into(),
        format!(
            "{} → {} (T = {:.3})",
            fmt(r.ece.before),
            fmt(r.ece.after),
            r.ece.temperature
        ),
    ]);
    rows.push(vec!["mean cross-entropy".into(), format!("{:.4}", r.loss)]);
    Table {
        header: vec!["figure".into(), "value".into()],
        rows,
    }
}

/// Precision, recall, F1 and support per class, then the averages.
fn per_class(r: &EvalReport) -> Table {
    let mut rows: Vec<Vec<String>> = r
        .classes
        .iter()
        .map(|c| {
            let m = &r.per_class[c];
            let mut row = vec![c.clone(), fmt(m.precision), fmt(m.recall), fmt(m.f1)];
            row.push(m.support.to_string());
            if let Some(ovr) = &r.roc_auc_ovr {
                row.push(fmt(ovr.get(c).copied().flatten()));
            }
            row
        })
        .collect();
    for (name, a) in [
        ("macro average", &r.macro_avg),
        ("weighted average", &r.weighted_avg),
    ] {
        let mut row = vec![name.into(), fmt(a.precision), fmt(a.recall), fmt(a.f1)];
        row.push(r.n.to_string());
        if r.roc_auc_ovr.is_some() {
            let auc = if name.starts_with("macro") {
                fmt(r.roc_auc_macro)
            } else {
                String::new()
            };
            row.push(auc);
        }
        rows.push(row);
    }
    let mut header: Vec<String> = ["class", "precision", "recall", "F1", "support"]
        .map(String::from)
        .into();
    if r.roc_auc_ovr.is_some() {
        header.push("ROC-AUC (one-vs-rest)".into());
    }
    Table { header, rows }
}

/// Two classes: the operating points chosen on validation and their figures on this set.
fn operating_points(r: &EvalReport) -> Option<Table> {
    let target = r.target_sensitivity?;
    let rows: Vec<Vec<String>> = [
        ("Youden's J".to_string(), r.threshold_youden),
        (
            format!("sensitivity ≥ {target:.2} on validation"),
            r.threshold_at_sensitivity,
        ),
    ]
    .into_iter()
    .filter_map(|(name, p)| {
        let p = p?;
        Some(vec![
            name,
            format!("{:.4}", p.threshold),
            format!("{:.4}", p.sensitivity),
            format!("{:.4}", p.specificity),
        ])
    })
    .collect();
    (!rows.is_empty()).then(|| Table {
        header: ["operating point", "threshold", "sensitivity", "specificity"]
            .map(String::from)
            .into(),
        rows,
    })
}

/// The confusion matrix with class names on both axes.
fn confusion(r: &EvalReport) -> Table {
    let mut header = vec!["true \\ predicted".to_string()];
    header.extend(r.classes.iter().cloned());
    let rows = r
        .classes
        .iter()
        .zip(&r.confusion_matrix)
        .map(|(c, row)| {
            std::iter::once(c.clone())
                .chain(row.iter().map(|v| v.to_string()))
                .collect()
        })
        .collect();
    Table { header, rows }
}

/// The sections in order: heading and table.
fn sections(r: &EvalReport) -> Vec<(&'static str, Table)> {
    let mut s = vec![("Summary", headline(r)), ("Per class", per_class(r))];
    if let Some(t) = operating_points(r) {
        s.push(("Operating points (chosen on validation)", t));
    }
    s.push(("Confusion matrix (rows = true class)", confusion(r)));
    s
}

fn title(r: &EvalReport) -> String {
    let run = r
        .checkpoint
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| r.checkpoint.display().to_string());
    format!("xray evaluation: {run} on {}", r.source)
}

fn subtitle(r: &EvalReport, arch: &str) -> String {
    format!(
        "Model {arch} from {}; {} images; classes: {}. Intervals: stratified bootstrap, 1000 \
         resamples. Thresholds and temperature were chosen on the validation split.",
        r.checkpoint.display(),
        r.n,
        r.classes.join(", ")
    )
}

/// Escapes a cell of a Markdown table.
fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// `report.md`: the sections as Markdown tables, the pictures linked by file name.
pub fn markdown(r: &EvalReport, arch: &str, figures: &[Figure]) -> String {
    let mut s = format!("# {}\n\n{}\n", title(r), subtitle(r, arch));
    for (heading, table) in sections(r) {
        s.push_str(&format!("\n## {heading}\n\n"));
        let line = |cells: &[String]| {
            let cells: Vec<String> = cells.iter().map(|c| md_cell(c)).collect();
            format!("| {} |\n", cells.join(" | "))
        };
        s.push_str(&line(&table.header));
        s.push_str(&format!("|{}\n", "---|".repeat(table.header.len())));
        for row in &table.rows {
            s.push_str(&line(row));
        }
    }
    for f in figures {
        s.push_str(&format!("\n## {}\n\n![{}]({})\n", f.title, f.title, f.file));
    }
    s
}

/// Escapes text for HTML (element content and quoted attributes).
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;\
max-width:1100px;margin:2em auto;padding:0 1em;color:#222}\
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.3em .7em;\
text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}\
figure{display:inline-block;width:48%;margin:.5em 1% .5em 0;vertical-align:top}\
figure.wide{width:98%}figure img{width:100%;border:1px solid #eee}figcaption{font-weight:600;margin:.3em 0}\
.note{color:#555}";

/// `report.html`: one page with no outside references, the pictures inlined as data URIs.
pub fn html(r: &EvalReport, arch: &str, figures: &[Figure]) -> String {
    let mut s = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n\
         <p class=\"note\">{}</p>\n",
        escape_html(&title(r)),
        escape_html(&title(r)),
        escape_html(&subtitle(r, arch))
    );
    for (heading, table) in sections(r) {
        s.push_str(&format!("<h2>{}</h2>\n<table>\n<tr>", escape_html(heading)));
        for h in &table.header {
            s.push_str(&format!("<th>{}</th>", escape_html(h)));
        }
        s.push_str("</tr>\n");
        for row in &table.rows {
            s.push_str("<tr>");
            for c in row {
                s.push_str(&format!("<td>{}</td>", escape_html(c)));
            }
            s.push_str("</tr>\n");
        }
        s.push_str("</table>\n");
    }
    s.push_str("<h2>Pictures</h2>\n");
    for f in figures {
        let data = base64::engine::general_purpose::STANDARD.encode(&f.png);
        // Square plots side by side; the wide ones (two panels, galleries) on their own row.
        let class = if f.wide { " class=\"wide\"" } else { "" };
        s.push_str(&format!(
            "<figure{class}><figcaption>{}</figcaption>\
             <img alt=\"{}\" src=\"data:image/png;base64,{data}\"></figure>\n",
            escape_html(&f.title),
            escape_html(&f.title)
        ));
    }
    s.push_str(
        "<p class=\"note\">Written by xray. Research use, not a diagnosis.</p>\n</body>\n</html>\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_class_names() {
        assert_eq!(escape_html("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
        assert_eq!(md_cell("a|b"), "a\\|b");
    }
}
