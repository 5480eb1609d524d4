//! The eval report as the terminal shows it: a compact table, the figures, the confusion
//! matrix.

use crate::evaluate::EvalReport;

fn fmt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.4}"))
}

/// The report as a compact table for the terminal.
pub fn report_table(r: &EvalReport) -> String {
    let width = r.classes.iter().map(|c| c.len()).max().unwrap_or(5).max(12);
    let mut s = String::new();
    s.push_str(&format!("{} images from {}\n\n", r.n, r.source));
    s.push_str(&format!(
        "{:<width$}  {:>9}  {:>9}  {:>9}  {:>7}\n",
        "class", "precision", "recall", "f1", "support"
    ));
    for c in &r.classes {
        let m = &r.per_class[c];
        s.push_str(&format!(
            "{:<width$}  {:>9}  {:>9}  {:>9}  {:>7}\n",
            c,
            fmt(m.precision),
            fmt(m.recall),
            fmt(m.f1),
            m.support
        ));
    }
    for (name, a) in [
        ("macro avg", &r.macro_avg),
        ("weighted avg", &r.weighted_avg),
    ] {
        s.push_str(&format!(
            "{:<width$}  {:>9}  {:>9}  {:>9}  {:>7}\n",
            name,
            fmt(a.precision),
            fmt(a.recall),
            fmt(a.f1),
            r.n
        ));
    }
    s.push_str(&headline_figures(r));
    s.push_str(&format!(
        "95% CI: bootstrap over {}\n",
        super::tables::resampled(r)
    ));
    s.push_str("\nconfusion matrix (rows = true, columns = predicted)\n");
    let cw = width.min(14);
    s.push_str(&format!("{:<width$}", ""));
    for c in &r.classes {
        s.push_str(&format!("  {:>cw$}", truncate(c, cw)));
    }
    s.push('\n');
    for (c, row) in r.classes.iter().zip(&r.confusion_matrix) {
        s.push_str(&format!("{c:<width$}"));
        for v in row {
            s.push_str(&format!("  {v:>cw$}"));
        }
        s.push('\n');
    }
    s
}

/// Accuracy, agreement, AUC, the operating points and calibration, a line each.
fn headline_figures(r: &EvalReport) -> String {
    let mut s = String::new();
    let ci = |c: Option<[f64; 2]>| {
        c.map_or(String::new(), |c| {
            format!("  [95% CI {:.4}-{:.4}]", c[0], c[1])
        })
    };
    s.push_str(&format!(
        "\naccuracy  {}{}\n",
        fmt(r.accuracy),
        ci(r.ci95.accuracy)
    ));
    s.push_str(&format!("balanced  {}\n", fmt(r.balanced_accuracy)));
    s.push_str(&format!("kappa     {}\n", fmt(r.cohen_kappa)));
    if let Some(auc) = r.roc_auc {
        s.push_str(&format!(
            "ROC-AUC   {auc:.4}{}  (positive class: {})\n",
            ci(r.ci95.roc_auc),
            r.classes[1]
        ));
    }
    if let (Some(se), Some(sp)) = (r.sensitivity, r.specificity) {
        s.push_str(&format!(
            "at threshold {:.4}: sensitivity {se:.4}{}, specificity {sp:.4}{}\n",
            r.threshold,
            ci(r.ci95.sensitivity),
            ci(r.ci95.specificity)
        ));
    }
    for (name, p) in [
        ("Youden", r.threshold_youden),
        ("sensitivity target", r.threshold_at_sensitivity),
    ] {
        if let Some(p) = p {
            s.push_str(&format!(
                "{name} threshold {:.4} (from validation): sensitivity {:.4}, specificity {:.4}\n",
                p.threshold, p.sensitivity, p.specificity
            ));
        }
    }
    s.push_str(&format!(
        "ECE (15 bins) {} before, {} after temperature scaling (T = {:.3})\n",
        fmt(r.ece.before),
        fmt(r.ece.after),
        r.ece.temperature
    ));
    if r.classes.len() == 2 {
        let ap = r.pr_auc.get(&r.classes[1]).copied().flatten();
        s.push_str(&format!("PR-AUC    {}  (average precision)\n", fmt(ap)));
    }
    if let Some(auc) = r.roc_auc_macro {
        s.push_str(&format!(
            "ROC-AUC   {auc:.4}{}  (macro one-vs-rest)\n",
            ci(r.ci95.roc_auc)
        ));
    }
    s
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}
