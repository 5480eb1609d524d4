//! `xray serve` over loopback: predict JSON, bad uploads refused with a 4xx while the server
//! keeps answering, 200 requests from 8 clients, draining on SIGTERM, and the upload page
//! driven in headless Chromium.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::trained;
use crate::webdriver::{screenshot_path, session};

/// A multipart/form-data body of `parts` (each a field `image`): its content type and bytes.
pub(crate) fn multipart_body(parts: &Parts<'_>) -> (String, Vec<u8>) {
    let boundary = "xray-test-boundary-7d1f";
    let mut body = Vec::new();
    for (name, bytes) in parts {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; \
                 filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A running `xray serve` on a free loopback port.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) base: String,
    stdout: BufReader<std::process::ChildStdout>,
    agent: ureq::Agent,
    /// Sent as `Authorization: Bearer` when set.
    pub(crate) token: Option<String>,
}

/// Response headers, names in lower case.
pub(crate) type Headers = std::collections::HashMap<String, String>;

/// The parts of a multipart body, each a file name and its bytes.
pub(crate) type Parts<'a> = [(&'a str, &'a [u8])];

impl Server {
    pub(crate) fn start(run: &Path, extra: &[&str]) -> Server {
        Server::start_with(run, extra, ureq::Agent::new())
    }

    /// With a client of its own (for TLS, one that trusts the test's certificate).
    pub(crate) fn start_with(run: &Path, extra: &[&str], agent: ureq::Agent) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xray"));
        cmd.arg("serve")
            .arg("--checkpoint")
            .arg(run)
            .args(["--addr", "127.0.0.1:0", "--device", "cpu"])
            .args(extra)
            .stderr(Stdio::inherit());
        Server::spawn(cmd, agent)
    }

    /// Starts `cmd` (an `xray serve` command line; its stderr as the caller set it) and waits
    /// for its serving line.
    pub(crate) fn spawn(mut cmd: Command, agent: ureq::Agent) -> Server {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .expect("xray serve starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("the serving line");
        let base = line
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        Server {
            child,
            base,
            stdout,
            agent,
            token: None,
        }
    }

    /// GETs `path` (with the token when set): the status and the body.
    pub(crate) fn get(&self, path: &str) -> (u16, String) {
        let mut request = self.agent.get(&format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        match request.call() {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
            Err(e) => panic!("GET {path}: {e}"),
        }
    }

    /// POSTs `parts` to /api/predict: the status, the JSON answer and the headers; or the transport error when no answer came (connection
    /// refused after shutdown).
    pub(crate) fn try_post(
        &self,
        parts: &Parts<'_>,
        query: &str,
    ) -> Result<(u16, serde_json::Value, Headers), String> {
        let (content_type, body) = multipart_body(parts);
        let url = format!("{}/api/predict{query}", self.base);
        let mut request = self.agent.post(&url).set("Content-Type", &content_type);
        if let Some(token) = &self.token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        let (code, r) = match request.send_bytes(&body) {
            Ok(r) => (r.status(), r),
            Err(ureq::Error::Status(code, r)) => (code, r),
            Err(ureq::Error::Transport(t)) => return Err(t.to_string()),
        };
        let headers: Headers = r
            .headers_names()
            .into_iter()
            .filter_map(|n| {
                r.header(&n)
                    .map(|v| (n.to_ascii_lowercase(), v.to_string()))
            })
            .collect();
        let text = r.into_string().unwrap();
        let json = serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({"raw": text}));
        Ok((code, json, headers))
    }

    /// POSTs `bytes` as the multipart file `name`: the status and the JSON answer, or the
    /// transport error when no answer came (connection refused after shutdown).
    fn try_predict(
        &self,
        name: &str,
        bytes: &[u8],
        query: &str,
    ) -> Result<(u16, serde_json::Value), String> {
        self.try_post(&[(name, bytes)], query)
            .map(|(code, json, _)| (code, json))
    }

    /// [`Server::try_predict`] where an answer must come.
    pub(crate) fn predict(
        &self,
        name: &str,
        bytes: &[u8],
        query: &str,
    ) -> (u16, serde_json::Value) {
        self.try_predict(name, bytes, query)
            .unwrap_or_else(|e| panic!("POST {name}: {e}"))
    }

    /// The next line the server prints on stdout (after the serving line: the memory bound,
    /// then the metrics address when it has one).
    pub(crate) fn next_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("a line from serve");
        line
    }

    pub(crate) fn healthy(&self) {
        let (code, body) = self.get("/healthz");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"ok\""), "{body}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn synth_image(label: &str) -> PathBuf {
    trained()
        .data
        .join(label)
        .join(format!("{label}_00003.png"))
}

/// Runs `each` requests on each of `clients` threads at once; every result, in no order.
fn concurrently<T: Send>(clients: usize, each: usize, request: impl Fn() -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| s.spawn(|| (0..each).map(|_| request()).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[test]
fn serve_predicts_refuses_bad_uploads_and_takes_load() {
    let t = trained();
    let server = Server::start(&t.run, &["--max-upload-mb", "1"]);
    server.healthy();

    let png = std::fs::read(synth_image("opacity")).unwrap();
    let (code, j) = server.predict("opacity_00003.png", &png, "");
    assert_eq!(code, 200, "{j}");
    assert_eq!(j["path"], "opacity_00003.png");
    assert!(j["label"] == "opacity" || j["label"] == "normal", "{j}");
    let sum: f64 = j["probabilities"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert!((sum - 1.0).abs() < 1e-6, "{j}");
    assert!(j["model"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(j.get("gradcam").is_none());
    let (code, j) = server.predict("opacity_00003.png", &png, "?heatmap=true");
    assert_eq!(code, 200);
    assert!(j["gradcam"]
        .as_str()
        .unwrap()
        .starts_with("data:image/png;base64,"));

    // Bad uploads: each a 4xx with a message, and the server keeps answering.
    let huge_header = crate::formats::huge_png_header(20_000);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "notes.txt",
            b"this is not an image".to_vec(),
            415,
            "not a recognised image format",
        ),
        ("empty.png", Vec::new(), 422, "empty file"),
        ("big.png", vec![0u8; 2 << 20], 413, ""),
        ("huge.png", huge_header, 413, "too large"),
    ];
    for (name, bytes, want, words) in cases {
        let (code, j) = server.predict(name, &bytes, "");
        assert_eq!(code, want, "{name}: {j}");
        if !words.is_empty() {
            let msg = j["error"].as_str().unwrap_or_default();
            assert!(msg.contains(words) && msg.contains(name), "{name}: {j}");
        }
        server.healthy();
    }

    // 200 requests from 8 concurrent clients, no error.
    let started = Instant::now();
    let latencies = concurrently(8, 25, || {
        let t0 = Instant::now();
        let (code, j) = server.predict("opacity_00003.png", &png, "");
        assert_eq!(code, 200, "{j}");
        t0.elapsed().as_secs_f64() * 1e3
    });
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    eprintln!(
        "serve: {} requests from 8 clients in {:.2}s, p50 {:.1} ms, p99 {:.1} ms",
        sorted.len(),
        started.elapsed().as_secs_f64(),
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99)
    );
    assert_eq!(sorted.len(), 200);
    server.healthy();
}

#[test]
fn serve_drains_and_exits_on_sigterm() {
    let t = trained();
    let mut server = Server::start(&t.run, &[]);
    let png = std::fs::read(synth_image("normal")).unwrap();
    let answered = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let deadline = Instant::now() + Duration::from_secs(20);
                while Instant::now() < deadline {
                    match server.try_predict("n.png", &png, "?heatmap=true") {
                        // Every request the server took is answered in full.
                        Ok((code, j)) => {
                            assert_eq!(code, 200, "{j}");
                            assert!(j["label"].is_string());
                            answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        // After shutdown, new connections are refused: stop.
                        Err(_) => break,
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(700));
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    });
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut server.stdout, &mut rest).unwrap();
    assert!(rest.contains("stopped"), "{rest}");
    assert!(answered.load(std::sync::atomic::Ordering::SeqCst) > 0);
}

/// Uploads a synth image to the shared model's page, or `XRAY_SERVE_IMAGE` to
/// `XRAY_SERVE_CHECKPOINT`'s when set (a real model for docs/serve.md's pictures: an X-ray, or a
/// photo that the guard refuses); the screenshot goes to `XRAY_SCREENSHOT` or
/// target/screenshots/serve.png (serve-ood.png for a refused image).
#[test]
#[ignore = "needs Chromium and chromedriver (scripts/setup/chromium.sh); make test runs it"]
fn upload_page_in_chromium() {
    let browser = session("upload_page_in_chromium");
    let (run, image) = match (
        std::env::var_os("XRAY_SERVE_CHECKPOINT"),
        std::env::var_os("XRAY_SERVE_IMAGE"),
    ) {
        (Some(run), Some(image)) => (PathBuf::from(run), PathBuf::from(image)),
        _ => (trained().run.clone(), synth_image("opacity")),
    };
    let server = Server::start(&run, &[]);
    let image = std::fs::canonicalize(image).unwrap();
    let png = std::fs::read(&image).unwrap();
    let (_, expected) = server.predict("x.png", &png, "");
    browser.goto(&server.base);
    let warn = browser.find(".warn");
    assert!(browser.text(&warn).contains("not a diagnosis"));
    let input = browser.find("#file");
    browser.send_keys(&input, &image.display().to_string());
    if expected["out_of_distribution"] == serde_json::json!(true) {
        // An image the guard refuses (docs/serve.md's picture of a photo sent to the Kermany
        // model): the message, and no class.
        browser.wait_for(
            "return document.getElementById('ood').style.display === 'block';",
            Duration::from_secs(30),
        );
        assert!(browser
            .text(&browser.find("#ood"))
            .starts_with("This image does not look like"));
        let shot = screenshot_path("serve-ood.png");
        browser.screenshot_full_page(&shot);
        eprintln!("screenshot: {} (refused)", shot.display());
        return;
    }
    browser.wait_for(
        "const r = document.getElementById('result'); \
         return r.style.display === 'block' && document.getElementById('overlay').naturalWidth > 0;",
        Duration::from_secs(30),
    );
    let label = browser.text(&browser.find("#label"));
    match expected["findings"].as_array() {
        // A multi-label model (XRAY_SERVE_CHECKPOINT): the findings named, a threshold mark
        // on every bar.
        Some(found) => {
            let names: Vec<&str> = found.iter().map(|f| f.as_str().unwrap()).collect();
            let want = if names.is_empty() {
                "No Finding".to_string()
            } else {
                format!("Findings: {}", names.join(", "))
            };
            assert_eq!(label, want);
            let marks = browser.eval(
                "return document.querySelectorAll('#bars .mark').length;",
                serde_json::json!([]),
            );
            assert_eq!(
                marks,
                serde_json::json!(expected["thresholds"].as_object().unwrap().len())
            );
        }
        None => assert_eq!(label, expected["label"].as_str().unwrap()),
    }
    let bars = browser.eval(
        "return document.querySelectorAll('#bars .name').length;",
        serde_json::json!([]),
    );
    assert_eq!(
        bars,
        serde_json::json!(expected["probabilities"].as_object().unwrap().len())
    );
    let errors = browser.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    let shot = screenshot_path("serve.png");
    browser.screenshot_full_page(&shot);
    eprintln!("screenshot: {} (label {label})", shot.display());
}

/// With room for one waiting request, 16 clients at once get 503 for the overflow (at once, no
/// pile-up) and 200 for the rest; the server then answers as before.
#[test]
fn serve_answers_503_when_the_queue_is_full() {
    let t = trained();
    let server = Server::start(&t.run, &["--queue", "1"]);
    let png = std::fs::read(synth_image("opacity")).unwrap();
    let codes = concurrently(16, 10, || {
        let (code, j) = server.predict("o.png", &png, "?heatmap=true");
        if code == 503 {
            assert!(j["error"].as_str().unwrap().contains("busy"), "{j}");
        }
        code
    });
    let busy = codes.iter().filter(|&&c| c == 503).count();
    let ok = codes.iter().filter(|&&c| c == 200).count();
    eprintln!("queue 1, 16 clients: {ok} answered, {busy} refused with 503");
    assert_eq!(ok + busy, codes.len(), "{codes:?}");
    assert!(busy > 0 && ok > 0, "{codes:?}");
    server.healthy();
    assert_eq!(server.predict("o.png", &png, "").0, 200);
}
