//! Metrics against values computed by scikit-learn 1.9.1 on the same small inputs:
//!
//! ```python
//! from sklearn.metrics import average_precision_score, balanced_accuracy_score, cohen_kappa_score
//! from sklearn.metrics import roc_auc_score, confusion_matrix, precision_recall_fscore_support
//! roc_auc_score(y, s)                                   # binary, tied scores
//! precision_recall_fscore_support(yt, yp, labels=[0,1,2], zero_division=np.nan)
//! precision_recall_fscore_support(..., average="macro" | "weighted", zero_division=np.nan)
//! roc_auc_score(yt, P, multi_class="ovr", average="macro")
//! ```
//! With `zero_division=np.nan` scikit-learn leaves undefined values out of the averages, as
//! xray does; xray reports them as `None` (JSON null).

use xray::metrics::*;

fn close(a: Option<f64>, b: f64) {
    let a = a.expect("value is defined");
    assert!((a - b).abs() < 1e-12, "{a} != {b}");
}

#[test]
fn binary_auc_with_tied_scores_matches_sklearn() {
    let y = [0, 0, 1, 1, 0, 1, 0, 1, 1, 0];
    let s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.4, 0.2, 0.9, 0.35, 0.6];
    let pos: Vec<bool> = y.iter().map(|&v| v == 1).collect();
    close(roc_auc(&s, &pos), 0.68);
}

#[test]
fn average_precision_with_tied_scores_matches_sklearn() {
    // average_precision_score(y, s) on the inputs above.
    let y = [0, 0, 1, 1, 0, 1, 0, 1, 1, 0];
    let s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.4, 0.2, 0.9, 0.35, 0.6];
    let pos: Vec<bool> = y.iter().map(|&v| v == 1).collect();
    close(average_precision(&s, &pos), 0.75);
    assert_eq!(average_precision(&[0.3], &[false]), None);
}

/// sklearn.metrics.roc_curve(y, s, drop_intermediate=False) on the same inputs: (0, 0) at
/// threshold inf, then thresholds 0.9, 0.8, 0.6, 0.4, 0.35, 0.2, 0.1.
#[test]
fn roc_curve_matches_sklearn() {
    let y = [0, 0, 1, 1, 0, 1, 0, 1, 1, 0];
    let s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.4, 0.2, 0.9, 0.35, 0.6];
    let pos: Vec<bool> = y.iter().map(|&v| v == 1).collect();
    let fpr = [0.0, 0.0, 0.0, 0.2, 0.6, 0.6, 0.8, 1.0];
    let tpr = [0.0, 0.2, 0.4, 0.4, 0.6, 1.0, 1.0, 1.0];
    let got = roc_curve(&s, &pos);
    assert_eq!(got.len(), fpr.len(), "{got:?}");
    for ((f, t), (ef, et)) in got.iter().zip(fpr.iter().zip(tpr)) {
        assert!((f - ef).abs() < 1e-12 && (t - et).abs() < 1e-12, "{got:?}");
    }
}

/// sklearn.metrics.precision_recall_curve(y, s, drop_intermediate=False) on the same inputs,
/// read from its last point (recall 0, precision 1) back to threshold 0.1.
#[test]
fn pr_curve_matches_sklearn() {
    let y = [0, 0, 1, 1, 0, 1, 0, 1, 1, 0];
    let s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.4, 0.2, 0.9, 0.35, 0.6];
    let pos: Vec<bool> = y.iter().map(|&v| v == 1).collect();
    let recall = [0.0, 0.2, 0.4, 0.4, 0.6, 1.0, 1.0, 1.0];
    let precision = [1.0, 1.0, 1.0, 2.0 / 3.0, 0.5, 0.625, 5.0 / 9.0, 0.5];
    let got = pr_curve(&s, &pos);
    assert_eq!(got.len(), recall.len(), "{got:?}");
    for ((r, p), (er, ep)) in got.iter().zip(recall.iter().zip(precision)) {
        assert!((r - er).abs() < 1e-12 && (p - ep).abs() < 1e-12, "{got:?}");
    }
    assert!(pr_curve(&[0.2], &[false]).is_empty());
}

#[test]
fn auc_is_undefined_without_both_classes() {
    assert_eq!(roc_auc(&[0.2, 0.7], &[true, true]), None);
}

/// Three classes; class 2 is never predicted (precision undefined).
fn three_class() -> (Vec<usize>, Vec<Vec<f64>>) {
    let yt = vec![0, 0, 0, 1, 1, 1, 2, 2, 1, 0];
    let p = vec![
        vec![0.7, 0.2, 0.1],
        vec![0.5, 0.4, 0.1],
        vec![0.3, 0.6, 0.1],
        vec![0.2, 0.7, 0.1],
        vec![0.4, 0.5, 0.1],
        vec![0.6, 0.3, 0.1],
        vec![0.2, 0.5, 0.3],
        vec![0.45, 0.3, 0.25],
        vec![0.1, 0.8, 0.1],
        vec![0.8, 0.1, 0.1],
    ];
    (yt, p)
}

#[test]
fn multiclass_report_matches_sklearn() {
    let (yt, p) = three_class();
    let yp: Vec<usize> = p.iter().map(|r| decide(r, 0.5)).collect();
    assert_eq!(yp, vec![0, 0, 1, 1, 1, 0, 1, 0, 1, 0]);
    let cm = confusion_matrix(&yt, &yp, 3);
    assert_eq!(cm, vec![vec![3, 1, 0], vec![1, 3, 0], vec![1, 1, 0]]);
    close(accuracy(&yt, &yp), 0.6);
    let per = per_class(&cm);
    close(per[0].precision, 0.6);
    close(per[0].recall, 0.75);
    close(per[0].f1, 0.6666666666666666);
    close(per[1].precision, 0.6);
    assert_eq!(per[2].precision, None, "never predicted: undefined, not 0");
    close(per[2].recall, 0.0);
    close(per[2].f1, 0.0);
    assert_eq!(
        per.iter().map(|m| m.support).collect::<Vec<_>>(),
        vec![4, 4, 2]
    );
    let m = macro_average(&per);
    close(m.precision, 0.6);
    close(m.recall, 0.5);
    close(m.f1, 0.4444444444444444);
    let w = weighted_average(&per);
    close(w.precision, 0.6);
    close(w.recall, 0.6);
    close(w.f1, 0.5333333333333333);
    let ovr = roc_auc_ovr(&p, &yt, 3);
    close(ovr[0], 0.8333333333333334);
    close(ovr[1], 0.7916666666666667);
    close(ovr[2], 1.0);
    close(mean_defined(&ovr), 0.875);
    // balanced_accuracy_score, cohen_kappa_score, average_precision_score per class.
    close(balanced_accuracy(&cm), 0.5);
    close(cohen_kappa(&cm), 0.33333333333333337);
    let ap = average_precision_ovr(&p, &yt, 3);
    close(ap[0], 0.8303571428571428);
    close(ap[1], 0.775);
    close(ap[2], 1.0);
}

#[test]
fn class_absent_from_labels_is_undefined_not_zero() {
    // sklearn: precision [0.5, 1, 1, 0], recall [0.5, 1, 0.5, nan], f1 [0.5, 1, 0.667, 0].
    let yt = [0, 1, 2, 0, 1, 2];
    let yp = [0, 1, 2, 3, 1, 0];
    let per = per_class(&confusion_matrix(&yt, &yp, 4));
    close(per[3].precision, 0.0);
    assert_eq!(per[3].recall, None);
    close(per[3].f1, 0.0);
    close(per[2].f1, 2.0 / 3.0);
    assert_eq!(per[3].support, 0);
    let json = serde_json::to_value(&per[3]).unwrap();
    assert!(json["recall"].is_null(), "{json}");
    // The one-vs-rest AUC of the absent class is undefined too.
    let probs: Vec<Vec<f64>> = yt
        .iter()
        .map(|&t| (0..4).map(|c| if c == t { 0.7 } else { 0.1 }).collect())
        .collect();
    assert_eq!(roc_auc_ovr(&probs, &yt, 4)[3], None);
}

#[test]
fn two_class_decision_uses_the_threshold() {
    assert_eq!(decide(&[0.7, 0.3], 0.5), 0);
    assert_eq!(decide(&[0.7, 0.3], 0.25), 1);
    assert_eq!(decide(&[0.2, 0.3, 0.5], 0.9), 2);
}
