//! `report.md`: the sections as Markdown tables, the pictures linked by file name.

use super::tables::{sections, subtitle, title, ClassOrder, Table};
use super::{Exporter, Figure};
use crate::evaluate::EvalReport;

/// The Markdown exporter.
pub struct Markdown;

impl Exporter for Markdown {
    fn file_name(&self) -> &'static str {
        "report.md"
    }

    fn render(&self, report: &EvalReport, figures: &[Figure], order: ClassOrder) -> String {
        markdown(report, figures, order)
    }
}

/// Escapes a cell of a Markdown table.
fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// `table` as a Markdown table, cells escaped; with `numbers_right`, every column but the first
/// is right-aligned.
pub(super) fn markdown_table(table: &Table, numbers_right: bool) -> String {
    let line = |cells: &[String]| {
        let cells: Vec<String> = cells.iter().map(|c| md_cell(c)).collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let mut s = line(&table.header);
    s.push('|');
    for i in 0..table.header.len() {
        s.push_str(if numbers_right && i > 0 {
            "---:|"
        } else {
            "---|"
        });
    }
    s.push('\n');
    for row in &table.rows {
        s.push_str(&line(row));
    }
    s
}

/// `report.md`: the sections as Markdown tables, the pictures linked by file name.
fn markdown(r: &EvalReport, figures: &[Figure], order: ClassOrder) -> String {
    let mut s = format!("# {}\n\n{}\n", title(r), subtitle(r));
    for (heading, table) in sections(r, order) {
        s.push_str(&format!("\n## {heading}\n\n"));
        s.push_str(&markdown_table(&table, false));
    }
    for f in figures {
        s.push_str(&format!("\n## {}\n\n![{}]({})\n", f.title, f.title, f.file));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_in_cells_are_escaped() {
        assert_eq!(md_cell("a|b"), "a\\|b");
    }
}
