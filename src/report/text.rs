//! The eval report as the terminal shows it: a compact table, the figures, the confusion
//! matrix.

use super::tables::{class_order, numbered, ClassOrder, NO_IMAGES};
use crate::evaluate::EvalReport;

fn fmt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.4}"))
}

/// Widest class column of the terminal table; longer names continue on the next lines.
const NAME_WIDTH: usize = 34;

/// The report as a compact table for the terminal, per-class rows in `order`. With many classes
/// each class has a number, which the confusion matrix's rows and columns use; long names wrap
/// within their column; a class without images says so.
pub fn report_table(r: &EvalReport, order: ClassOrder) -> String {
    let numbered = numbered(r) || r.classes.iter().any(|c| c.chars().count() > 14);
    let longest = r
        .classes
        .iter()
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(5);
    let width = longest.clamp(12, NAME_WIDTH);
    let num_w = if numbered {
        r.classes.len().to_string().len() + 2
    } else {
        0
    };
    let mut s = String::new();
    s.push_str(&format!("{} images from {}\n\n", r.n, r.source));
    let row = |num: &str, name: &str, cells: [String; 4]| {
        let lines = wrap_chars(name, width);
        let mut out = format!(
            "{num:<num_w$}{:<width$}  {:>9}  {:>9}  {:>9}  {:>7}\n",
            lines[0], cells[0], cells[1], cells[2], cells[3]
        );
        for l in &lines[1..] {
            out.push_str(&format!("{:<num_w$}{l}\n", ""));
        }
        out
    };
    let head = if numbered { "#" } else { "" };
    s.push_str(&row(
        head,
        "class",
        ["precision", "recall", "f1", "support"].map(String::from),
    ));
    for i in class_order(r, order) {
        let c = &r.classes[i];
        let m = &r.per_class[c];
        let num = if numbered {
            (i + 1).to_string()
        } else {
            String::new()
        };
        let support = if m.support == 0 {
            NO_IMAGES.to_string()
        } else {
            m.support.to_string()
        };
        s.push_str(&row(
            &num,
            c,
            [fmt(m.precision), fmt(m.recall), fmt(m.f1), support],
        ));
    }
    for (name, a) in [
        ("macro avg", &r.macro_avg),
        ("weighted avg", &r.weighted_avg),
    ] {
        s.push_str(&row(
            "",
            name,
            [fmt(a.precision), fmt(a.recall), fmt(a.f1), r.n.to_string()],
        ));
    }
    s.push_str(&headline_figures(r));
    s.push_str(&format!(
        "95% CI: bootstrap over {}\n",
        super::tables::resampled(r)
    ));
    s.push_str(&match &r.ood {
        Some(o) => format!(
            "out-of-distribution guard: {} of {} images flagged ({:.1}%; threshold {:.1}){}\n",
            o.flagged,
            r.n,
            100.0 * o.flag_rate,
            o.threshold,
            expected_flags_text(o)
        ),
        None => "out-of-distribution guard: none fitted for this model\n".into(),
    });
    s.push_str(&confusion_text(r, numbered, width));
    s
}

/// What chance gives an in-distribution set of this size, and whether this set is beyond it.
pub fn expected_flags_text(o: &crate::evaluate::OodSummary) -> String {
    match o.expected_flags {
        Some([lo, hi]) if o.flagged > hi => format!(
            "; chance flags {lo}-{hi} of an in-distribution set this size (90%): more here, so \
             these images differ from the validation images"
        ),
        Some([lo, hi]) => format!("; chance flags {lo}-{hi} (90%)"),
        None => String::new(),
    }
}

/// The confusion matrix: by class number when the classes are numbered, else by name.
fn confusion_text(r: &EvalReport, numbered: bool, width: usize) -> String {
    let mut s = String::new();
    if numbered {
        s.push_str(
            "\nconfusion matrix (rows = true, columns = predicted; classes numbered as above)\n",
        );
        let most = r
            .confusion_matrix
            .iter()
            .flatten()
            .max()
            .copied()
            .unwrap_or(0);
        let cw = most
            .to_string()
            .len()
            .max(r.classes.len().to_string().len());
        let rw = r.classes.len().to_string().len() + 1;
        s.push_str(&format!("{:<rw$}", "#"));
        for i in 0..r.classes.len() {
            s.push_str(&format!(" {:>cw$}", i + 1));
        }
        s.push('\n');
        for (i, row) in r.confusion_matrix.iter().enumerate() {
            s.push_str(&format!("{:<rw$}", i + 1));
            for v in row {
                s.push_str(&format!(" {v:>cw$}"));
            }
            s.push('\n');
        }
        return s;
    }
    s.push_str("\nconfusion matrix (rows = true, columns = predicted)\n");
    let cw = width.min(14);
    s.push_str(&format!("{:<width$}", ""));
    for c in &r.classes {
        s.push_str(&format!("  {c:>cw$}"));
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

/// `text` in lines of at most `width` characters, broken at spaces where possible.
fn wrap_chars(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let last = lines.last_mut().expect("one line");
        let len = last.chars().count();
        if len > 0 && len + 1 + word.chars().count() <= width {
            last.push(' ');
            last.push_str(word);
            continue;
        }
        if len > 0 {
            lines.push(String::new());
        }
        for ch in word.chars() {
            let last = lines.last_mut().expect("one line");
            if last.chars().count() == width {
                lines.push(ch.to_string());
            } else {
                last.push(ch);
            }
        }
    }
    lines
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_names_wrap_within_their_column() {
        let name = "Poison Ivy Photos and other Contact Dermatitis";
        let lines = wrap_chars(name, 20);
        assert_eq!(lines.join(" "), name);
        assert!(lines.iter().all(|l| l.chars().count() <= 20), "{lines:?}");
        assert_eq!(wrap_chars("abcdefgh", 3), vec!["abc", "def", "gh"]);
        assert_eq!(wrap_chars("NORMAL", 12), vec!["NORMAL"]);
    }
}
