//! The eval report's sections as tables of formatted cells, shared by the Markdown and HTML
//! exporters so both say the same thing.

use crate::evaluate::EvalReport;

crate::choice::choice! {
    /// The order of the per-class rows of the eval report's tables.
    ClassOrder, "--sort-classes" {
        /// As in the data (the model's class list).
        Data = "data",
        /// By F1, best first (undefined last).
        F1 = "f1",
        /// By support (images of the class), most first.
        Support = "support",
    }
}

/// Past this many classes the confusion table's columns are numbered (the rows give the key).
pub const NUMBERED_FROM: usize = 9;

/// How a class with no images in the evaluated set is flagged in tables.
pub const NO_IMAGES: &str = "0 (no images)";

/// The class indices in the order the per-class tables list them; ties keep the data order.
pub fn class_order(r: &EvalReport, order: ClassOrder) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..r.classes.len()).collect();
    let per = |i: usize| &r.per_class[&r.classes[i]];
    match order {
        ClassOrder::Data => {}
        ClassOrder::F1 => idx.sort_by(|&a, &b| {
            let key = |i: usize| per(i).f1.unwrap_or(f64::NEG_INFINITY);
            key(b).total_cmp(&key(a))
        }),
        ClassOrder::Support => idx.sort_by_key(|&i| std::cmp::Reverse(per(i).support)),
    }
    idx
}

/// Whether the report's class list is numbered (many classes): the per-class table carries
/// each class's number and the confusion table's columns use it.
pub fn numbered(r: &EvalReport) -> bool {
    r.classes.len() >= NUMBERED_FROM
}

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
    rows.push(vec![
        "out-of-distribution guard".into(),
        match &r.ood {
            Some(o) => format!(
                "{} of {} images flagged ({:.1}%, threshold {:.1}){}",
                o.flagged,
                r.n,
                100.0 * o.flag_rate,
                o.threshold,
                super::text::expected_flags_text(o)
            ),
            None => "none fitted for this model".into(),
        },
    ]);
    Table {
        header: vec!["figure".into(), "value".into()],
        rows,
    }
}

/// Precision, recall, F1 and support per class in `order`, then the averages; with many
/// classes, each class's number first.
fn per_class(r: &EvalReport, order: ClassOrder) -> Table {
    let numbered = numbered(r);
    let mut rows: Vec<Vec<String>> = class_order(r, order)
        .into_iter()
        .map(|i| {
            let c = &r.classes[i];
            let m = &r.per_class[c];
            let mut row = Vec::new();
            if numbered {
                row.push((i + 1).to_string());
            }
            row.extend([c.clone(), fmt(m.precision), fmt(m.recall), fmt(m.f1)]);
            row.push(if m.support == 0 {
                NO_IMAGES.to_string()
            } else {
                m.support.to_string()
            });
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
        let mut row = if numbered {
            vec![String::new()]
        } else {
            vec![]
        };
        row.extend([name.into(), fmt(a.precision), fmt(a.recall), fmt(a.f1)]);
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
    let mut header: Vec<String> = if numbered { vec!["#".into()] } else { vec![] };
    header.extend(["class", "precision", "recall", "F1", "support"].map(String::from));
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

/// The confusion matrix with class names on both axes; with many classes the columns carry
/// the classes' numbers and the rows "number. name".
fn confusion(r: &EvalReport) -> Table {
    let numbered = numbered(r);
    let mut header = vec!["true \\ predicted".to_string()];
    header.extend(r.classes.iter().enumerate().map(|(i, c)| {
        if numbered {
            (i + 1).to_string()
        } else {
            c.clone()
        }
    }));
    let rows = r
        .classes
        .iter()
        .zip(&r.confusion_matrix)
        .enumerate()
        .map(|(i, (c, row))| {
            let mut name = if numbered {
                format!("{}. {c}", i + 1)
            } else {
                c.clone()
            };
            if row.iter().sum::<usize>() == 0 {
                name.push_str(" (no images)");
            }
            std::iter::once(name)
                .chain(row.iter().map(|v| v.to_string()))
                .collect()
        })
        .collect();
    Table { header, rows }
}

/// The sections in order: heading and table.
pub fn sections(r: &EvalReport, order: ClassOrder) -> Vec<(&'static str, Table)> {
    let mut s = vec![("Summary", headline(r)), ("Per class", per_class(r, order))];
    if let Some(t) = operating_points(r) {
        s.push(("Operating points (chosen on validation)", t));
    }
    let heading = if numbered(r) {
        "Confusion matrix (rows = true class; columns numbered as the rows)"
    } else {
        "Confusion matrix (rows = true class)"
    };
    s.push((heading, confusion(r)));
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
    // A long class list is the per-class table's to give.
    let classes = if numbered(r) {
        format!("{} classes (see the per-class table)", r.classes.len())
    } else {
        format!("classes: {}", r.classes.join(", "))
    };
    format!(
        "Model {arch} from {}; {} images; {classes}. Intervals: stratified bootstrap, 1000 \
         resamples of {}. Thresholds and temperature were chosen on the validation split.",
        r.checkpoint.display(),
        r.n,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::{Ci95, Ece};
    use crate::metrics::{macro_average, per_class as metrics_per_class, weighted_average};

    /// A report of `k` classes from a confusion matrix, the other figures left empty.
    fn report(k: usize, cm: Vec<Vec<usize>>) -> EvalReport {
        let classes: Vec<String> = (0..k)
            .map(|i| format!("class {i} with a long name"))
            .collect();
        let per = metrics_per_class(&cm);
        EvalReport {
            checkpoint: "run".into(),
            arch: crate::models::Arch::SimpleCnn,
            source: "test".into(),
            n: cm.iter().flatten().sum(),
            classes: classes.clone(),
            accuracy: None,
            per_class: classes.iter().cloned().zip(per.iter().cloned()).collect(),
            macro_avg: macro_average(&per),
            weighted_avg: weighted_average(&per),
            confusion_matrix: cm,
            roc_auc: None,
            roc_auc_ovr: None,
            roc_auc_macro: None,
            balanced_accuracy: None,
            cohen_kappa: None,
            pr_auc: Default::default(),
            threshold: 0.5,
            sensitivity: None,
            specificity: None,
            ci95: Ci95 {
                accuracy: None,
                roc_auc: None,
                sensitivity: None,
                specificity: None,
                method: "image".into(),
                groups: None,
            },
            ece: Ece {
                before: None,
                after: None,
                temperature: 1.0,
            },
            target_sensitivity: None,
            threshold_youden: None,
            threshold_at_sensitivity: None,
            loss: 0.0,
            ood: None,
        }
    }

    /// Ten classes: class i has i+1 images, all right but class 3 (all wrong) and class 9
    /// (none at all).
    fn ten() -> EvalReport {
        let cm = (0..10)
            .map(|r| {
                let mut row = vec![0; 10];
                match r {
                    9 => {}
                    3 => row[0] = 4,
                    _ => row[r] = r + 1,
                }
                row
            })
            .collect();
        report(10, cm)
    }

    #[test]
    fn many_classes_are_numbered_and_empty_ones_flagged() {
        let r = ten();
        assert!(numbered(&r));
        let s = sections(&r, ClassOrder::Data);
        let per = &s[1].1;
        assert_eq!(per.header[0], "#");
        assert_eq!(per.rows[9][0], "10");
        assert_eq!(per.rows[9][5], NO_IMAGES);
        let confusion = &s.last().unwrap().1;
        assert_eq!(confusion.header[1], "1");
        assert_eq!(confusion.rows[2][0], "3. class 2 with a long name");
        assert!(
            confusion.rows[9][0].ends_with("(no images)"),
            "{:?}",
            confusion.rows[9]
        );
        let text = crate::report::report_table(&r, ClassOrder::Data);
        assert!(text.contains(NO_IMAGES), "{text}");
        assert!(text.contains("classes numbered as above"), "{text}");
    }

    #[test]
    fn rows_sort_by_f1_or_support_keeping_data_order_on_ties() {
        let r = ten();
        // F1 1.0 for all but class 3 (0.0) and class 9 (undefined), which come last in that
        // order; class 0 shares its column with class 3's mistakes, so its F1 is below 1.
        let by_f1 = class_order(&r, ClassOrder::F1);
        assert_eq!(by_f1, vec![1, 2, 4, 5, 6, 7, 8, 0, 3, 9]);
        let by_support = class_order(&r, ClassOrder::Support);
        assert_eq!(by_support, vec![8, 7, 6, 5, 4, 3, 2, 1, 0, 9]);
        assert_eq!(
            class_order(&r, ClassOrder::Data),
            (0..10).collect::<Vec<_>>()
        );
        let two = report(2, vec![vec![3, 1], vec![0, 4]]);
        assert!(!numbered(&two));
        assert_eq!(sections(&two, ClassOrder::Data)[1].1.header[0], "class");
    }
}
