//! The floors of `src/lib.rs`'s table are true: every `crate::` path in a module's code (comments
//! and `#[cfg(test)]` modules aside) names a module on a lower floor, every module is on a floor,
//! and clap is used only by `cli` and `commands`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::common::repo;

/// The floors table of lib.rs: module name -> floor.
fn floors() -> BTreeMap<String, usize> {
    let lib = std::fs::read_to_string(repo().join("src/lib.rs")).unwrap();
    let mut floors = BTreeMap::new();
    for line in lib.lines() {
        let Some(row) = line.strip_prefix("//! | ") else {
            continue;
        };
        let mut cells = row.split(" | ");
        let Ok(floor) = cells.next().unwrap_or("").trim().parse::<usize>() else {
            continue;
        };
        for name in cells.next().unwrap_or("").split(", ") {
            let name = name.trim().trim_start_matches("[`").trim_end_matches("`]");
            floors.insert(name.to_string(), floor);
        }
    }
    floors
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A file's code: without comment lines and without its trailing `#[cfg(test)] mod tests`.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a piece of code names through `crate::`, including `crate::{a, b}`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find(';').unwrap_or(group.len())];
            let mut depth = 0;
            let mut start = 0;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        names.push(first_ident(&group[start..j]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        names.push(first_ident(&group[start..j]));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            names.push(first_ident(rest));
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

fn first_ident(s: &str) -> String {
    s.trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn every_module_uses_only_lower_floors() {
    let floors = floors();
    assert!(floors.len() > 10, "lib.rs has no floors table: {floors:?}");
    let src = repo().join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(name) = line.strip_prefix("pub mod ") {
            let name = name.trim_end_matches(';');
            assert!(floors.contains_key(name), "module {name} is on no floor");
        }
    }
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let top = top.trim_end_matches(".rs");
        let Some(&floor) = floors.get(top) else {
            continue; // lib.rs, main.rs
        };
        let code = code(file);
        for used in crate_paths(&code) {
            if used == top || used == "Error" {
                continue;
            }
            match floors.get(&used) {
                Some(&f) if f < floor => {}
                Some(&f) => wrong.push(format!(
                    "{} (floor {floor}) uses {used} (floor {f})",
                    rel.display()
                )),
                None => wrong.push(format!("{} uses {used}, on no floor", rel.display())),
            }
        }
        if !matches!(top, "cli" | "commands") && code.contains("clap") {
            wrong.push(format!(
                "{} uses clap outside cli and commands",
                rel.display()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn crate_paths_are_read_from_groups_too() {
    let code = "use crate::{a::B, c::{d, e}, f};\nlet x = crate::g::h();";
    assert_eq!(crate_paths(code), ["a", "c", "f", "g"]);
}
