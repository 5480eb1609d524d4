//! Pages in headless Chromium: the eval report renders with every picture and no console error.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use crate::common::{trained, xray};
use crate::webdriver::{screenshot_path, session};

/// The report of `XRAY_REPORT_HTML` when set (scripts/experiments/report_screenshot.sh points it at a real
/// Kermany run), otherwise of the shared synth model's test split. The screenshot goes to
/// `XRAY_SCREENSHOT` or target/screenshots/report.png.
#[test]
#[ignore = "needs Chromium and chromedriver (scripts/setup/chromium.sh); make test runs it"]
fn eval_report_renders_in_chromium() {
    let browser = session("eval_report_renders_in_chromium");
    let report = match std::env::var_os("XRAY_REPORT_HTML") {
        Some(p) => PathBuf::from(p),
        None => {
            let t = trained();
            let out = t.run.join("eval-browser");
            xray()
                .arg("eval")
                .arg("--checkpoint")
                .arg(&t.run)
                .arg("--out")
                .arg(&out)
                .assert()
                .success();
            out.join("report.html")
        }
    };
    let report = std::fs::canonicalize(&report).expect("report.html exists");
    browser.goto(&format!("file://{}", report.display()));
    browser.wait_for(
        "return document.readyState === 'complete';",
        Duration::from_secs(20),
    );
    let images = browser.eval(
        "return [...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0, \
         i.getAttribute('src').slice(0, 22)]);",
        json!([]),
    );
    let images = images.as_array().expect("an image list");
    assert!(images.len() >= 5, "figures: {images:?}");
    for img in images {
        assert_eq!(img[1], json!(true), "picture not rendered: {img}");
        assert_eq!(
            img[2],
            json!("data:image/png;base64,"),
            "not inlined: {img}"
        );
    }
    let headings = browser.eval(
        "return [...document.querySelectorAll('h2')].map(h => h.textContent);",
        json!([]),
    );
    for want in [
        "Summary",
        "Per class",
        "Confusion matrix (rows = true class)",
    ] {
        assert!(
            headings.as_array().unwrap().iter().any(|h| h == want),
            "{want} missing from {headings}"
        );
    }
    let errors = browser.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    let shot = screenshot_path("report.png");
    browser.screenshot_full_page(&shot);
    let img = image::open(&shot).expect("screenshot is a PNG");
    assert!(
        img.width() >= 800 && img.height() >= 900,
        "{}x{}",
        img.width(),
        img.height()
    );
    eprintln!("screenshot: {}", shot.display());
}
