//! The rendering layer: every picture, table and page xray writes. Computing happens elsewhere
//! (`evaluate`, `explain`, `train`); this module turns those values into files.
//!
//! | module | writes |
//! |---|---|
//! | [`plots`] | PNG plots (plotters, with an embedded font) |
//! | [`curves`] | `roc.png` and `pr.png`: overlaid, or one panel per class past eight |
//! | [`confusion`] | `confusion.png`, laid out for any number of classes |
//! | [`labels`] | measuring and wrapping text in pictures, label boxes for overlap tests |
//! | [`tables`] | the eval report's sections as tables of cells |
//! | [`text`], [`markdown`], [`html`] | the eval report for the terminal, `report.md`, `report.html` |
//! | [`eval_files`] | everything `xray eval` writes into its folder |
//! | [`gallery`] | the `index.html` of `xray gradcam` |
//! | [`serve_page`] | the upload page of `xray serve` |
//! | [`multilabel`] | `cooccurrence.png` of a multi-label split |
//! | [`split_pictures`] | `near_duplicates.png` of `xray split` |
//!
//! Page styles and the upload page live as files in `src/report/templates/`.

pub mod compare;
pub mod confusion;
pub mod curves;
pub mod eval_files;
pub mod gallery;
pub mod html;
pub mod markdown;
pub mod multilabel;
pub mod plots;
pub mod serve_page;
pub mod split_pictures;
pub mod tables;
pub mod text;
pub mod text_layout;

use crate::evaluate::EvalReport;
pub use tables::ClassOrder;

pub use eval_files::write_eval_report;
pub use html::escape_html;
pub use text::report_table;

/// One file format of the eval report (as hyperfine's exporters: one trait, a file each).
pub trait Exporter {
    /// The file written into the eval folder.
    fn file_name(&self) -> &'static str;
    /// The whole file, from the report and its pictures, per-class rows in `order`.
    fn render(&self, report: &EvalReport, figures: &[Figure], order: ClassOrder) -> String;
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
