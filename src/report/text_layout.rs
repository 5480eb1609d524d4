//! Text in pictures: measured with the embedded font, wrapped to a width, never cut. Class names
//! such as "Poison Ivy Photos and other Contact Dermatitis" are drawn in full; the layouts that
//! place them return their label boxes so that tests can check that none overlap.

use plotters::style::{FontDesc, IntoFont};

use super::plots::register_fonts;

/// The font of every picture at `px` pixels.
pub fn font(px: u32) -> FontDesc<'static> {
    register_fonts();
    ("sans-serif", px).into_font()
}

/// Width in pixels of `text` drawn at `px` (advance widths with kerning, as plotters lays it
/// out); an estimate of 0.6 em a character if the font cannot measure it.
pub fn text_width(text: &str, px: u32) -> u32 {
    font(px)
        .box_size(text)
        .map(|(w, _)| w)
        .unwrap_or_else(|_| (text.chars().count() as f64 * px as f64 * 0.6).ceil() as u32)
}

/// The distance between the tops of two wrapped lines at `px`.
pub fn line_height(px: u32) -> u32 {
    (px as f64 * 1.25).ceil() as u32
}

/// `text` broken into lines no wider than `max_width` at `px`: at spaces where possible, inside
/// a word (a file name, a long token) only where the word alone is too wide. Every character
/// of `text` but the breaking spaces is kept.
pub fn wrap(text: &str, px: u32, max_width: u32) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let candidate = if line.is_empty() {
            word.to_string()
        } else {
            format!("{line} {word}")
        };
        if text_width(&candidate, px) <= max_width {
            line = candidate;
            continue;
        }
        if !line.is_empty() {
            lines.push(std::mem::take(&mut line));
        }
        // The word on a line of its own, broken by characters if it is still too wide.
        for ch in word.chars() {
            let mut next = line.clone();
            next.push(ch);
            if !line.is_empty() && text_width(&next, px) > max_width {
                lines.push(std::mem::replace(&mut line, ch.to_string()));
            } else {
                line = next;
            }
        }
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// The width of the widest of `lines` at `px`.
pub fn widest(lines: &[String], px: u32) -> u32 {
    lines.iter().map(|l| text_width(l, px)).max().unwrap_or(0)
}

/// The largest size from `max_px` down to `min_px` at which every one of `texts` is at most
/// `max_width` wide (`min_px` when none is).
pub fn fit_size<S: AsRef<str>>(texts: &[S], max_width: u32, max_px: u32, min_px: u32) -> u32 {
    (min_px..=max_px)
        .rev()
        .find(|&px| {
            texts
                .iter()
                .all(|t| text_width(t.as_ref(), px) <= max_width)
        })
        .unwrap_or(min_px)
}

/// A box in picture pixels: left, top, width, height.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// Left edge.
    pub x: i32,
    /// Top edge.
    pub y: i32,
    /// Width.
    pub w: i32,
    /// Height.
    pub h: i32,
}

impl Rect {
    /// The box of a line of text whose anchor (plotters' top left) is `(x, y)`: glyphs reach a
    /// quarter of the size above the anchor (accents, capitals) and most of it below.
    pub fn of_line(x: i32, y: i32, width: u32, px: u32) -> Rect {
        let px = px as i32;
        Rect {
            x,
            y: y - px / 4,
            w: width as i32,
            h: px + px / 4,
        }
    }

    /// Whether the two boxes share any pixel.
    pub fn intersects(&self, o: &Rect) -> bool {
        self.x < o.x + o.w && o.x < self.x + self.w && self.y < o.y + o.h && o.y < self.y + self.h
    }

    /// Whether the box lies inside a `width` x `height` picture.
    pub fn inside(&self, width: u32, height: u32) -> bool {
        self.x >= 0
            && self.y >= 0
            && self.x + self.w <= width as i32
            && self.y + self.h <= height as i32
    }
}

/// A placed label: its text and its box.
#[derive(Debug, Clone)]
pub struct Label {
    /// What is written.
    pub text: String,
    /// Where.
    pub rect: Rect,
}

/// The first pair of labels whose boxes overlap, or the first label outside a `width` x
/// `height` picture (paired with itself): what a legible picture has none of.
pub fn first_collision(labels: &[Label], width: u32, height: u32) -> Option<(usize, usize)> {
    for (i, a) in labels.iter().enumerate() {
        if !a.rect.inside(width, height) {
            return Some((i, i));
        }
        for (j, b) in labels.iter().enumerate().skip(i + 1) {
            if a.rect.intersects(&b.rect) {
                return Some((i, j));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_keeps_every_word_and_respects_the_width() {
        let name = "Poison Ivy Photos and other Contact Dermatitis";
        let lines = wrap(name, 13, 150);
        assert!(lines.len() >= 2, "{lines:?}");
        assert_eq!(lines.join(" "), name);
        for l in &lines {
            assert!(text_width(l, 13) <= 150, "{l:?} is {}", text_width(l, 13));
        }
        assert_eq!(wrap("NORMAL", 13, 300), vec!["NORMAL".to_string()]);
        assert_eq!(wrap("", 13, 300), vec![String::new()]);
    }

    #[test]
    fn a_word_wider_than_the_line_is_broken_not_cut() {
        let file = "IM-0001-0001_very_long_file_name_without_spaces.jpeg";
        let lines = wrap(file, 13, 90);
        assert!(lines.len() >= 3, "{lines:?}");
        assert_eq!(lines.concat(), file);
        assert!(lines.iter().all(|l| text_width(l, 13) <= 90));
    }

    #[test]
    fn widths_grow_with_text_and_size() {
        assert!(text_width("abc", 12) < text_width("abcdef", 12));
        assert!(text_width("abc", 12) < text_width("abc", 24));
        assert_eq!(text_width("", 12), 0);
        let px = fit_size(
            &["Light Diseases and Disorders of Pigmentation"],
            200,
            18,
            6,
        );
        assert!(text_width("Light Diseases and Disorders of Pigmentation", px) <= 200);
        assert!(px < 18);
    }

    #[test]
    fn collisions_are_found() {
        let a = Label {
            text: "a".into(),
            rect: Rect {
                x: 0,
                y: 0,
                w: 10,
                h: 10,
            },
        };
        let b = Label {
            text: "b".into(),
            rect: Rect {
                x: 10,
                y: 0,
                w: 10,
                h: 10,
            },
        };
        assert_eq!(first_collision(&[a.clone(), b.clone()], 20, 10), None);
        let c = Label {
            text: "c".into(),
            rect: Rect {
                x: 9,
                y: 9,
                w: 5,
                h: 5,
            },
        };
        assert_eq!(first_collision(&[a.clone(), b, c], 30, 30), Some((0, 2)));
        assert_eq!(first_collision(&[a], 5, 5), Some((0, 0)));
    }
}
