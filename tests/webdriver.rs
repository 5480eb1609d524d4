//! A small W3C WebDriver client for headless Chromium through chromedriver (Debian's
//! `chromium` and `chromium-driver`), enough to load a page, run a script, upload a file, read
//! text, collect the console's errors and take a screenshot.

use crate::common::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// The browser and its driver, or why the test cannot run here.
pub fn tools() -> Result<(PathBuf, PathBuf), String> {
    let find = |name: &str| -> Option<PathBuf> {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|d| Path::new(d).join(name))
            .find(|p| p.is_file())
    };
    let browser = find("chromium").ok_or("chromium is not installed (apt-get install chromium)")?;
    let driver = find("chromedriver")
        .ok_or("chromedriver is not installed (apt-get install chromium-driver)")?;
    Ok((browser, driver))
}

/// A browser session for `test`. A missing browser is a failure, never a silent pass: the
/// tests that call this are `#[ignore = "needs Chromium and chromedriver ..."]`, so plain
/// `cargo test` leaves them out saying why, and `make test` installs Chromium and runs them
/// with `--include-ignored`.
pub fn session(test: &str) -> Session {
    match tools() {
        Ok((browser, driver)) => Session::start(&browser, &driver),
        Err(why) => panic!("{test}: {why} (scripts/setup/chromium.sh installs both)"),
    }
}

/// Where a test's screenshot goes: `XRAY_SCREENSHOT` when set, else target/screenshots/NAME.
pub fn screenshot_path(name: &str) -> PathBuf {
    std::env::var_os("XRAY_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/screenshots")
                .join(name)
        })
}

/// A chromedriver process and one browser session on it.
pub struct Session {
    driver: Child,
    base: String,
    _profile: tempfile::TempDir,
}

impl Session {
    /// Starts chromedriver and a headless Chromium session with a fresh profile.
    pub fn start(browser: &Path, driver: &Path) -> Session {
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().expect("profile dir");
        let mut s = Session {
            driver: child,
            base: format!("http://127.0.0.1:{port}"),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while ureq::get(&format!("{}/status", s.base)).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        // The flags keep Chromium off the network this machine does not have.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1200,900",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", s._profile.path().display())])
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": browser, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let v = s.post("/session", caps);
        let id = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        s.base = format!("{}/session/{id}", s.base);
        s
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let resp = match ureq::post(&url).send_json(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                panic!(
                    "{path}: HTTP {code}: {}",
                    r.into_string().unwrap_or_default()
                )
            }
            Err(e) => panic!("{path}: {e}"),
        };
        let v: Value = resp.into_json().expect("JSON from chromedriver");
        v["value"].clone()
    }

    fn get(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.base);
        let v: Value = ureq::get(&url)
            .call()
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .into_json()
            .expect("JSON from chromedriver");
        v["value"].clone()
    }

    /// Navigates and waits for the page to load.
    pub fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url }));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub fn eval(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": args}))
    }

    /// The element id of the first match of a CSS selector.
    pub fn find(&self, css: &str) -> String {
        let v = self.post("/element", json!({"using": "css selector", "value": css}));
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    /// Types `text` into an element (for a file input: the file's path).
    pub fn send_keys(&self, element: &str, text: &str) {
        self.post(
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        );
    }

    /// The visible text of an element.
    pub fn text(&self, element: &str) -> String {
        self.get(&format!("/element/{element}/text"))
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Polls `script` until it returns something truthy, or panics after `timeout`.
    pub fn wait_for(&self, script: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.eval(script, json!([]));
            if !(v.is_null() || v == json!(false) || v == json!("")) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for: {script}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The console's messages at level SEVERE (errors) since the last call.
    pub fn console_errors(&self) -> Vec<String> {
        let v = self.post("/se/log", json!({"type": "browser"}));
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Resizes the window to the page's full height and writes a PNG screenshot to `path`.
    pub fn screenshot_full_page(&self, path: &Path) {
        let height = self
            .eval("return document.documentElement.scrollHeight;", json!([]))
            .as_u64()
            .unwrap_or(900)
            .clamp(300, 12_000);
        self.post(
            "/window/rect",
            json!({"width": 1200, "height": height + 100}),
        );
        let b64 = self.get("/screenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("base64 screenshot"))
            .expect("valid base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = ureq::delete(&self.base).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
