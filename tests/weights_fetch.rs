//! `xray weights fetch` against a loopback HTTP server that serves a ResNet18 `.pth` written
//! during the test by the wheel's torch: the right hash (whole or torchvision's 8 digits), a
//! wrong one, the catalogue's pin through `--mirror`, a truncated body, a 404 and no server at
//! all. A failed download leaves no file behind.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tch::{nn, Device};
use xray::models::{build, Arch, ModelSpec};

use crate::common::{free_port, xray};
use crate::import_weights::resnet18_pth;

/// Serves `body` at /ok.pth and /models/resnet18-f37072fd.pth, half of it (with the whole
/// length announced) at /truncated.pth, and 404 elsewhere, until the test ends.
fn serve(body: Vec<u8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = Arc::new(body);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
                let (status, sent) = match path.as_str() {
                    "/ok.pth" | "/models/resnet18-f37072fd.pth" => ("200 OK", &body[..]),
                    "/truncated.pth" => ("200 OK", &body[..body.len() / 2]),
                    _ => ("404 Not Found", &b""[..]),
                };
                let length = if status.starts_with("200") {
                    body.len()
                } else {
                    0
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(sent);
            });
        }
    });
    port
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `xray weights fetch ARGS --dir DIR`, returning (exit code, stdout, stderr).
fn fetch(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = xray()
        .args(["weights", "fetch", "--timeout", "10", "--dir"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The folder holds nothing: no weights, no partial download.
fn assert_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn weights_fetch_checks_the_hash_and_leaves_nothing_on_failure() {
    let work = tempfile::tempdir().unwrap();
    let Some((pth, _)) = resnet18_pth(work.path()) else {
        return;
    };
    let body = std::fs::read(&pth).unwrap();
    let sha = hex(&body);
    let port = serve(body);
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");

    // The right hash: converted, loadable, and not fetched again.
    let dir = work.path().join("w1");
    let ok = |dir: &Path, pin: &str| {
        fetch(
            dir,
            &[
                "--url",
                &url("/ok.pth"),
                "--sha256",
                pin,
                "--arch",
                "resnet18",
            ],
        )
    };
    let (code, stdout, stderr) = ok(&dir, &sha);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("wrote") && stdout.contains("102 tensors"),
        "{stdout}"
    );
    let file = dir.join("resnet18_imagenet.safetensors");
    let mut vs = nn::VarStore::new(Device::Cpu);
    let _model = build(&vs.root(), &ModelSpec::new(Arch::ResNet18, 3, 1000, 0.0)).unwrap();
    vs.load(&file).unwrap();
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let (code, stdout, _) = ok(&dir, &sha);
    assert!(code == 0 && stdout.contains("is there"), "{stdout}");

    // torchvision's own check: the leading 8 digits, as in its file names.
    let dir = work.path().join("w2");
    let (code, _, stderr) = ok(&dir, &sha[..8]);
    assert_eq!(code, 0, "{stderr}");
    assert!(dir.join("resnet18_imagenet.safetensors").is_file());

    // Each failure: exit 1, one line naming the URL, the reason and the manual steps, and
    // nothing written.
    let zeros = "0".repeat(64);
    let cases = [
        (url("/ok.pth"), zeros.as_str(), "not the pinned 0000"),
        (url("/truncated.pth"), sha.as_str(), "broke off after"),
        (url("/missing.pth"), sha.as_str(), "answered 404"),
        (
            format!("http://127.0.0.1:{}/ok.pth", free_port()),
            sha.as_str(),
            "cannot reach",
        ),
    ];
    for (i, (u, pin, reason)) in cases.iter().enumerate() {
        let dir = work.path().join(format!("bad{i}"));
        let (code, _, stderr) = fetch(&dir, &["--url", u, "--sha256", pin, "--arch", "resnet18"]);
        assert_eq!(code, 1, "{u}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(reason)
                && stderr.contains(u.as_str())
                && stderr.contains("by hand: curl -LO"),
            "{u}: {stderr}"
        );
        assert_empty(&dir);
    }

    // The catalogue's pin applies through a mirror: this file is not torchvision's ResNet18.
    let dir = work.path().join("mirror");
    let (code, _, stderr) = fetch(&dir, &["resnet18", "--mirror", &url("/models/")]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("not the pinned f37072fd47e89c5e")
            && stderr.contains("/models/resnet18-f37072fd.pth"),
        "{stderr}"
    );
    assert_empty(&dir);

    // Usage errors: exit 2.
    for args in [
        &["densenet9000"][..],
        &["efficientnet_lite0"],
        &[
            "--url",
            &url("/ok.pth"),
            "--sha256",
            "xyz",
            "--arch",
            "resnet18",
        ],
    ] {
        let (code, _, stderr) = fetch(&work.path().join("usage"), args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
}
