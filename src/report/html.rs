//! `report.html`: one self-contained page, the pictures inlined as data URIs; and the HTML
//! escaping every page of xray uses.

use base64::Engine;

use super::tables::{sections, subtitle, title, ClassOrder, Table};
use super::{Exporter, Figure};
use crate::evaluate::EvalReport;

/// The HTML exporter.
pub struct Html;

impl Exporter for Html {
    fn file_name(&self) -> &'static str {
        "report.html"
    }

    fn render(&self, report: &EvalReport, figures: &[Figure], order: ClassOrder) -> String {
        html(report, figures, order)
    }
}

/// Escapes text for HTML (element content and quoted attributes).
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The report page's style sheet.
const STYLE: &str = include_str!("templates/report.css");

/// The start of a self-contained page: head with the report style sheet, `title` as heading,
/// `note` under it.
pub(super) fn page_start(title: &str, note: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{t}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{t}</h1>\n\
         <p class=\"note\">{}</p>\n",
        escape_html(note),
        t = escape_html(title),
    )
}

/// `table` in a horizontally scrolling box; names (the first column and a "class" column)
/// read from the left, numbers line up on the right; `kind` is the table's CSS class, if any.
pub(super) fn html_table(table: &Table, kind: Option<&str>) -> String {
    let text_col: Vec<bool> = table
        .header
        .iter()
        .enumerate()
        .map(|(i, h)| i == 0 || h == "class")
        .collect();
    let cell = |tag: &str, i: usize, c: &str| {
        let class = if text_col.get(i).copied().unwrap_or(false) {
            " class=\"name\""
        } else {
            ""
        };
        format!("<{tag}{class}>{}</{tag}>", escape_html(c))
    };
    let kind = kind.map_or(String::new(), |k| format!(" class=\"{k}\""));
    let mut s = format!("<div class=\"scroll\"><table{kind}>\n<tr>");
    for (i, h) in table.header.iter().enumerate() {
        s.push_str(&cell("th", i, h));
    }
    s.push_str("</tr>\n");
    for row in &table.rows {
        s.push_str("<tr>");
        for (i, c) in row.iter().enumerate() {
            s.push_str(&cell("td", i, c));
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table></div>\n");
    s
}

/// A picture inlined as a data URI under its title; square plots sit side by side, the wide
/// ones (two panels, galleries) on their own row.
pub(super) fn html_figure(f: &Figure) -> String {
    let data = base64::engine::general_purpose::STANDARD.encode(&f.png);
    let class = if f.wide { " class=\"wide\"" } else { "" };
    format!(
        "<figure{class}><figcaption>{}</figcaption>\
         <img alt=\"{}\" src=\"data:image/png;base64,{data}\"></figure>\n",
        escape_html(&f.title),
        escape_html(&f.title)
    )
}

/// `report.html`: one page with no outside references, the pictures inlined as data URIs.
fn html(r: &EvalReport, figures: &[Figure], order: ClassOrder) -> String {
    let mut s = page_start(&title(r), &subtitle(r));
    for (heading, table) in sections(r, order) {
        let kind = heading.starts_with("Confusion").then_some("confusion");
        s.push_str(&format!("<h2>{}</h2>\n", escape_html(heading)));
        s.push_str(&html_table(&table, kind));
    }
    s.push_str("<h2>Pictures</h2>\n");
    for f in figures {
        s.push_str(&html_figure(f));
    }
    s.push_str(
        "<p class=\"note\">Written by xray. Research use, not a diagnosis.</p>\n</body>\n</html>\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_class_names() {
        assert_eq!(escape_html("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
    }
}
