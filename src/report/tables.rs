//! The eval report's sections as tables of formatted cells, shared by the Markdown and HTML
//! exporters so both say the same thing.

use crate::evaluate::EvalReport;

/// A table: header and rows of already formatted cells.
pub struct Table {
    /// Column headings.
    pub header: Vec<String>,
    /// Rows of cells.
    pub rows: Vec<Vec<String>>,
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
pub fn sections(r: &EvalReport) -> Vec<(&'static str, Table)> {
    let mut s = vec![("Summary", headline(r)), ("Per class", per_class(r))];
    if let Some(t) = operating_points(r) {
        s.push(("Operating points (chosen on validation)", t));
    }
    s.push(("Confusion matrix (rows = true class)", confusion(r)));
    s
}

/// The report's title: the run and what was evaluated.
pub fn title(r: &EvalReport) -> String {
    let run = r
        .checkpoint
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| r.checkpoint.display().to_string());
    format!("xray evaluation: {run} on {}", r.source)
}

/// The line under the title: model, source, classes, how intervals were made.
pub fn subtitle(r: &EvalReport) -> String {
    let arch = r.arch;
    format!(
        "Model {arch} from {}; {} images; classes: {}. Intervals: stratified bootstrap, 1000 \
         resamples of {}. Thresholds and temperature were chosen on the validation split.",
        r.checkpoint.display(),
        r.n,
        r.classes.join(", "),
        resampled(r)
    )
}

/// What the bootstrap resampled, in words.
pub fn resampled(r: &EvalReport) -> String {
    match r.ci95.groups {
        Some(n) => format!("patients (groups; {n} of them, all their images together)"),
        None => "images".into(),
    }
}
