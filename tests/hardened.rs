//! `xray serve` as hospital IT runs it: HTTPS with a self-signed certificate, bearer tokens
//! (missing, unknown and expired ones refused alike), DICOM uploads (refused by reason when they
//! hold no single decodable image; no patient identifier echoed), several files per request,
//! the audit log, the per-client rate limit, a network address refused without tokens, and
//! the page with a token and a DICOM in headless Chromium.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::{assert_clean_stderr, trained, xray};
use crate::formats::Dicom;
use crate::serve::Server;
use crate::webdriver::{screenshot_path, session};

const TOKEN: &str = "clinic-a-7f3c9e1d2b4a6f80";
const EXPIRED: &str = "old-token-5e8d2c7a9b1f3e46";

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Makes `path` readable by its owner only (as serve wants its secrets).
pub(crate) fn private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A token file with one valid and one expired token (mode 0600).
pub(crate) fn token_file(dir: &Path) -> PathBuf {
    let p = dir.join("tokens.txt");
    std::fs::write(
        &p,
        format!("# xray serve tokens\n{TOKEN}\n{EXPIRED} 2001-01-31\n"),
    )
    .unwrap();
    private(&p);
    p
}

/// A self-signed certificate for 127.0.0.1 and localhost (cert.pem, key.pem) and a client
/// that trusts it.
pub(crate) fn tls(dir: &Path) -> (PathBuf, PathBuf, ureq::Agent) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert_pem, key_pem) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_pem, cert.pem()).unwrap();
    std::fs::write(&key_pem, signing_key.serialize_pem()).unwrap();
    private(&key_pem);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let agent = ureq::AgentBuilder::new()
        .tls_config(Arc::new(config))
        .build();
    (cert_pem, key_pem, agent)
}

/// A synth X-ray of the shared model's data as PNG bytes and as an uncompressed DICOM that
/// carries a patient's name and id.
fn xray_png_and_dicom(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let png_path = trained().data.join("opacity/opacity_00003.png");
    let grey = image::open(&png_path).unwrap().to_luma8();
    let dcm = dir.join("scan.dcm");
    Dicom::from_grey(&grey)
        .patient("DOE^JANE", "MRN-0042")
        .write(&dcm);
    (
        std::fs::read(png_path).unwrap(),
        std::fs::read(dcm).unwrap(),
    )
}

fn dicom_bytes(dir: &Path, name: &str, dicom: Dicom) -> Vec<u8> {
    let p = dir.join(name);
    dicom.write(&p);
    std::fs::read(p).unwrap()
}

#[test]
fn hardened_server_over_tls_with_tokens_dicom_many_files_and_an_audit_log() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(dir.path());
    let audit = dir.path().join("audit.jsonl");
    let (cert, key, agent) = tls(dir.path());
    let mut server = Server::start_with(
        &t.run,
        &[
            "--token-file",
            tokens.to_str().unwrap(),
            "--audit-log",
            audit.to_str().unwrap(),
            // Every refusal in full (not counted per address), to check each line.
            "--audit-aggregate-seconds",
            "0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        agent,
    );
    assert!(
        server.base.starts_with("https://127.0.0.1:"),
        "{}",
        server.base
    );
    server.healthy();
    // /healthz says nothing about the model; /api/model does, with a token.
    let (_, health) = server.get("/healthz");
    assert_eq!(
        serde_json::from_str::<Value>(&health).unwrap(),
        json!({"status": "ok"})
    );
    assert_eq!(server.get("/api/model").0, 401);
    server.token = Some(TOKEN.into());
    let (code, health) = server.get("/api/model");
    assert_eq!(code, 200, "{health}");
    server.token = None;
    let health: Value = serde_json::from_str(&health).unwrap();
    let weights = sha256(&std::fs::read(t.run.join("model.safetensors")).unwrap());
    assert_eq!(health["weights_sha256"], json!(weights));
    assert_eq!(health["auth"], "bearer");
    // The arithmetic it serves in; where auto timed both, the choice follows the times.
    let precision = health["precision"].as_str().unwrap();
    assert!(["fp32", "bf16"].contains(&precision), "{health}");
    if let Some(auto) = health["precision_auto"].as_object() {
        assert_eq!(auto["chosen"], precision, "{health}");
    }

    // Missing, unknown and expired tokens: the same 401, nothing about valid tokens.
    let (png, dcm) = xray_png_and_dicom(dir.path());
    let mut refusals = Vec::new();
    for token in [None, Some("wrong-token-0000000000000000"), Some(EXPIRED)] {
        server.token = token.map(str::to_string);
        let (code, j, headers) = server.try_post(&[("o.png", &png)], "").unwrap();
        assert_eq!(code, 401, "{token:?}: {j}");
        assert!(
            headers["www-authenticate"].starts_with("Bearer"),
            "{headers:?}"
        );
        assert!(!j.to_string().contains("clinic"), "{j}");
        refusals.push(j["error"].clone());
    }
    assert!(refusals.iter().all(|e| *e == refusals[0]), "{refusals:?}");

    server.token = Some(TOKEN.into());
    let (code, single, headers) = server.try_post(&[("o.png", &png)], "").unwrap();
    assert_eq!(code, 200, "{single}");
    assert_eq!(single["request_id"], json!(headers["x-request-id"]));

    // Several files in one request: one result per part, in order; the broken ones refused by
    // reason while the others are answered.
    let grey = image::GrayImage::from_fn(32, 32, |x, y| image::Luma([(x * 8 + y) as u8]));
    let noise =
        std::fs::read(crate::ood::noise_images(&dir.path().join("noise"), 1).remove(0)).unwrap();
    let cine = dicom_bytes(dir.path(), "cine.dcm", Dicom::from_grey(&grey).frames(4));
    let j2k = dicom_bytes(dir.path(), "j2k.dcm", Dicom::from_grey(&grey).jpeg2000());
    let report = dicom_bytes(
        dir.path(),
        "sr.dcm",
        Dicom::from_grey(&grey).without_pixel_data(),
    );
    let parts: Vec<(&str, &[u8])> = vec![
        ("opacity.png", &png),
        ("scan.dcm", &dcm),
        ("notes.txt", b"not an image"),
        ("noise.png", &noise),
        ("cine.dcm", &cine),
        ("j2k.dcm", &j2k),
        ("sr.dcm", &report),
    ];
    let (code, many, _) = server.try_post(&parts, "?heatmap=true").unwrap();
    assert_eq!(code, 200, "{many}");
    let results = many["results"].as_array().expect("results");
    assert_eq!(results.len(), parts.len(), "{many}");
    // No patient field in any text of the answer: names, messages, errors (the heatmaps'
    // base64 is image data, where any string of letters may turn up by chance).
    let mut texts = many.clone();
    for r in texts["results"].as_array_mut().unwrap() {
        r.as_object_mut().unwrap().remove("gradcam");
    }
    let text = texts.to_string();
    assert!(
        !text.contains("DOE") && !text.contains("MRN-0042"),
        "patient data echoed: {text}"
    );
    for (i, name) in ["opacity.png", "scan.dcm", "noise.png"].iter().enumerate() {
        let r = &results[[0, 1, 3][i]];
        assert_eq!(r["path"], json!(name), "{r}");
        assert!(r["label"].is_string(), "{r}");
    }
    assert!(results[0]["gradcam"]
        .as_str()
        .unwrap()
        .starts_with("data:image/png"));
    // The DICOM holds the PNG's pixels (12 bits, windowed back to 8): the same answer.
    let (p_png, p_dcm) = (
        results[0]["probability"].as_f64().unwrap(),
        results[1]["probability"].as_f64().unwrap(),
    );
    assert_eq!(results[0]["label"], results[1]["label"]);
    assert!((p_png - p_dcm).abs() < 0.02, "{p_png} vs {p_dcm}");
    assert_eq!(
        results[3]["out_of_distribution"],
        json!(true),
        "{}",
        results[3]
    );
    assert!(results[3].get("gradcam").is_none());
    for (i, status, words) in [
        (2, 415, "notes.txt: not a recognised image format"),
        (4, 422, "cine.dcm: multi-frame DICOM (4 frames)"),
        (5, 415, "j2k.dcm: DICOM transfer syntax JPEG 2000"),
        (6, 422, "sr.dcm: DICOM without pixel data"),
    ] {
        assert_eq!(results[i]["status"], json!(status), "{}", results[i]);
        let msg = results[i]["error"].as_str().unwrap();
        assert!(msg.contains(words), "{msg}");
    }
    // Alone, a refused DICOM is the response's own status.
    let (code, j) = server.predict("j2k.dcm", &j2k, "");
    assert_eq!(code, 415, "{j}");
    assert!(
        j["error"].as_str().unwrap().contains("cannot decode"),
        "{j}"
    );
    server.healthy();

    // The audit log: a line per refusal and per part; digests, model and answers; no names,
    // no images, no patient data, no tokens.
    let log = std::fs::read_to_string(&audit).unwrap();
    for secret in [
        "DOE",
        "MRN-0042",
        TOKEN,
        EXPIRED,
        ".png",
        ".dcm",
        "notes",
        "data:image",
    ] {
        assert!(!log.contains(secret), "{secret} in the audit log");
    }
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The /api/model refusal, three 401s, the single request, the parts, the lone DICOM.
    assert_eq!(lines.len(), 1 + 3 + 1 + parts.len() + 1, "{log}");
    let lines = &lines[1..];
    assert!(lines[..3].iter().all(|l| l["status"] == 401));
    assert_eq!(lines[0]["error"], "no token");
    assert_eq!(lines[1]["error"], "unknown token");
    assert!(lines[2]["error"]
        .as_str()
        .unwrap()
        .starts_with("expired token "));
    assert_eq!(lines[3]["request_id"], single["request_id"]);
    let part_lines: Vec<&Value> = lines
        .iter()
        .filter(|l| l["request_id"] == many["request_id"])
        .collect();
    assert_eq!(part_lines.len(), parts.len());
    for (i, (line, (_, bytes))) in part_lines.iter().zip(&parts).enumerate() {
        assert_eq!(line["part"], json!(i));
        assert_eq!(line["input_sha256"], json!(sha256(bytes)), "{line}");
        assert_eq!(line["input_bytes"], json!(bytes.len()));
        assert_eq!(line["weights_sha256"], json!(weights));
        assert_eq!(line["model"], health["model"]);
        assert_eq!(line["client"], "127.0.0.1");
        assert!(line["token_id"].as_str().is_some_and(|id| id.len() == 12));
        assert!(chrono::DateTime::parse_from_rfc3339(line["time"].as_str().unwrap()).is_ok());
        let status = results[i]["status"].as_u64().unwrap_or(200);
        assert_eq!(line["status"], json!(status), "{line}");
        if status == 200 {
            assert_eq!(line["label"], results[i]["label"]);
            assert_eq!(line["probabilities"], results[i]["probabilities"]);
            assert_eq!(
                line["out_of_distribution"],
                results[i]["out_of_distribution"]
            );
        } else {
            assert!(
                line["error"].is_string() && line.get("label").is_none(),
                "{line}"
            );
        }
    }

    // Plain HTTP to the HTTPS port gets no answer.
    let plain = server.base.replace("https://", "http://");
    assert!(!matches!(ureq::get(&format!("{plain}/healthz")).call(), Ok(r) if r.status() == 200));
}

/// `xray serve` with extra arguments that must fail before listening: exit 2 and one line.
pub(crate) fn refused(run: &Path, args: &[&str], words: &str) {
    let out = xray()
        .arg("serve")
        .arg("--checkpoint")
        .arg(run)
        .args(["--device", "cpu"])
        .args(args)
        .timeout(Duration::from_secs(60))
        .assert()
        .code(2);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(stderr.contains(words), "{args:?}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_clean_stderr(&out.get_output().stderr);
}

#[test]
fn a_network_address_needs_tokens_and_bad_security_files_are_usage_errors() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "secret\n").unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    private(&garbage);
    let tokens = token_file(dir.path());
    let t_arg = tokens.to_str().unwrap();
    refused(
        &t.run,
        &["--addr", "0.0.0.0:0"],
        "a network address needs --token-file FILE",
    );
    // Counts of 0 are refused by name, not quietly raised to 1.
    for (flag, value, words) in [
        ("--queue", "0", "'--queue <QUEUE>': give 1 or more"),
        ("--max-connections-per-ip", "0", "give 1 or more"),
        ("--decode-threads", "two", "not a whole number"),
        (
            "--max-megapixels",
            "0",
            "--max-megapixels 0: give a number of megapixels",
        ),
    ] {
        refused(&t.run, &["--addr", "127.0.0.1:0", flag, value], words);
    }
    refused(
        &t.run,
        &[
            "--addr",
            "127.0.0.1:0",
            "--token-file",
            short.to_str().unwrap(),
        ],
        "line 1: the token is shorter than 16 characters",
    );
    refused(
        &t.run,
        &[
            "--addr",
            "127.0.0.1:0",
            "--token-file",
            "/nonexistent/tokens.txt",
        ],
        "cannot read it",
    );
    refused(
        &t.run,
        &[
            "--addr",
            "127.0.0.1:0",
            "--tls-cert",
            garbage.to_str().unwrap(),
        ],
        "--tls-key",
    );
    refused(
        &t.run,
        &[
            "--addr",
            "127.0.0.1:0",
            "--token-file",
            t_arg,
            "--tls-cert",
            garbage.to_str().unwrap(),
            "--tls-key",
            garbage.to_str().unwrap(),
        ],
        "--tls-cert",
    );
    refused(
        &t.run,
        &[
            "--addr",
            "127.0.0.1:0",
            "--audit-log",
            "/nonexistent/dir/audit.jsonl",
        ],
        "--audit-log",
    );
    // Told so, it listens on every interface without tokens.
    let mut child = Command::new(env!("CARGO_BIN_EXE_xray"))
        .arg("serve")
        .arg("--checkpoint")
        .arg(&t.run)
        .args([
            "--device",
            "cpu",
            "--addr",
            "0.0.0.0:0",
            "--insecure-public",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("on http://0.0.0.0:"), "{line}");
}

#[test]
fn the_rate_limit_answers_429_per_client() {
    let t = trained();
    let server = Server::start(&t.run, &["--rate-limit", "3"]);
    let png = std::fs::read(t.data.join("normal/normal_00003.png")).unwrap();
    for _ in 0..3 {
        assert_eq!(server.predict("n.png", &png, "").0, 200);
    }
    let (code, j, headers) = server.try_post(&[("n.png", &png)], "").unwrap();
    assert_eq!(code, 429, "{j}");
    assert!(
        j["error"].as_str().unwrap().contains("at most 3 a minute"),
        "{j}"
    );
    let wait: u64 = headers["retry-after"].parse().unwrap();
    assert!((1..=20).contains(&wait), "{wait}");
    // The page and the health check are not limited.
    server.healthy();
    assert_eq!(server.get("/").0, 200);
}

/// The page with tokens: a wrong token is refused on the page; with the right one a DICOM is
/// answered as the API answers it. The screenshot goes to target/screenshots/serve-dicom.png.
#[test]
#[ignore = "needs Chromium and chromedriver (scripts/setup/chromium.sh); make test runs it"]
fn upload_page_with_a_token_and_a_dicom_in_chromium() {
    let browser = session("upload_page_with_a_token_and_a_dicom_in_chromium");
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(dir.path());
    let mut server = Server::start(&t.run, &["--token-file", tokens.to_str().unwrap()]);
    let (_, dcm) = xray_png_and_dicom(dir.path());
    let dcm_path = dir.path().join("scan.dcm");
    server.token = Some(TOKEN.into());
    let (code, expected) = server.predict("scan.dcm", &dcm, "");
    assert_eq!(code, 200, "{expected}");

    browser.goto(&server.base);
    let set_token = |value: &str| {
        browser.eval(
            "document.getElementById('token').value = arguments[0];",
            json!([value]),
        );
    };
    set_token("wrong-token-0000000000000000");
    let input = browser.find("#file");
    browser.send_keys(&input, &dcm_path.display().to_string());
    browser.wait_for(
        "return document.getElementById('error').textContent.length > 0;",
        Duration::from_secs(30),
    );
    assert!(browser
        .text(&browser.find("#error"))
        .contains("Access refused"));

    set_token(TOKEN);
    let input = browser.find("#file");
    browser.send_keys(&input, &dcm_path.display().to_string());
    browser.wait_for(
        "const r = document.getElementById('result'); \
         return r.style.display === 'block' && document.getElementById('overlay').naturalWidth > 0;",
        Duration::from_secs(30),
    );
    assert_eq!(
        browser.text(&browser.find("#label")),
        expected["label"].as_str().unwrap()
    );
    assert_eq!(browser.text(&browser.find("#error")), "");
    let page = browser.eval("return document.body.innerText;", json!([]));
    assert!(
        !page.to_string().contains("DOE"),
        "patient name on the page"
    );
    browser.screenshot_full_page(&screenshot_path("serve-dicom.png"));
}
