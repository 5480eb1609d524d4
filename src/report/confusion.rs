//! `confusion.png`: counts and row-normalised shares, rows = true class, columns = predicted,
//! cells shaded by the row share. Legible from 2 to a few dozen classes: class names are drawn
//! in full (rows wrapped beside the matrix, columns horizontal while they fit their cell and
//! rotated otherwise), cell text is sized to the cell, the picture grows with the class count,
//! the two panels sit side by side while they are narrow and one above the other when not, and
//! a class with no images is marked as such instead of showing an unexplained empty row.
//!
//! Rotated names rather than numbered columns with a key: a name is read where it stands, where
//! a key sends the eye back and forth for every cell. (The HTML and terminal tables, which
//! cannot rotate text, number their columns instead.)

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::plots::{plot_err, render_png};
use super::text_layout::{
    first_collision, font, line_height, text_width, widest, wrap, Label, Rect,
};

/// Size of class names.
const LABEL_PX: u32 = 13;
/// Size of the panel titles.
const TITLE_PX: u32 = 16;
/// Widest row label before it wraps.
const MAX_ROW_LABEL: u32 = 340;
/// Widest picture with the panels side by side.
const MAX_SIDE_BY_SIDE: i32 = 1300;
/// Space around the panels and between a label and the matrix.
const PAD: i32 = 10;

/// How a row reads when its class has no images.
pub const NO_IMAGES: &str = "(no images)";

/// Where everything of `confusion.png` goes; computed before drawing so that it can be tested.
#[derive(Debug)]
pub struct ConfusionLayout {
    /// Picture width.
    pub width: u32,
    /// Picture height.
    pub height: u32,
    /// Side of a cell.
    pub cell: i32,
    /// Size of the numbers in the cells.
    pub cell_px: u32,
    /// Whether column names are rotated (read bottom to top).
    pub rotated: bool,
    /// Top-left corner of each panel's matrix: counts, then shares.
    matrix: [(i32, i32); 2],
    /// Per row: its label's lines.
    row_lines: Vec<Vec<String>>,
    /// Per column: its label's lines.
    col_lines: Vec<Vec<String>>,
    /// Height of the column-label area.
    col_h: i32,
    /// Every piece of text with its box, for drawing and for overlap tests.
    texts: Vec<Placed>,
}

/// A piece of text placed: its label (text and box), its anchor, size, and how it is drawn.
#[derive(Debug)]
struct Placed {
    label: Label,
    /// plotters' anchor point.
    at: (i32, i32),
    px: u32,
    /// Rotated by 270 degrees (a column name read bottom to top).
    rotated: bool,
    /// White on a dark cell.
    white: bool,
}

/// The two panels' titles.
const TITLES: [&str; 2] = [
    "counts (rows = true class)",
    "row-normalised shares (rows = true class)",
];

impl ConfusionLayout {
    /// Lays out a confusion matrix of `classes` with counts `cm` (rows = true).
    pub fn new(classes: &[String], cm: &[Vec<usize>]) -> ConfusionLayout {
        // Long on purpose: the layout's measures, each derived from the ones before it.
        let k = classes.len().max(1);
        let lh = line_height(LABEL_PX) as i32;
        let support: Vec<usize> = (0..k)
            .map(|r| cm.get(r).map_or(0, |row| row.iter().sum()))
            .collect();
        let row_lines: Vec<Vec<String>> = classes
            .iter()
            .zip(&support)
            .map(|(c, &n)| {
                let text = if n == 0 {
                    format!("{c} {NO_IMAGES}")
                } else {
                    c.clone()
                };
                wrap(&text, LABEL_PX, MAX_ROW_LABEL)
            })
            .collect();
        let row_w = row_lines
            .iter()
            .map(|l| widest(l, LABEL_PX))
            .max()
            .unwrap_or(0) as i32;
        let most_row_lines = row_lines.iter().map(Vec::len).max().unwrap_or(1) as i32;
        let mut cell = (480 / k as i32).clamp(30, 120).max(most_row_lines * lh + 4);

        // Columns: horizontal while every word fits its cell within three lines, else rotated.
        let horizontal: Vec<Vec<String>> = classes
            .iter()
            .map(|c| wrap(c, LABEL_PX, (cell - 6).max(1) as u32))
            .collect();
        let words_fit = classes.iter().all(|c| {
            c.split_whitespace()
                .all(|w| text_width(w, LABEL_PX) as i32 <= cell - 6)
        });
        let rotated = !(words_fit && horizontal.iter().all(|l| l.len() <= 3));
        let col_lines: Vec<Vec<String>> = if rotated {
            classes
                .iter()
                .map(|c| wrap(c, LABEL_PX, MAX_ROW_LABEL))
                .collect()
        } else {
            horizontal
        };
        let most_col_lines = col_lines.iter().map(Vec::len).max().unwrap_or(1) as i32;
        let col_h = if rotated {
            cell = cell.max(most_col_lines * lh + 4);
            col_lines
                .iter()
                .map(|l| widest(l, LABEL_PX))
                .max()
                .unwrap_or(0) as i32
        } else {
            most_col_lines * lh
        };

        let title_h = line_height(TITLE_PX) as i32 + PAD;
        let axis_h = lh + PAD;
        let title_w = TITLES
            .iter()
            .map(|t| text_width(t, TITLE_PX))
            .max()
            .unwrap_or(0) as i32;
        let left = PAD + row_w + PAD;
        let panel_w = (left + k as i32 * cell + PAD).max(PAD + title_w + PAD);
        let panel_h = title_h + k as i32 * cell + PAD + col_h + PAD + axis_h;
        let side_by_side = 2 * panel_w <= MAX_SIDE_BY_SIDE;
        let origins = if side_by_side {
            [(0, 0), (panel_w, 0)]
        } else {
            [(0, 0), (0, panel_h)]
        };
        let (width, height) = if side_by_side {
            (2 * panel_w, panel_h)
        } else {
            (panel_w, 2 * panel_h)
        };
        let matrix = origins.map(|(x, y)| (x + left, y + PAD + title_h));

        let counts: Vec<String> = cm.iter().flatten().map(|n| n.to_string()).collect();
        let cell_px = super::text_layout::fit_size(
            &[counts.as_slice(), &["0.00".to_string()]].concat(),
            (cell - 6) as u32,
            ((cell / 3 + 2) as u32).clamp(8, 18),
            7,
        );

        let mut layout = ConfusionLayout {
            width: width as u32,
            height: height as u32,
            cell,
            cell_px,
            rotated,
            matrix,
            row_lines,
            col_lines,
            col_h,
            texts: Vec::new(),
        };
        layout.texts = layout.place_texts(cm, &support, origins);
        layout
    }

    /// Every piece of text: what, where, how.
    fn place_texts(
        &self,
        cm: &[Vec<usize>],
        support: &[usize],
        origins: [(i32, i32); 2],
    ) -> Vec<Placed> {
        // Long on purpose: drawing code: each label placed from the layout's measures, in drawing
        // order.
        let lh = line_height(LABEL_PX) as i32;
        let k = self.row_lines.len() as i32;
        let mut texts = Vec::new();
        let line = |texts: &mut Vec<Placed>, text: &str, at: (i32, i32), px: u32, white: bool| {
            texts.push(Placed {
                label: Label {
                    text: text.to_string(),
                    rect: Rect::of_line(at.0, at.1, text_width(text, px), px),
                },
                at,
                px,
                rotated: false,
                white,
            })
        };
        for (panel, &(mx, my)) in self.matrix.iter().enumerate() {
            let (ox, oy) = origins[panel];
            line(
                &mut texts,
                TITLES[panel],
                (ox + PAD, oy + PAD),
                TITLE_PX,
                false,
            );
            for (r, lines) in self.row_lines.iter().enumerate() {
                let block = lines.len() as i32 * lh;
                let cy = my + r as i32 * self.cell + self.cell / 2;
                for (i, l) in lines.iter().enumerate() {
                    let w = text_width(l, LABEL_PX) as i32;
                    let y = cy - block / 2 + i as i32 * lh + LABEL_PX as i32 / 4;
                    line(&mut texts, l, (mx - PAD - w, y), LABEL_PX, false);
                }
            }
            let bottom = my + k * self.cell + PAD / 2;
            for (c, lines) in self.col_lines.iter().enumerate() {
                let cx = mx + c as i32 * self.cell + self.cell / 2;
                let block = lines.len() as i32 * lh;
                for (i, l) in lines.iter().enumerate() {
                    let w = text_width(l, LABEL_PX) as i32;
                    if self.rotated {
                        // Read bottom to top, its end at the matrix: plotters draws a text
                        // rotated by 270 degrees from its anchor downwards when anchored at
                        // its right end, glyphs reaching a quarter size left of the anchor.
                        let x = cx - block / 2 + i as i32 * lh;
                        texts.push(Placed {
                            label: Label {
                                text: l.clone(),
                                rect: Rect {
                                    x,
                                    y: bottom,
                                    w: lh,
                                    h: w,
                                },
                            },
                            at: (x + LABEL_PX as i32 / 4, bottom),
                            px: LABEL_PX,
                            rotated: true,
                            white: false,
                        });
                    } else {
                        let at = (cx - w / 2, bottom + i as i32 * lh + LABEL_PX as i32 / 4);
                        line(&mut texts, l, at, LABEL_PX, false);
                    }
                }
            }
            let axis_y = bottom + self.col_h + PAD;
            line(&mut texts, "predicted class", (mx, axis_y), LABEL_PX, false);
            for (r, row) in cm.iter().enumerate() {
                let total = support.get(r).copied().unwrap_or(0);
                if total == 0 {
                    continue;
                }
                for (c, &n) in row.iter().enumerate() {
                    let text = cell_text(n, total, panel == 1);
                    let w = text_width(&text, self.cell_px) as i32;
                    let x = mx + c as i32 * self.cell + (self.cell - w) / 2;
                    let y = my + r as i32 * self.cell + self.cell / 2 - self.cell_px as i32 / 2
                        + self.cell_px as i32 / 4;
                    let dark = n as f64 / total as f64 > 0.6;
                    line(&mut texts, &text, (x, y), self.cell_px, dark);
                }
            }
        }
        texts
    }

    /// Every piece of text with its box.
    pub fn labels(&self) -> Vec<Label> {
        self.texts.iter().map(|t| t.label.clone()).collect()
    }

    /// The first two labels that overlap (or one outside the picture, given twice): `None`
    /// when the picture is legible.
    pub fn collision(&self) -> Option<(Label, Label)> {
        let labels = self.labels();
        first_collision(&labels, self.width, self.height)
            .map(|(i, j)| (labels[i].clone(), labels[j].clone()))
    }
}

/// A cell's text: the count, or the row share to two decimals.
fn cell_text(n: usize, row_total: usize, share: bool) -> String {
    if share {
        format!("{:.2}", n as f64 / row_total.max(1) as f64)
    } else {
        n.to_string()
    }
}

/// Writes `confusion.png` for `classes` and counts `cm` (rows = true class).
pub fn confusion_matrix_png(path: &Path, classes: &[String], cm: &[Vec<usize>]) -> Result<()> {
    let layout = ConfusionLayout::new(classes, cm);
    let k = classes.len() as i32;
    let cell = layout.cell;
    render_png(path, layout.width, layout.height, |root| {
        // Cells first, then every label of the layout over them.
        for &(mx, my) in &layout.matrix {
            for r in 0..k as usize {
                let row = cm.get(r).cloned().unwrap_or_default();
                let total: usize = row.iter().sum();
                for c in 0..k as usize {
                    let n = row.get(c).copied().unwrap_or(0);
                    let (x, y) = (mx + c as i32 * cell, my + r as i32 * cell);
                    let fill = if total == 0 {
                        RGBColor(232, 232, 232)
                    } else {
                        let share = n as f64 / total as f64;
                        let shade = (255.0 * (1.0 - 0.8 * share)) as u8;
                        RGBColor(shade, shade, 255)
                    };
                    let corners = [(x, y), (x + cell, y + cell)];
                    root.draw(&Rectangle::new(corners, fill.filled()))
                        .map_err(plot_err)?;
                    root.draw(&Rectangle::new(corners, BLACK.mix(0.5).stroke_width(1)))
                        .map_err(plot_err)?;
                }
            }
        }
        for t in &layout.texts {
            if t.rotated {
                let style = TextStyle::from(font(t.px).transform(FontTransform::Rotate270))
                    .pos(Pos::new(HPos::Right, VPos::Top));
                root.draw(&Text::new(t.label.text.clone(), t.at, style))
                    .map_err(plot_err)?;
            } else {
                let color = if t.white { WHITE } else { BLACK };
                root.draw(&Text::new(
                    t.label.text.clone(),
                    t.at,
                    font(t.px).color(&color),
                ))
                .map_err(plot_err)?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// DermNet's 23 class names (long, with spaces, an ampersand and unicode), shared with the
    /// integration tests.
    pub(crate) fn dermnet_classes() -> Vec<String> {
        include_str!("../../tests/fixtures/dermnet_classes.txt")
            .lines()
            .map(String::from)
            .collect()
    }

    /// A 23-class matrix with counts up to four digits and one class without images.
    fn matrix(k: usize) -> Vec<Vec<usize>> {
        (0..k)
            .map(|r| {
                (0..k)
                    .map(|c| {
                        if r == 5 {
                            0
                        } else if r == c {
                            1000 + r
                        } else {
                            (r * 7 + c * 3) % 13
                        }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn twenty_three_long_names_fit_without_overlap() {
        let classes = dermnet_classes();
        let layout = ConfusionLayout::new(&classes, &matrix(23));
        assert!(layout.rotated, "23 long names cannot be horizontal");
        assert_eq!(layout.collision().map(|(a, b)| (a.text, b.text)), None);
        // Every class name is written in full (its lines joined give it back).
        let texts: Vec<String> = layout.labels().into_iter().map(|l| l.text).collect();
        let all = texts.join(" ");
        for c in &classes {
            for word in c.split_whitespace() {
                assert!(all.contains(word), "{word} of {c} is not drawn");
            }
        }
        assert!(texts.iter().any(|t| t.contains(NO_IMAGES)), "{texts:?}");
        // Four-digit counts fit their cells at a readable size.
        assert!(layout.cell_px >= 8, "cell text {} px", layout.cell_px);
        let p = std::env::temp_dir().join("xray-confusion23.png");
        confusion_matrix_png(&p, &classes, &matrix(23)).unwrap();
        let img = image::open(&p).unwrap();
        assert_eq!((img.width(), img.height()), (layout.width, layout.height));
    }

    #[test]
    fn two_short_classes_stay_side_by_side_and_horizontal() {
        let classes = vec!["NORMAL".to_string(), "PNEUMONIA".to_string()];
        let layout = ConfusionLayout::new(&classes, &[vec![200, 34], vec![8, 382]]);
        assert!(!layout.rotated);
        assert!(
            layout.width > layout.height,
            "{}x{}",
            layout.width,
            layout.height
        );
        assert_eq!(layout.collision().map(|(a, b)| (a.text, b.text)), None);
    }

    #[test]
    fn a_few_long_names_are_wrapped_or_rotated_never_cut() {
        let classes: Vec<String> = dermnet_classes().into_iter().take(4).collect();
        let cm = vec![vec![5, 1, 0, 0]; 4];
        let layout = ConfusionLayout::new(&classes, &cm);
        assert_eq!(layout.collision().map(|(a, b)| (a.text, b.text)), None);
        let drawn = layout
            .labels()
            .into_iter()
            .map(|l| l.text)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(drawn.contains("Malignant"), "{drawn}");
    }
}
