//! Checks of heatmaps against a known answer: the pointing game and the energy inside synth's
//! opacity boxes, and the model-randomisation sanity check (Adebayo et al. 2018).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::data::synth::OpacityBox;
use crate::error::Error;

/// The rows of `DATA_DIR/boxes.csv`: each row's path (joined to DATA_DIR), the cells between
/// it and the box, and the box in the last four cells (x0, y0, x1, y1).
fn box_rows(data_dir: &Path, needs: &str) -> Result<Vec<(PathBuf, Vec<String>, OpacityBox)>> {
    let path = data_dir.join("boxes.csv");
    if !path.is_file() {
        return Err(Error::usage(format!(
            "{}: no boxes.csv; --check needs a dataset written by `{needs}`",
            data_dir.display()
        ))
        .into());
    }
    let mut reader =
        csv::Reader::from_path(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rows = Vec::new();
    for (line, row) in reader.records().enumerate() {
        let row = row.with_context(|| format!("{}: line {}", path.display(), line + 2))?;
        let bad = || anyhow::anyhow!("{}: line {}: bad box", path.display(), line + 2);
        let n = row.len();
        if n < 5 {
            return Err(bad());
        }
        let num = |i: usize| -> Result<u32> {
            row.get(i)
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(bad)
        };
        let b = OpacityBox {
            x0: num(n - 4)?,
            y0: num(n - 3)?,
            x1: num(n - 2)?,
            y1: num(n - 1)?,
        };
        let middle = (1..n - 4).map(|i| row[i].to_string()).collect();
        rows.push((data_dir.join(&row[0]), middle, b));
    }
    Ok(rows)
}

/// Reads `DATA_DIR/boxes.csv` (path relative to DATA_DIR, x0, y0, x1, y1).
pub fn read_boxes(data_dir: &Path) -> Result<HashMap<PathBuf, OpacityBox>> {
    Ok(box_rows(data_dir, "xray synth")?
        .into_iter()
        .map(|(p, _, b)| (p, b))
        .collect())
}

/// Reads the `boxes.csv` of `xray synth --multilabel` (path, finding, x0, y0, x1, y1): each
/// image's boxes by finding.
pub fn read_finding_boxes(data_dir: &Path) -> Result<HashMap<PathBuf, Vec<(String, OpacityBox)>>> {
    let mut boxes: HashMap<PathBuf, Vec<(String, OpacityBox)>> = HashMap::new();
    for (p, middle, b) in box_rows(data_dir, "xray synth --multilabel")? {
        let finding = middle.into_iter().next().unwrap_or_default();
        boxes.entry(p).or_default().push((finding, b));
    }
    Ok(boxes)
}

/// The box grown by `fraction` of its width and height, half on each side.
pub fn grow(b: &OpacityBox, fraction: f32) -> (f32, f32, f32, f32) {
    let (w, h) = ((b.x1 - b.x0) as f32, (b.y1 - b.y0) as f32);
    let (dx, dy) = (w * fraction / 2.0, h * fraction / 2.0);
    (
        b.x0 as f32 - dx,
        b.y0 as f32 - dy,
        b.x1 as f32 + dx,
        b.y1 as f32 + dy,
    )
}

/// The pointing game (Zhang et al. 2016): is the heatmap's peak (`width` wide, row-major)
/// inside the box grown by 10%? `None` for an all-zero map (no peak).
pub fn points_inside(heat: &[f32], width: usize, b: &OpacityBox) -> Option<bool> {
    let (i, &max) = heat.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))?;
    if max <= 0.0 {
        return None;
    }
    let (x, y) = ((i % width) as f32 + 0.5, (i / width) as f32 + 0.5);
    let (x0, y0, x1, y1) = grow(b, 0.10);
    Some(x >= x0 && x < x1 && y >= y0 && y < y1)
}

/// The share of the heatmap's total inside the box; `None` for an all-zero map.
pub fn energy_inside(heat: &[f32], width: usize, b: &OpacityBox) -> Option<f64> {
    let total: f64 = heat.iter().map(|&v| v.max(0.0) as f64).sum();
    if total <= 0.0 {
        return None;
    }
    let inside: f64 = (b.y0 as usize..b.y1 as usize)
        .flat_map(|y| (b.x0 as usize..b.x1 as usize).map(move |x| y * width + x))
        .filter_map(|i| heat.get(i))
        .map(|&v| v.max(0.0) as f64)
        .sum();
    Some(inside / total)
}

/// Ranks with ties given their average rank (1-based).
fn ranks(values: &[f32]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut out = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = rank;
        }
        i = j + 1;
    }
    out
}

/// Spearman's rank correlation (Pearson's on average ranks, as scipy.stats.spearmanr); `None`
/// when either side is constant.
pub fn spearman(a: &[f32], b: &[f32]) -> Option<f64> {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - ma) * (y - mb);
        va += (x - ma).powi(2);
        vb += (y - mb).powi(2);
    }
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// scipy.stats.spearmanr([1, 2, 2, 5, 0], [3, 1, 4, 4, 0]).statistic = 0.7631578947368421 (= 7.25 / 9.5 by hand)
    #[test]
    fn spearman_matches_scipy_with_ties() {
        let r = spearman(&[1.0, 2.0, 2.0, 5.0, 0.0], &[3.0, 1.0, 4.0, 4.0, 0.0]).unwrap();
        assert!((r - 0.7631578947368421).abs() < 1e-12, "{r}");
        assert_eq!(spearman(&[1.0, 1.0], &[0.0, 2.0]), None);
    }

    #[test]
    fn pointing_game_and_energy() {
        let b = OpacityBox {
            x0: 2,
            y0: 2,
            x1: 4,
            y1: 4,
        };
        let mut heat = vec![0f32; 36];
        heat[3 * 6 + 3] = 1.0;
        heat[0] = 0.5;
        assert_eq!(points_inside(&heat, 6, &b), Some(true));
        assert!((energy_inside(&heat, 6, &b).unwrap() - 1.0 / 1.5).abs() < 1e-9);
        heat[0] = 2.0;
        assert_eq!(points_inside(&heat, 6, &b), Some(false));
        assert_eq!(points_inside(&[0.0; 4], 2, &b), None);
    }
}
