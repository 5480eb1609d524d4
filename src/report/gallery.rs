//! `index.html` of `xray gradcam`: every explained image's overlays in a grid, with its file,
//! decision and probability. The pictures are referenced by file name (they sit beside it).

use super::html::escape_html as esc;

/// The gallery page's style sheet.
const STYLE: &str = include_str!("templates/gallery.css");

/// One image of the gallery.
#[derive(Debug, Clone)]
pub struct GalleryEntry<'a> {
    /// The input file, as shown under its pictures.
    pub path: String,
    /// The class explained.
    pub target: &'a str,
    /// Its probability.
    pub probability: f64,
    /// The model's decision.
    pub predicted: &'a str,
    /// Per method: its name and the overlay's file name.
    pub overlays: Vec<(&'a str, &'a str)>,
}

/// The page for run `run`, heatmaps blended at `alpha`.
pub fn gallery_html(run: &str, alpha: f32, entries: &[GalleryEntry<'_>]) -> String {
    let mut html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>xray gradcam: {run}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n\
         <h1>Heatmaps: {run}</h1>\n\
         <p>{} images. Jet colours over the image at alpha {alpha}; red is where the \
         method attributes most of the target class's score. Research use, not a \
         diagnosis.</p>\n",
        entries.len(),
        run = esc(run),
    );
    for e in entries {
        html.push_str("<div class=\"item\">");
        for (method, overlay_file) in &e.overlays {
            html.push_str(&format!(
                "<img src=\"{}\" alt=\"{}\" title=\"{}\">",
                esc(overlay_file),
                esc(method),
                esc(method)
            ));
        }
        html.push_str(&format!(
            "<div class=\"cap\">{}<br>target {} {:.1}%, predicted {}</div></div>\n",
            esc(&e.path),
            esc(e.target),
            100.0 * e.probability,
            esc(e.predicted)
        ));
    }
    html.push_str("</body>\n</html>\n");
    html
}
