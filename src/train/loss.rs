//! The training loss and the class weights it applies.

use anyhow::Result;
use tch::{Kind, Tensor};

use crate::config::{ClassWeightKeyword, ClassWeights, LossKind, TrainConfig};
use crate::error::{Error, TorchResultExt};

/// The training loss: cross-entropy (class weights, label smoothing) or focal loss (class
/// weights as alpha), averaged with the weights as torch's weighted cross-entropy is.
pub fn training_loss(
    logits: &Tensor,
    ys: &Tensor,
    weights: Option<&Tensor>,
    tc: &TrainConfig,
) -> Result<Tensor> {
    match tc.loss {
        LossKind::Focal => {
            let log_p = logits.log_softmax(-1, Kind::Float);
            let log_pt = log_p.gather(1, &ys.unsqueeze(1), false).squeeze_dim(1);
            let pt = log_pt.exp();
            let per_sample = (pt.neg() + 1.0).pow_tensor_scalar(tc.focal_gamma).neg() * &log_pt;
            Ok(match weights {
                Some(w) => {
                    let wt = w.index_select(0, ys);
                    (per_sample * &wt).sum(Kind::Float) / wt.sum(Kind::Float)
                }
                None => per_sample.mean(Kind::Float),
            })
        }
        LossKind::CrossEntropy => logits
            .f_cross_entropy_loss(ys, weights, tch::Reduction::Mean, -100, tc.label_smoothing)
            .torch(),
    }
}

/// The multi-label training loss: binary cross-entropy with logits over the unmasked entries of
/// `targets`, `pos_weight` per label, label smoothing, or the focal loss's binary form.
pub fn multilabel_loss(
    logits: &Tensor,
    targets: &Tensor,
    pos_weight: Option<&Tensor>,
    tc: &TrainConfig,
) -> Tensor {
    let gamma = (tc.loss == LossKind::Focal).then_some(tc.focal_gamma);
    crate::compute::scoring::masked_bce_with(logits, targets, pos_weight, tc.label_smoothing, gamma)
}

/// Positive weights per label for `train.class_weights` in a multi-label run: "balanced" is
/// negatives / positives of each label among its unmasked training targets (what torch's
/// `BCEWithLogitsLoss` documentation suggests), a list gives one weight per label.
pub fn pos_weights(
    setting: &ClassWeights,
    targets: &[f32],
    n_labels: usize,
) -> Result<Option<Vec<f64>>> {
    match setting {
        ClassWeights::Keyword(ClassWeightKeyword::None) => Ok(None),
        ClassWeights::Keyword(ClassWeightKeyword::Balanced) => {
            let mut pos = vec![0usize; n_labels];
            let mut neg = vec![0usize; n_labels];
            for row in targets.chunks(n_labels.max(1)) {
                for (l, &t) in row.iter().enumerate() {
                    if t == 1.0 {
                        pos[l] += 1;
                    } else if t == 0.0 {
                        neg[l] += 1;
                    }
                }
            }
            Ok(Some(
                pos.iter()
                    .zip(&neg)
                    .map(|(&p, &n)| if p == 0 { 1.0 } else { n as f64 / p as f64 })
                    .collect(),
            ))
        }
        ClassWeights::Explicit(w) if w.len() == n_labels => Ok(Some(w.clone())),
        ClassWeights::Explicit(w) => Err(Error::usage(format!(
            "train.class_weights has {} values but the split has {n_labels} labels",
            w.len()
        ))
        .into()),
    }
}

/// Loss weights per class for `train.class_weights`.
pub fn class_weights(setting: &ClassWeights, counts: &[usize]) -> Result<Option<Vec<f64>>> {
    match setting {
        ClassWeights::Keyword(ClassWeightKeyword::None) => Ok(None),
        ClassWeights::Keyword(ClassWeightKeyword::Balanced) => {
            // n / (k * count), as scikit-learn's compute_class_weight.
            let n: usize = counts.iter().sum();
            let k = counts.len() as f64;
            Ok(Some(
                counts
                    .iter()
                    .map(|&c| {
                        if c == 0 {
                            0.0
                        } else {
                            n as f64 / (k * c as f64)
                        }
                    })
                    .collect(),
            ))
        }
        ClassWeights::Explicit(w) if w.len() == counts.len() => Ok(Some(w.clone())),
        ClassWeights::Explicit(w) => Err(Error::usage(format!(
            "train.class_weights has {} values but the dataset has {} classes",
            w.len(),
            counts.len()
        ))
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Focal loss by hand: logits [2, 0], true class 0: p = e^2 / (e^2 + 1) = 0.880797,
    /// FL = -(1 - p)^2 ln p = 0.0018035; with gamma 0 it is the cross-entropy, -ln p = 0.126928.
    #[test]
    fn focal_loss_matches_hand_computation() {
        let logits = Tensor::from_slice(&[2.0f32, 0.0]).view([1, 2]);
        let ys = Tensor::from_slice(&[0i64]);
        let mut tc = TrainConfig {
            loss: LossKind::Focal,
            focal_gamma: 2.0,
            ..TrainConfig::default()
        };
        let fl = training_loss(&logits, &ys, None, &tc)
            .unwrap()
            .double_value(&[]);
        assert!((fl - 0.0018035).abs() < 1e-6, "{fl}");
        tc.focal_gamma = 0.0;
        let ce = training_loss(&logits, &ys, None, &tc)
            .unwrap()
            .double_value(&[]);
        assert!((ce - 0.126928).abs() < 1e-5, "{ce}");
    }

    /// The masked loss by hand: logits [0, 2], targets [1, masked]: only ln(1 + e^0) = 0.693147
    /// counts, and a pos_weight of 3 on the first label triples it.
    #[test]
    fn masked_entries_do_not_count_in_the_multilabel_loss() {
        let logits = Tensor::from_slice(&[0.0f32, 2.0]).view([1, 2]);
        let tc = TrainConfig::default();
        let t = Tensor::from_slice(&[1.0f32, -1.0]).view([1, 2]);
        let l = multilabel_loss(&logits, &t, None, &tc).double_value(&[]);
        assert!((l - std::f64::consts::LN_2).abs() < 1e-6, "{l}");
        let w = Tensor::from_slice(&[3.0f32, 1.0]);
        let l = multilabel_loss(&logits, &t, Some(&w), &tc).double_value(&[]);
        assert!((l - 3.0 * std::f64::consts::LN_2).abs() < 1e-5, "{l}");
        // Unmasked, both entries count: (ln 2 + ln(1 + e^-2)) / 2 with target [1, 1].
        let t = Tensor::from_slice(&[1.0f32, 1.0]).view([1, 2]);
        let l = multilabel_loss(&logits, &t, None, &tc).double_value(&[]);
        let want = (std::f64::consts::LN_2 + (1.0 + (-2.0f64).exp()).ln()) / 2.0;
        assert!((l - want).abs() < 1e-6, "{l} vs {want}");
    }

    /// Under `data.uncertain = "ignore"` an uncertain label cannot move the loss: flipping it
    /// (read as 1, then as 0: U-Ones against U-Zeros) changes the loss, and under ignore both
    /// readings give one loss, whatever the network says on those entries.
    #[test]
    fn flipping_uncertain_labels_does_not_change_the_loss_under_ignore() {
        use crate::config::{BlankPolicy, UncertainPolicy};
        use crate::data::multilabel::{target, LabelValue};
        const POSITIVE: LabelValue = LabelValue::Positive;
        const NEGATIVE: LabelValue = LabelValue::Negative;
        const UNCERTAIN: LabelValue = LabelValue::Uncertain;
        let raw = [
            [POSITIVE, UNCERTAIN, NEGATIVE],
            [UNCERTAIN, NEGATIVE, POSITIVE],
            [NEGATIVE, UNCERTAIN, UNCERTAIN],
        ];
        let logits =
            Tensor::from_slice(&[0.3f32, -1.2, 2.0, 0.7, -0.4, 1.1, -2.0, 0.9, 0.2]).view([3, 3]);
        let tc = TrainConfig::default();
        let loss = |policy: UncertainPolicy, logits: &Tensor| {
            let t: Vec<f32> = raw
                .iter()
                .flatten()
                .map(|&v| target(v, policy, BlankPolicy::Zeros))
                .collect();
            let t = Tensor::from_slice(&t).view([3, 3]);
            multilabel_loss(logits, &t, None, &tc).double_value(&[])
        };
        let ones = loss(UncertainPolicy::Ones, &logits);
        let zeros = loss(UncertainPolicy::Zeros, &logits);
        assert!((ones - zeros).abs() > 0.01, "{ones} vs {zeros}");
        let ignore = loss(UncertainPolicy::Ignore, &logits);
        // The uncertain entries' logits turned around: the ignore loss does not move.
        let mask: Vec<f32> = raw
            .iter()
            .flatten()
            .map(|&v| if v == UNCERTAIN { -1.0 } else { 1.0 })
            .collect();
        let flipped = &logits * Tensor::from_slice(&mask).view([3, 3]);
        assert!((loss(UncertainPolicy::Ignore, &flipped) - ignore).abs() < 1e-7);
        // The certain entries alone, by hand: 5 of 9 count.
        let certain: Vec<f64> = raw
            .iter()
            .flatten()
            .zip(Vec::<f32>::try_from(logits.view([-1])).unwrap())
            .filter(|(v, _)| **v != UNCERTAIN)
            .map(|(v, z)| {
                let p = 1.0 / (1.0 + (-(z as f64)).exp());
                if *v == POSITIVE {
                    -p.ln()
                } else {
                    -(1.0 - p).ln()
                }
            })
            .collect();
        let by_hand = certain.iter().sum::<f64>() / certain.len() as f64;
        assert!((ignore - by_hand).abs() < 1e-6, "{ignore} vs {by_hand}");
    }

    /// Binary focal loss and smoothing by hand on one entry, logit 0 (p = 0.5), target 1:
    /// BCE ln 2; focal with gamma 2 is (1 - 0.5)^2 ln 2; smoothing 0.2 pulls the target to 0.9,
    /// which at p = 0.5 leaves the loss at ln 2.
    #[test]
    fn multilabel_focal_and_smoothing_by_hand() {
        let logits = Tensor::from_slice(&[0.0f32, 1.0]).view([1, 2]);
        let t = Tensor::from_slice(&[1.0f32, -1.0]).view([1, 2]);
        let ln2 = std::f64::consts::LN_2;
        let focal = TrainConfig {
            loss: LossKind::Focal,
            focal_gamma: 2.0,
            ..TrainConfig::default()
        };
        let l = multilabel_loss(&logits, &t, None, &focal).double_value(&[]);
        assert!((l - 0.25 * ln2).abs() < 1e-6, "{l}");
        let smooth = TrainConfig {
            label_smoothing: 0.2,
            ..TrainConfig::default()
        };
        let l = multilabel_loss(&logits, &t, None, &smooth).double_value(&[]);
        assert!((l - ln2).abs() < 1e-6, "{l}");
        // At logit 2 smoothing costs: -(0.9 ln s(2) + 0.1 ln s(-2)).
        let z = Tensor::from_slice(&[2.0f32]).view([1, 1]);
        let one = Tensor::from_slice(&[1.0f32]).view([1, 1]);
        let l = multilabel_loss(&z, &one, None, &smooth).double_value(&[]);
        let s = |x: f64| 1.0 / (1.0 + (-x).exp());
        let want = -(0.9 * s(2.0).ln() + 0.1 * s(-2.0).ln());
        assert!((l - want).abs() < 1e-6, "{l} vs {want}");
    }

    #[test]
    fn balanced_pos_weights_are_negatives_over_positives() {
        // Label 0: 1 positive, 2 negatives, 1 masked; label 1: 3 positives, 1 negative.
        let t = [1.0f32, 1.0, 0.0, 1.0, 0.0, 1.0, -1.0, 0.0];
        let w = pos_weights(&ClassWeights::Keyword(ClassWeightKeyword::Balanced), &t, 2)
            .unwrap()
            .unwrap();
        assert_eq!(w, vec![2.0, 1.0 / 3.0]);
    }

    /// Weighted focal loss averages with the weights, as torch's weighted cross-entropy does.
    #[test]
    fn focal_loss_weights_average_like_cross_entropy() {
        let logits = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0, 0.5, 0.5]).view([3, 2]);
        let ys = Tensor::from_slice(&[0i64, 0, 1]);
        let w = Tensor::from_slice(&[1.0f32, 3.0]);
        let tc = TrainConfig {
            loss: LossKind::Focal,
            focal_gamma: 0.0,
            ..TrainConfig::default()
        };
        let fl = training_loss(&logits, &ys, Some(&w), &tc)
            .unwrap()
            .double_value(&[]);
        let ce = training_loss(&logits, &ys, Some(&w), &TrainConfig::default())
            .unwrap()
            .double_value(&[]);
        assert!((fl - ce).abs() < 1e-6, "{fl} vs {ce}");
    }

    #[test]
    fn balanced_class_weights_follow_sklearn() {
        // sklearn.utils.class_weight.compute_class_weight("balanced", classes=[0,1], y) with
        // 30 of class 0 and 10 of class 1: n / (k * count) = 40/60, 40/20.
        let w = class_weights(
            &ClassWeights::Keyword(ClassWeightKeyword::Balanced),
            &[30, 10],
        )
        .unwrap()
        .unwrap();
        assert!((w[0] - 2.0 / 3.0).abs() < 1e-12 && (w[1] - 2.0).abs() < 1e-12);
    }
}
