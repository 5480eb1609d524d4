//! 23 classes with DermNet's long names (spaces, an ampersand, unicode), built from synth images
//! at test time: split, one epoch of training, eval, gradcam and the upload page all stay
//! legible: every picture is written, the pages have no text that overflows its box or overlaps
//! another, and the screenshots land in target/screenshots/ to be looked at.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::common::{read_json, smoke_train, split_dataset, synth_dataset, xray};
use crate::serve::Server;
use crate::webdriver::{screenshot_path, session};

/// DermNet's 23 class names as its folders spell them, one made harder (ampersand, dash,
/// unicode); the same list the picture layouts' unit tests use.
fn dermnet_classes() -> Vec<&'static str> {
    include_str!("fixtures/dermnet_classes.txt")
        .lines()
        .collect()
}

/// Synth images, `per_class` in each of the 23 folders, each class marked by a line at its own
/// height, so that a model can learn the classes and the confusion matrix
/// shows a real diagonal with real mistakes (neighbouring marks).
fn dermnet_fixture(dir: &Path, per_class: usize) -> PathBuf {
    let synth = synth_dataset(dir, (per_class * 23).div_ceil(2), 64);
    let mut images: Vec<PathBuf> = walk(&synth)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    images.sort();
    assert!(
        images.len() >= 23 * per_class,
        "{} synth images",
        images.len()
    );
    let data = dir.join("dermnet");
    for (i, class) in dermnet_classes().iter().enumerate() {
        let folder = data.join(class);
        std::fs::create_dir_all(&folder).unwrap();
        // A bright line across the image at its class's height (flips keep it in place; the
        // augmentation's shifts move it towards its neighbours' lines).
        let y0 = 2 + (i as u32 * 60) / 23;
        for (j, src) in images
            .iter()
            .skip(i * per_class)
            .take(per_class)
            .enumerate()
        {
            let mut img = image::open(src).unwrap().to_luma8();
            for y in y0..y0 + 2 {
                for x in 0..img.width() {
                    let p = img.get_pixel_mut(x, y);
                    p.0[0] = p.0[0].saturating_add(70);
                }
            }
            img.save(folder.join(format!("img{i:02}_{j:02}.png")))
                .unwrap();
        }
    }
    data
}

/// A knob of the test, from the environment (to make docs/studies.md's picture with a longer run).
fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
#[ignore = "needs Chromium and chromedriver (scripts/setup/chromium.sh); make test runs it"]
fn twenty_three_long_class_names_stay_legible() {
    let dir = tempfile::tempdir().unwrap();
    // XRAY_MANY_CLASSES_PER_CLASS=60 XRAY_MANY_CLASSES_EPOCHS=12 made docs/confusion23.png.
    let data = dermnet_fixture(dir.path(), knob("XRAY_MANY_CLASSES_PER_CLASS", 10));
    let split = dir.path().join("split");
    split_dataset(&data, &split);
    let report = read_json(&split.join("split_report.json"));
    let classes: Vec<&str> = report["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let mut want = dermnet_classes();
    want.sort();
    assert_eq!(classes, want, "class names come back exactly");
    for f in ["classes.png", "samples.png"] {
        assert!(split.join(f).is_file(), "{f}");
    }

    let run = dir.path().join("run");
    smoke_train(&split)
        .arg("--set")
        .arg(format!(
            "train.epochs={}",
            knob("XRAY_MANY_CLASSES_EPOCHS", 1)
        ))
        .arg("--out")
        .arg(&run)
        .assert()
        .success();
    let eval = dir.path().join("eval");
    let out = xray()
        .args(["eval", "--sort-classes", "f1", "--checkpoint"])
        .arg(&run)
        .arg("--out")
        .arg(&eval)
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    eprintln!("{stdout}");
    assert!(
        stdout.contains("classes numbered as above"),
        "the terminal confusion matrix uses numbers:\n{stdout}"
    );
    // No terminal line is stretched by a long name.
    let widest = stdout.lines().map(|l| l.chars().count()).max().unwrap();
    assert!(widest <= 120, "a {widest}-character line:\n{stdout}");
    for f in [
        "confusion.png",
        "roc.png",
        "pr.png",
        "errors.png",
        "report.html",
    ] {
        assert!(eval.join(f).is_file(), "{f}");
    }
    let confusion = image::open(eval.join("confusion.png")).unwrap();
    assert!(
        confusion.height() > 1000,
        "the matrix grows with 23 classes"
    );

    let first = walk(&data.join(dermnet_classes()[22]))[0].clone();
    xray()
        .args(["gradcam", "--checkpoint"])
        .arg(&run)
        .arg("--out")
        .arg(dir.path().join("gradcam"))
        .arg(&first)
        .assert()
        .success();

    copy_pictures(&split, &eval);
    let browser = session("twenty_three_long_class_names_stay_legible");
    let page = std::fs::canonicalize(eval.join("report.html")).unwrap();
    browser.goto(&format!("file://{}", page.display()));
    browser.wait_for(
        "return document.readyState === 'complete';",
        Duration::from_secs(20),
    );
    // Nothing wider than the window, and no cell whose text spills out of it.
    let overflow = browser.eval(
        "const d = document.documentElement; \
         const cells = [...document.querySelectorAll('td, th')] \
           .filter(c => c.scrollWidth > c.clientWidth + 1).map(c => c.textContent); \
         return [d.scrollWidth <= d.clientWidth + 1, cells];",
        json!([]),
    );
    assert_eq!(overflow[0], json!(true), "the page scrolls sideways");
    assert_eq!(overflow[1], json!([]), "cells overflow: {overflow}");
    browser.screenshot_full_page(&screenshot_path("report23.png"));

    let server = Server::start(&run, &[]);
    let image = std::fs::canonicalize(&first).unwrap();
    browser.goto(&server.base);
    let input = browser.find("#file");
    browser.send_keys(&input, &image.display().to_string());
    browser.wait_for(
        "return document.getElementById('result').style.display === 'block';",
        Duration::from_secs(30),
    );
    // 23 bars, names in full, none overflowing or overlapping another.
    let names = browser.eval(
        "return [...document.querySelectorAll('#bars .name')].map(e => { \
           const r = e.getBoundingClientRect(); \
           return [e.textContent, e.scrollWidth <= e.clientWidth + 1, r.top, r.bottom, r.left, r.right]; });",
        json!([]),
    );
    let names = names.as_array().unwrap();
    assert_eq!(names.len(), 23);
    let mut shown: Vec<&str> = names.iter().map(|n| n[0].as_str().unwrap()).collect();
    shown.sort();
    assert_eq!(shown, want);
    for (i, a) in names.iter().enumerate() {
        assert_eq!(a[1], json!(true), "{} overflows", a[0]);
        for b in &names[i + 1..] {
            let (at, ab) = (a[2].as_f64().unwrap(), a[3].as_f64().unwrap());
            let (bt, bb) = (b[2].as_f64().unwrap(), b[3].as_f64().unwrap());
            assert!(
                ab <= bt + 0.5 || bb <= at + 0.5,
                "{} overlaps {}",
                a[0],
                b[0]
            );
        }
    }
    let errors = browser.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    browser.screenshot_full_page(&screenshot_path("serve23.png"));
}

/// Copies the 23-class pictures next to the screenshots, to be looked at (and for docs/studies.md).
fn copy_pictures(split: &Path, eval: &Path) {
    let dest = screenshot_path("many-classes");
    std::fs::create_dir_all(&dest).unwrap();
    for (dir, f) in [
        (split, "classes.png"),
        (split, "samples.png"),
        (eval, "confusion.png"),
        (eval, "roc.png"),
        (eval, "pr.png"),
        (eval, "errors.png"),
    ] {
        std::fs::copy(dir.join(f), dest.join(f)).unwrap();
    }
}
