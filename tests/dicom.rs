//! xray as a DICOM node, tested against the real parts a hospital has: DCMTK's `echoscu`,
//! `storescu` and `dsrdump` as the modality and the inspector, dicom3tools' `dciodvfy` as the
//! validator of every object xray writes, and Orthanc as the PACS (started by the test in a
//! temporary folder with a generated configuration, stopped at the end).
//!
//! They come from Debian's `orthanc`, `dcmtk` and `dicom3tools` packages
//! (`scripts/setup/dicom.sh`, run by `make test`); the tests that need them are `#[ignore]`d
//! with that reason, and a missing tool fails them rather than passing silently.

use std::path::Path;
use std::process::Command;

use dicom_core::{value::PrimitiveValue, DataElement, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use std::path::PathBuf;

use crate::common::{assert_ok, free_port, trained, xray, RunOk};

/// The identity of a test image: patient, study, series and instance.
#[derive(Debug, Clone)]
pub struct Ids {
    pub patient_id: String,
    pub study_uid: String,
    pub series_uid: String,
    pub sop_uid: String,
}

impl Ids {
    /// Fresh ids for image `n` of patient `patient`.
    pub fn new(patient: &str, n: u32) -> Ids {
        let r: u64 = rand::random::<u64>() >> 1;
        Ids {
            patient_id: patient.into(),
            study_uid: format!("2.25.{r}1"),
            series_uid: format!("2.25.{r}2"),
            sop_uid: format!("2.25.{r}3{n}"),
        }
    }
}

/// A Computed Radiography image (PS3.3 A.2: Patient, General Study, General Series, CR Series,
/// General Equipment, General Image, Image Pixel, CR Image, SOP Common) of the grey PNG `png`,
/// written at `out`.
pub fn write_cr(png: &Path, out: &Path, ids: &Ids) {
    write_image(&image::open(png).unwrap(), false, out, ids);
}

/// `img` as a DICOM image at `out`: a grey CR, or with `photo` an RGB Secondary Capture (a
/// photograph, as a PACS stores one).
pub fn write_image(img: &image::DynamicImage, photo: bool, out: &Path, ids: &Ids) {
    let (w, h) = (img.width(), img.height());
    let (class, modality, photometric, samples, pixels) = if photo {
        (
            uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
            "XC",
            "RGB",
            3,
            img.to_rgb8().into_raw(),
        )
    } else {
        (
            uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE,
            "CR",
            "MONOCHROME2",
            1,
            img.to_luma8().into_raw(),
        )
    };
    let s = |t, vr, v: &str| DataElement::new(t, vr, PrimitiveValue::from(v));
    let us = |t, v: u16| DataElement::new(t, VR::US, PrimitiveValue::from(v));
    let obj = InMemDicomObject::from_element_iter([
        s(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100"),
        s(tags::SOP_CLASS_UID, VR::UI, class),
        s(tags::SOP_INSTANCE_UID, VR::UI, &ids.sop_uid),
        s(tags::STUDY_DATE, VR::DA, "20261201"),
        s(tags::STUDY_TIME, VR::TM, "101500"),
        s(tags::ACCESSION_NUMBER, VR::SH, "ACC123"),
        s(tags::MODALITY, VR::CS, modality),
        s(tags::MANUFACTURER, VR::LO, "xray tests"),
        s(tags::REFERRING_PHYSICIAN_NAME, VR::PN, "Doe^Jane"),
        s(tags::STUDY_DESCRIPTION, VR::LO, "Chest PA"),
        s(tags::PATIENT_NAME, VR::PN, "Test^Patient"),
        s(tags::PATIENT_ID, VR::LO, &ids.patient_id),
        s(tags::PATIENT_BIRTH_DATE, VR::DA, "20200101"),
        s(tags::PATIENT_SEX, VR::CS, "F"),
        s(tags::BODY_PART_EXAMINED, VR::CS, "CHEST"),
        s(tags::VIEW_POSITION, VR::CS, "PA"),
        s(tags::STUDY_INSTANCE_UID, VR::UI, &ids.study_uid),
        s(tags::SERIES_INSTANCE_UID, VR::UI, &ids.series_uid),
        s(tags::STUDY_ID, VR::SH, "1"),
        s(tags::SERIES_NUMBER, VR::IS, "1"),
        s(tags::INSTANCE_NUMBER, VR::IS, "1"),
        DataElement::new(tags::PATIENT_ORIENTATION, VR::CS, PrimitiveValue::Empty),
        us(tags::SAMPLES_PER_PIXEL, samples),
        s(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, photometric),
        us(tags::ROWS, h as u16),
        us(tags::COLUMNS, w as u16),
        us(tags::BITS_ALLOCATED, 8),
        us(tags::BITS_STORED, 8),
        us(tags::HIGH_BIT, 7),
        us(tags::PIXEL_REPRESENTATION, 0),
        DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::U8(pixels.into())),
    ]);
    let mut obj = obj;
    if photo {
        obj.put(us(tags::PLANAR_CONFIGURATION, 0));
        obj.put(s(tags::CONVERSION_TYPE, VR::CS, "DI"));
    }
    obj.with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .unwrap()
        .write_to_file(out)
        .unwrap();
}

/// Fails unless DCMTK, dicom3tools and Orthanc are installed.
fn need_tools() {
    for tool in [
        "storescu", "echoscu", "dsrdump", "dcmdump", "dciodvfy", "Orthanc",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is not installed (scripts/setup/dicom.sh installs DCMTK, dicom3tools and Orthanc)"
        );
    }
}

/// dciodvfy's report of `file`; fails the test on any line starting "Error".
pub fn assert_valid(file: &Path) -> String {
    let out = Command::new("dciodvfy").arg(file).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("Error")).collect();
    assert!(errors.is_empty(), "dciodvfy {}:\n{text}", file.display());
    text
}

/// dsrdump's text of a report.
pub fn dsrdump(file: &Path) -> String {
    let out = Command::new("dsrdump")
        .args(["+Pc", "+Pl", "+Pu"])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "dsrdump {}: {out:?}", file.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// dcmdump's value of `tag` (for example "0020,000d") in `file`.
pub fn dcm_value(file: &Path, tag: &str) -> String {
    let out = Command::new("dcmdump")
        .args(["+P", tag, "-s"])
        .arg(file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().next().unwrap_or("").to_string();
    line.split('[')
        .nth(1)
        .and_then(|s| s.split(']').next())
        .unwrap_or("")
        .to_string()
}

/// The probability of class `k` in a report as `dsrdump +Pc` prints it.
fn probability_in_report(text: &str, k: usize) -> f64 {
    coded_number(text, &format!("PROB-{k}"))
}

/// `xray predict --dicom-out OUT --heatmap` of `file` in fp32: a report and an overlay.
fn predict_dicom(run: &Path, file: &Path, out: &Path) {
    assert_ok(
        xray()
            .args(["predict", "--precision", "fp32", "--checkpoint"])
            .arg(run)
            .arg(file)
            .arg("--dicom-out")
            .arg(out)
            .arg("--heatmap")
            .output()
            .unwrap(),
    );
}

/// predict's JSON of `file` in fp32.
fn predict_json(run: &Path, file: &Path) -> serde_json::Value {
    let out = xray()
        .args([
            "predict",
            "--format",
            "json",
            "--precision",
            "fp32",
            "--checkpoint",
        ])
        .arg(run)
        .arg(file)
        .stdout_ok();
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    if v.is_array() {
        v[0].clone()
    } else {
        v
    }
}

/// predict's JSON label and probability of `file`.
fn predicted(run: &Path, file: &Path) -> (String, f64) {
    let v = predict_json(run, file);
    (
        v["label"].as_str().unwrap().to_string(),
        v["probability"].as_f64().unwrap(),
    )
}

#[test]
#[ignore = "needs DCMTK and dicom3tools (scripts/setup/dicom.sh); make test runs it"]
fn predict_writes_a_valid_report_and_overlay_in_the_source_study() {
    need_tools();
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let cr = dir.path().join("chest.dcm");
    let ids = Ids::new("PAT-1", 1);
    write_cr(&t.data.join("opacity/opacity_00001.png"), &cr, &ids);
    let out = dir.path().join("results");
    predict_dicom(&t.run, &cr, &out);
    let sr = out.join("chest.sr.dcm");
    let sc = out.join("chest.sc.dcm");
    for f in [&sr, &sc] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
        assert_valid(f);
        assert_eq!(dcm_value(f, "0020,000d"), ids.study_uid);
        assert_eq!(dcm_value(f, "0010,0020"), ids.patient_id);
        assert_ne!(dcm_value(f, "0020,000e"), ids.series_uid);
    }
    assert!(dcm_value(&sc, "0008,103e").contains("NOT FOR DIAGNOSIS"));
    assert_eq!(dcm_value(&sc, "0028,0301"), "YES");
    for f in [&sr, &sc] {
        eprintln!("dciodvfy {}:\n{}", f.display(), assert_valid(f));
    }
    let text = dsrdump(&sr);
    eprintln!("{text}");
    let (label, p) = predicted(&t.run, &cr);
    assert!(
        text.contains(&format!("(CLASS-1,99XRAY,\"{label}\")"))
            || text.contains(&format!("(CLASS-0,99XRAY,\"{label}\")")),
        "finding {label} not in:\n{text}"
    );
    let k = if label == "normal" { 0 } else { 1 };
    let value = probability_in_report(&text, k);
    assert!((value - p).abs() < 1e-5, "{value} vs predict's {p}");
    assert!(text.contains("Research use, not a diagnosis"), "{text}");
    assert!(
        text.contains(&ids.sop_uid),
        "the source is not referenced:\n{text}"
    );
}

/// The numeric value of the item coded `code` (e.g. `PROB-2`) as `dsrdump +Pc` prints it.
fn coded_number(text: &str, code: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.contains(&format!("({code},99XRAY")))
        .unwrap_or_else(|| panic!("no {code} in:\n{text}"));
    line.split('"')
        .nth(3)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {line}"))
}

/// A multi-label model's report: one Finding item per finding predict gives ("No Finding"
/// when none), each label's probability and its own threshold, valid for dciodvfy.
#[test]
#[ignore = "needs DCMTK and dicom3tools (scripts/setup/dicom.sh); make test runs it"]
fn a_multilabel_report_lists_each_finding_with_its_probability_and_threshold() {
    need_tools();
    let dir = tempfile::tempdir().unwrap();
    let (data, split) = crate::multilabel::synth_multilabel_split(dir.path(), 240);
    let run = dir.path().join("run");
    xray()
        .arg("train")
        .arg("--config")
        .arg(crate::common::repo().join("configs/synth_multilabel.toml"))
        .args(["--set", &format!("data.split={}", split.display())])
        .args(["--set", "train.epochs=4", "--set", "data.image_size=64"])
        .arg("--out")
        .arg(&run)
        .output_ok();
    let card = crate::common::read_json(&run.join("model.json"));
    let labels = crate::multilabel::card_classes(&card);
    // Images with two findings and with none, as labels.csv has them.
    let csv = std::fs::read_to_string(data.join("labels.csv")).unwrap();
    let pick = |two: bool| -> String {
        csv.lines()
            .skip(1)
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| {
                if two {
                    f[1].split('|').count() == 2
                } else {
                    f[1] == "No Finding"
                }
            })
            .unwrap()[0]
            .to_string()
    };
    let mut seen_findings = 0;
    for (n, name) in [pick(true), pick(false)].iter().enumerate() {
        let cr = dir.path().join(format!("chest{n}.dcm"));
        let ids = Ids::new(&format!("PAT-{n}"), n as u32 + 1);
        write_cr(&data.join("images").join(name), &cr, &ids);
        let out = dir.path().join(format!("results{n}"));
        predict_dicom(&run, &cr, &out);
        let sr = out.join(format!("chest{n}.sr.dcm"));
        assert_valid(&sr);
        assert_valid(&out.join(format!("chest{n}.sc.dcm")));
        assert_eq!(dcm_value(&sr, "0020,000d"), ids.study_uid);
        let text = dsrdump(&sr);
        let p = predict_json(&run, &cr);
        let findings = crate::multilabel::strings(&p["findings"]);
        let coded: Vec<String> = text
            .lines()
            .filter(|l| l.contains("(121071,DCM,\"Finding\")"))
            .map(|l| {
                let meaning = l.rsplit(',').next().unwrap();
                meaning.trim_end_matches(")>").trim_matches('"').to_string()
            })
            .collect();
        if findings.is_empty() {
            assert_eq!(coded, ["No Finding"], "{text}");
            assert!(text.contains("(NO-FINDING,99XRAY"), "{text}");
        } else {
            assert_eq!(coded, findings, "{text}");
        }
        seen_findings += findings.len();
        for (k, l) in labels.iter().enumerate() {
            let prob = coded_number(&text, &format!("PROB-{k}"));
            let want = p["probabilities"][l.as_str()].as_f64().unwrap();
            assert!(
                (prob - want).abs() < 1e-5,
                "{l}: {prob} vs predict's {want}"
            );
            let thr = coded_number(&text, &format!("THRESHOLD-{k}"));
            let want = card["thresholds"][k].as_f64().unwrap();
            assert!((thr - want).abs() < 1e-5, "{l}: threshold {thr} vs {want}");
        }
        let params = text
            .lines()
            .find(|l| l.contains("Algorithm Parameters"))
            .unwrap();
        assert!(
            params.contains("a sigmoid per label; temperatures "),
            "{params}"
        );
    }
    assert!(
        seen_findings > 0,
        "neither image had a finding: nothing listed was checked"
    );
}

// ---------------------------------------------------------------------------------------------
// Orthanc, the PACS.

/// Orthanc's DICOMweb plugin (Debian's `orthanc-dicomweb`).
const DICOMWEB_PLUGIN: &str = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so";

/// An Orthanc of the test's own, with xray registered as modality `xray`; stopped when
/// dropped. Its storage survives [`Orthanc::stop`] and [`Orthanc::restart`].
pub struct Orthanc {
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
    pub http: u16,
    pub dicom: u16,
    name: String,
    agent: ureq::Agent,
}

impl Orthanc {
    /// Starts one that knows xray as `XRAY@127.0.0.1:xray_port`.
    pub fn start(xray_port: u16) -> Orthanc {
        Orthanc::start_with(xray_port, false)
    }

    /// [`Orthanc::start`], with its DICOMweb plugin at `/dicom-web/` when `dicomweb`.
    pub fn start_with(xray_port: u16, dicomweb: bool) -> Orthanc {
        let dir = tempfile::tempdir().unwrap();
        let (http, dicom) = (free_port(), free_port());
        let config = serde_json::json!({
            // A name of its own: the wait below knows its server from another test's.
            "Name": format!("xray-test-pacs-{}", rand::random::<u32>()),
            "StorageDirectory": dir.path().join("storage"),
            "IndexDirectory": dir.path().join("storage"),
            "HttpPort": http,
            "DicomPort": dicom,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "DicomAlwaysAllowStore": true,
            "DicomCheckCalledAet": false,
            "DicomModalities": {"xray": ["XRAY", "127.0.0.1", xray_port]},
            "Plugins": if dicomweb { vec![DICOMWEB_PLUGIN] } else { vec![] },
            "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/"},
            "ConcurrentJobs": 1,
        });
        std::fs::write(dir.path().join("orthanc.json"), config.to_string()).unwrap();
        let mut o = Orthanc {
            dir,
            child: None,
            http,
            dicom,
            name: String::new(),
            agent: ureq::AgentBuilder::new()
                .timeout(std::time::Duration::from_secs(30))
                .build(),
        };
        o.name = config["Name"].as_str().unwrap().to_string();
        o.restart();
        o
    }

    /// Starts the server (again) and waits until its REST API answers.
    pub fn restart(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("orthanc.log")).unwrap();
        let child = Command::new("Orthanc")
            .arg(self.dir.path().join("orthanc.json"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("Orthanc starts");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while self
            .try_get("/system")
            .map(|s| s["Name"] == self.name.as_str())
            != Some(true)
        {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none(),
                "Orthanc exited ({exited:?}), its port taken?\n{}",
                std::fs::read_to_string(self.dir.path().join("orthanc.log")).unwrap_or_default()
            );
            assert!(
                std::time::Instant::now() < deadline,
                "Orthanc did not answer within 60 s:\n{}",
                std::fs::read_to_string(self.dir.path().join("orthanc.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Stops the server (its storage stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    fn try_get(&self, path: &str) -> Option<serde_json::Value> {
        self.agent
            .get(&format!("http://127.0.0.1:{}{path}", self.http))
            .call()
            .ok()?
            .into_json()
            .ok()
    }

    /// POST of a REST path, as JSON.
    pub fn post(&self, path: &str, body: &[u8]) -> serde_json::Value {
        self.agent
            .post(&format!("http://127.0.0.1:{}{path}", self.http))
            .send_bytes(body)
            .unwrap_or_else(|e| panic!("Orthanc POST {path}: {e}"))
            .into_json()
            .unwrap()
    }

    /// An instance's file, written at `out`.
    pub fn download(&self, instance: &str, out: &Path) {
        let r = self
            .agent
            .get(&format!(
                "http://127.0.0.1:{}/instances/{instance}/file",
                self.http
            ))
            .call()
            .unwrap();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut r.into_reader(), &mut bytes).unwrap();
        std::fs::write(out, bytes).unwrap();
    }

    /// The series of the study with `study_uid`: (Modality, Orthanc ids of its instances).
    pub fn series_of(&self, study_uid: &str) -> Vec<(String, Vec<String>)> {
        let found = self.post(
            "/tools/find",
            serde_json::json!({"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": true})
                .to_string()
                .as_bytes(),
        );
        let mut out: Vec<(String, Vec<String>)> = found
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["MainDicomTags"]["Modality"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    s["Instances"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|i| i.as_str().unwrap().to_string())
                        .collect(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// Waits until the study has `n` series; fails after `seconds`.
    pub fn wait_for_series(
        &self,
        study_uid: &str,
        n: usize,
        seconds: u64,
    ) -> Vec<(String, Vec<String>)> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        loop {
            let series = self.series_of(study_uid);
            if series.len() >= n {
                return series;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the study has {series:?} after {seconds} s, not {n} series"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// xray as a node.

/// An `xray serve` with a DICOM node on `port`, results to `ORTHANC@127.0.0.1:results_port`,
/// its queue in `queue`; extra flags after.
fn node(port: u16, results_port: u16, queue: &Path, extra: &[&str]) -> crate::serve::Server {
    let mut args: Vec<String> = vec![
        "--dicom-addr".into(),
        format!("127.0.0.1:{port}"),
        "--results-to".into(),
        format!("ORTHANC@127.0.0.1:{results_port}"),
        "--results-queue".into(),
        queue.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    crate::serve::Server::start(&trained().run, &args)
}

/// A node whose results go to a closed port (they wait in `dir/queue`), auditing to
/// `dir/audit.jsonl`: the server, its DICOM port and the audit log's path.
fn lone_node(dir: &Path, extra: &[&str]) -> (crate::serve::Server, u16, PathBuf) {
    let port = free_port();
    let audit = dir.join("audit.jsonl");
    let mut args = vec!["--audit-log", audit.to_str().unwrap()];
    args.extend_from_slice(extra);
    let server = node(port, free_port(), &dir.join("queue"), &args);
    (server, port, audit)
}

/// CPU seconds (user + system) process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Runs a tool: whether it succeeded, and its stdout and stderr together.
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `echoscu` as `calling` to `called@127.0.0.1:port`: success, and its output.
fn echo(calling: &str, called: &str, port: u16) -> (bool, String) {
    run(Command::new("echoscu")
        .args(["-aet", calling, "-aec", called, "-to", "10", "127.0.0.1"])
        .arg(port.to_string()))
}

/// `storescu` of `files` as `MODALITY` to `XRAY@127.0.0.1:port`: success, and its output.
fn store(files: &[PathBuf], port: u16, extra: &[&str]) -> (bool, String) {
    run(Command::new("storescu")
        .args(["-aet", "MODALITY", "-aec", "XRAY", "-to", "60"])
        .args(extra)
        .arg("127.0.0.1")
        .arg(port.to_string())
        .args(files))
}

/// The audit log's lines.
fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The audit log's lines once `done` holds for them; fails after 10 s.
fn wait_for_audit(
    path: &Path,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let lines = audit_lines(path);
        if done(&lines) {
            return lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the audit log did not get there in 10 s: {lines:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Waits until `dir` holds no queued result.
fn wait_for_empty_queue(dir: &Path, seconds: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        let left = crate::common::files_with_extension(dir, "dcm");
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} result(s) still queued after {seconds} s",
            left.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs DCMTK (scripts/setup/dicom.sh); make test runs it"]
fn echo_is_answered_and_the_allow_list_and_called_title_are_enforced() {
    need_tools();
    let dir = tempfile::tempdir().unwrap();
    let (_server, port, audit) = lone_node(dir.path(), &["--dicom-allow", "MODALITY@127.0.0.1"]);
    let (ok, text) = echo("MODALITY", "XRAY", port);
    assert!(ok, "echo refused:\n{text}");
    let (ok, text) = echo("STRANGER", "XRAY", port);
    assert!(
        !ok && text.contains("Rejected"),
        "a stranger was let in:\n{text}"
    );
    assert!(text.contains("Calling AE Title Not Recognized"), "{text}");
    let (ok, text) = echo("MODALITY", "NOTXRAY", port);
    assert!(
        !ok && text.contains("Called AE Title Not Recognized"),
        "{text}"
    );
    // A rejection is audited after the A-ASSOCIATE-RJ went out: wait for the lines.
    let count = |lines: &[serde_json::Value], result: &str| {
        lines
            .iter()
            .filter(|l| l["dicom"] == "association" && l["result"] == result)
            .count()
    };
    let lines = wait_for_audit(&audit, |l| count(l, "rejected") >= 2);
    assert_eq!(count(&lines, "rejected"), 2, "{lines:?}");
    assert_eq!(count(&lines, "accepted"), 1, "{lines:?}");
}

#[test]
#[ignore = "needs DCMTK, dicom3tools and Orthanc (scripts/setup/dicom.sh); make test runs it"]
fn a_stored_image_comes_back_to_orthanc_as_a_report_and_an_overlay_in_its_study() {
    need_tools();
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let orthanc = Orthanc::start(port);
    let queue = dir.path().join("queue");
    let audit = dir.path().join("audit.jsonl");
    let _server = node(
        port,
        orthanc.dicom,
        &queue,
        &["--audit-log", audit.to_str().unwrap()],
    );

    // A modality sends a CR to xray with storescu.
    let cr = dir.path().join("chest.dcm");
    let ids = Ids::new("PAT-7", 1);
    write_cr(&t.data.join("opacity/opacity_00002.png"), &cr, &ids);
    let (ok, text) = store(std::slice::from_ref(&cr), port, &[]);
    assert!(ok, "storescu:\n{text}");
    let series = orthanc.wait_for_series(&ids.study_uid, 2, 60);
    let modalities: Vec<&str> = series.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(modalities, ["OT", "SR"], "{series:?}");
    let sr = dir.path().join("back.sr.dcm");
    let sc = dir.path().join("back.sc.dcm");
    orthanc.download(&series[1].1[0], &sr);
    orthanc.download(&series[0].1[0], &sc);
    for f in [&sr, &sc] {
        eprintln!("dciodvfy {}:\n{}", f.display(), assert_valid(f));
        assert_eq!(dcm_value(f, "0020,000d"), ids.study_uid);
        assert_eq!(dcm_value(f, "0010,0020"), ids.patient_id);
    }
    let text = dsrdump(&sr);
    let (label, p) = predicted(&t.run, &cr);
    assert!(
        text.contains(&format!("99XRAY,\"{label}\")")),
        "{label} not in:\n{text}"
    );
    let k = if label == "normal" { 0 } else { 1 };
    let value = probability_in_report(&text, k);
    assert!((value - p).abs() < 1e-5, "{value} vs predict's {p}");
    wait_for_empty_queue(&queue, 30);

    // The routing path of a PACS: Orthanc pushes an image of its own to xray.
    let cr2 = dir.path().join("second.dcm");
    let ids2 = Ids::new("PAT-8", 2);
    write_cr(&t.data.join("normal/normal_00002.png"), &cr2, &ids2);
    let uploaded = orthanc.post("/instances", &std::fs::read(&cr2).unwrap());
    let id = uploaded["ID"].as_str().unwrap().to_string();
    let pushed = orthanc.post(
        "/modalities/xray/store",
        serde_json::json!({"Resources": [id], "Synchronous": true})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(pushed["FailedInstancesCount"], 0, "{pushed}");
    let series = orthanc.wait_for_series(&ids2.study_uid, 3, 60);
    assert_eq!(series.len(), 3, "{series:?}");

    // The audit: two images answered, by hash of their UIDs, no patient attribute.
    let stores: Vec<serde_json::Value> = audit_lines(&audit)
        .into_iter()
        .filter(|l| l["dicom"] == "c-store")
        .collect();
    assert_eq!(stores.len(), 2, "{stores:?}");
    assert!(stores.iter().all(|l| l["status"] == "0x0000"), "{stores:?}");
    let text = std::fs::read_to_string(&audit).unwrap();
    for secret in ["PAT-7", "Test^Patient", &ids.sop_uid, &ids.study_uid] {
        assert!(!text.contains(secret), "{secret} is in the audit log");
    }
}

#[test]
#[ignore = "needs DCMTK and Orthanc (scripts/setup/dicom.sh); make test runs it"]
fn results_wait_on_disk_while_orthanc_is_down_and_arrive_once_after() {
    need_tools();
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut orthanc = Orthanc::start(port);
    orthanc.stop();
    let queue = dir.path().join("queue");
    let server = node(port, orthanc.dicom, &queue, &[]);
    let ids = Ids::new("PAT-9", 1);
    let files: Vec<PathBuf> = (0..3)
        .map(|i| {
            let f = dir.path().join(format!("img{i}.dcm"));
            let mut ids = ids.clone();
            ids.sop_uid = format!("{}{i}", ids.sop_uid);
            write_cr(
                &t.data.join(format!("opacity/opacity_0000{i}.png")),
                &f,
                &ids,
            );
            f
        })
        .collect();
    let (ok, text) = store(&files, port, &[]);
    assert!(ok, "storescu:\n{text}");
    let queued = crate::common::files_with_extension(&queue, "dcm");
    assert!(queued.len() >= 3, "{queued:?}");
    for f in &queued {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // xray restarts too: the queue is on disk.
    drop(server);
    let _server = node(port, orthanc.dicom, &queue, &[]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    orthanc.restart();
    wait_for_empty_queue(&queue, 90);
    let series = orthanc.wait_for_series(&ids.study_uid, 6, 30);
    let counts: Vec<usize> = series.iter().map(|(_, i)| i.len()).collect();
    assert_eq!(
        series.len(),
        6,
        "one SR and one SC series per image: {series:?}"
    );
    assert!(
        counts.iter().all(|&n| n == 1),
        "each result once: {series:?}"
    );
}

#[test]
#[ignore = "needs DCMTK, dicom3tools and Orthanc (scripts/setup/dicom.sh); make test runs it"]
fn a_photograph_gets_a_report_that_says_so_and_no_overlay() {
    need_tools();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let orthanc = Orthanc::start(port);
    let queue = dir.path().join("queue");
    let _server = node(port, orthanc.dicom, &queue, &[]);
    let picture = crate::ood::colour_pictures(&dir.path().join("pictures"), 1).remove(0);
    let photo = dir.path().join("photo.dcm");
    let ids = Ids::new("PAT-10", 1);
    write_image(&image::open(&picture).unwrap(), true, &photo, &ids);
    let (ok, text) = store(std::slice::from_ref(&photo), port, &[]);
    assert!(ok, "storescu:\n{text}");
    let series = orthanc.wait_for_series(&ids.study_uid, 1, 60);
    wait_for_empty_queue(&queue, 30);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let series_now = orthanc.series_of(&ids.study_uid);
    assert_eq!(
        series_now.len(),
        1,
        "a report only, no overlay: {series_now:?}"
    );
    let (_, sr_ids) = series.iter().find(|(m, _)| m == "SR").unwrap();
    let sr = dir.path().join("ood.sr.dcm");
    orthanc.download(&sr_ids[0], &sr);
    assert_valid(&sr);
    let text = dsrdump(&sr);
    assert!(
        text.contains("(OOD,99XRAY,\"Not the kind of image this model was trained on\")"),
        "{text}"
    );
    assert!(
        !text.contains("CLASS-"),
        "a flagged image got a class:\n{text}"
    );
}

#[test]
#[ignore = "needs DCMTK (scripts/setup/dicom.sh); make test runs it"]
fn jpeg2000_is_negotiated_away_and_truncated_pixels_fail_with_a_status() {
    need_tools();
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let (_server, port, audit) = lone_node(dir.path(), &[]);
    // JPEG 2000: the presentation context is rejected at association.
    let j2k = dir.path().join("j2k.dcm");
    crate::formats::Dicom::new(8, 8, vec![0; 64])
        .jpeg2000()
        .write(&j2k);
    let (ok, text) = store(std::slice::from_ref(&j2k), port, &["-xv", "-R", "-d"]);
    assert!(!ok, "a JPEG 2000 image was taken:\n{text}");
    // storescu's debug log of the A-ASSOCIATE-AC: the JPEG 2000 context is refused.
    assert!(text.contains("=JPEG2000LosslessOnly"), "{text}");
    assert!(text.contains("(Transfer Syntaxes Not Supported)"), "{text}");
    assert!(
        !audit_lines(&audit).iter().any(|l| l["dicom"] == "c-store"),
        "nothing was accepted, so nothing was stored"
    );

    // Pixel data shorter than its rows x columns: refused with a failure status.
    let cr = dir.path().join("chest.dcm");
    let ids = Ids::new("PAT-11", 1);
    write_cr(&t.data.join("normal/normal_00003.png"), &cr, &ids);
    let mut obj = dicom_object::open_file(&cr).unwrap();
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8(vec![7u8; 100].into()),
    ));
    let short = dir.path().join("short.dcm");
    obj.write_to_file(&short).unwrap();
    let (_, text) = store(std::slice::from_ref(&short), port, &["-v"]);
    let lines = audit_lines(&audit);
    assert!(
        text.to_lowercase()
            .replace(' ', "")
            .contains("cannotunderstand"),
        "{text}\n{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["dicom"] == "c-store" && l["status"] == "0xC000"),
        "{lines:?}"
    );
    // ...and the node keeps serving.
    let (ok, text) = echo("MODALITY", "XRAY", port);
    assert!(ok, "{text}");
}

#[test]
#[ignore = "needs DCMTK and Orthanc (scripts/setup/dicom.sh); make test runs it"]
fn eight_associations_of_twenty_images_are_each_answered_once_within_the_memory_bound() {
    need_tools();
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let orthanc = Orthanc::start(port);
    let queue = dir.path().join("queue");
    let audit = dir.path().join("audit.jsonl");
    let mut server = node(
        port,
        orthanc.dicom,
        &queue,
        &[
            "--audit-log",
            audit.to_str().unwrap(),
            "--dicom-max-associations",
            "8",
            "--queue",
            "2",
            "--max-upload-mb",
            "1",
            "--max-megapixels",
            "1",
            "--max-connections",
            "16",
        ],
    );
    let memory = server.next_line();
    let bound_mib: u64 = memory
        .strip_prefix("memory: at most ")
        .and_then(|m| m.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{memory}"));
    assert!(memory.contains("DICOM associations"), "{memory}");
    let pid = server.child.id();
    let start = crate::hostile::rss(pid);
    let peak = crate::hostile::Peak::watch(pid);
    let classes = ["normal", "opacity"];
    let batches: Vec<Vec<PathBuf>> = (0..8)
        .map(|a| {
            let ids = Ids::new(&format!("PAT-C{a}"), 0);
            (0..20)
                .map(|i| {
                    let f = dir.path().join(format!("a{a}_{i}.dcm"));
                    let mut ids = ids.clone();
                    ids.sop_uid = format!("{}{a}{i:02}", ids.sop_uid);
                    let png = t.data.join(classes[i % 2]).join(format!(
                        "{}_{:05}.png",
                        classes[i % 2],
                        10 + i
                    ));
                    write_cr(&png, &f, &ids);
                    f
                })
                .collect()
        })
        .collect();
    let started = std::time::Instant::now();
    let senders: Vec<_> = batches
        .into_iter()
        .map(|files| std::thread::spawn(move || store(&files, port, &[])))
        .collect();
    for s in senders {
        let (ok, text) = s.join().unwrap();
        assert!(ok, "storescu:\n{text}");
    }
    let took = started.elapsed();
    let peak = peak.stop();
    wait_for_empty_queue(&queue, 120);
    let stores: Vec<serde_json::Value> = audit_lines(&audit)
        .into_iter()
        .filter(|l| l["dicom"] == "c-store")
        .collect();
    assert_eq!(stores.len(), 160);
    assert!(stores.iter().all(|l| l["status"] == "0x0000"), "{stores:?}");
    let distinct: std::collections::HashSet<&str> = stores
        .iter()
        .map(|l| l["sop_instance_uid_sha256"].as_str().unwrap())
        .collect();
    assert_eq!(distinct.len(), 160, "an image was answered twice");
    let stats = orthanc.post(
        "/tools/find",
        br#"{"Level": "Instance", "Query": {"Modality": "SR"}}"#,
    );
    assert_eq!(stats.as_array().unwrap().len(), 160, "one report per image");
    let over = peak.saturating_sub(start) >> 20;
    eprintln!(
        "8 associations x 20 images in {:.1} s; resident memory {} MiB at start, peak {} MiB \
         ({over} MiB over; bound {bound_mib} MiB)",
        took.as_secs_f64(),
        start >> 20,
        peak >> 20
    );
    assert!(
        over <= bound_mib,
        "{over} MiB over the start, bound {bound_mib} MiB"
    );
}

#[test]
#[ignore = "needs DCMTK (scripts/setup/dicom.sh); make test runs it"]
fn dicom_tls_takes_tls_associations_and_refuses_plain_ones() {
    need_tools();
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_pem, cert.pem()).unwrap();
    std::fs::write(&key_pem, signing_key.serialize_pem()).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_pem, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let (server, port, audit) = lone_node(
        dir.path(),
        &[
            "--tls-cert",
            cert_pem.to_str().unwrap(),
            "--tls-key",
            key_pem.to_str().unwrap(),
            "--dicom-tls",
        ],
    );
    // Connections that close at once or mid-handshake cost nothing afterwards (dicom-ul's
    // blocking TLS acceptor would spin on them for ever).
    let before = cpu_seconds(server.child.id());
    for partial in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
        use std::io::Write;
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(partial).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    let spent = cpu_seconds(server.child.id()) - before;
    assert!(
        spent < 0.5,
        "the node used {spent:.2} s of CPU after two dropped connections"
    );
    let tls = ["+tla", "+cf", cert_pem.to_str().unwrap()];
    let (ok, text) = run(Command::new("echoscu")
        .args(tls)
        .args(["-aet", "MODALITY", "-aec", "XRAY", "-to", "10", "127.0.0.1"])
        .arg(port.to_string()));
    assert!(ok, "echo over TLS:\n{text}");
    let cr = dir.path().join("chest.dcm");
    write_cr(
        &t.data.join("normal/normal_00004.png"),
        &cr,
        &Ids::new("PAT-12", 1),
    );
    let (ok, text) = store(std::slice::from_ref(&cr), port, &tls);
    assert!(ok, "store over TLS:\n{text}");
    let (ok, text) = echo("MODALITY", "XRAY", port);
    assert!(
        !ok,
        "a plain association was taken on the TLS port:\n{text}"
    );
    let lines = audit_lines(&audit);
    assert!(
        lines
            .iter()
            .any(|l| l["dicom"] == "c-store" && l["status"] == "0x0000"),
        "{lines:?}"
    );
}

#[test]
#[ignore = "needs Orthanc (scripts/setup/dicom.sh); make test runs it"]
fn dicom_send_delivers_what_predict_wrote() {
    need_tools();
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let orthanc = Orthanc::start(free_port());
    let cr = dir.path().join("chest.dcm");
    let ids = Ids::new("PAT-13", 1);
    write_cr(&t.data.join("opacity/opacity_00005.png"), &cr, &ids);
    let out = dir.path().join("results");
    xray()
        .args(["predict", "--checkpoint"])
        .arg(&t.run)
        .arg(&cr)
        .arg("--dicom-out")
        .arg(&out)
        .arg("--heatmap")
        .stdout_ok();
    let sent = xray()
        .arg("dicom-send")
        .arg(&out)
        .args(["--to", &format!("ORTHANC@127.0.0.1:{}", orthanc.dicom)])
        .stdout_ok();
    assert_eq!(sent.matches("\tstored").count(), 2, "{sent}");
    let series = orthanc.wait_for_series(&ids.study_uid, 2, 30);
    let modalities: Vec<&str> = series.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(modalities, ["OT", "SR"]);
    // A peer that is not there: one line, exit 1.
    let out = xray()
        .arg("dicom-send")
        .arg(&out)
        .args(["--to", &format!("ORTHANC@127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: cannot associate with ORTHANC@127.0.0.1:"),
        "{err}"
    );
}

#[test]
#[ignore = "needs DCMTK and Orthanc with its DICOMweb plugin (scripts/setup/dicom.sh); make test runs it"]
fn results_go_by_stow_rs_to_a_dicomweb_pacs_without_showing_its_password() {
    need_tools();
    assert!(
        Path::new(DICOMWEB_PLUGIN).exists(),
        "Orthanc's DICOMweb plugin is not installed (scripts/setup/dicom.sh installs it)"
    );
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let orthanc = Orthanc::start_with(port, true);
    let queue = dir.path().join("queue");
    let audit = dir.path().join("audit.jsonl");
    let url = format!("http://xray@127.0.0.1:{}/dicom-web", orthanc.http);
    let password = dir.path().join("stow-password");
    std::fs::write(&password, "s3cret-pw\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut server = crate::serve::Server::start(
        &t.run,
        &[
            "--dicom-addr",
            &format!("127.0.0.1:{port}"),
            "--results-stow",
            &url,
            "--results-stow-password-file",
            password.to_str().unwrap(),
            "--results-queue",
            queue.to_str().unwrap(),
            "--audit-log",
            audit.to_str().unwrap(),
        ],
    );
    let _memory = server.next_line();
    let node_line = server.next_line();
    assert!(
        node_line.contains(&format!(
            "results to http://127.0.0.1:{}/dicom-web/studies",
            orthanc.http
        )),
        "{node_line}"
    );
    let cr = dir.path().join("chest.dcm");
    let ids = Ids::new("PAT-14", 1);
    write_cr(&t.data.join("opacity/opacity_00006.png"), &cr, &ids);
    let (ok, text) = store(std::slice::from_ref(&cr), port, &[]);
    assert!(ok, "storescu:\n{text}");
    let series = orthanc.wait_for_series(&ids.study_uid, 2, 60);
    let modalities: Vec<&str> = series.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(modalities, ["OT", "SR"]);
    wait_for_empty_queue(&queue, 30);
    let logged = std::fs::read_to_string(&audit).unwrap();
    assert!(logged.contains("\"results-sent\""), "{logged}");
    assert!(!logged.contains("s3cret") && !node_line.contains("s3cret"));
    // Not on the command line, where `ps` shows it.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", server.child.id())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("s3cret"));
}

#[test]
#[ignore = "needs DCMTK (scripts/setup/dicom.sh); make test runs it"]
fn a_silent_connection_is_closed_after_the_artim_time_and_the_node_keeps_serving() {
    use std::io::Read;
    need_tools();
    let dir = tempfile::tempdir().unwrap();
    let (_server, port, audit) = lone_node(dir.path(), &["--header-timeout", "1"]);
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = silent.read(&mut buf).unwrap_or(0);
    let waited = started.elapsed().as_secs_f64();
    assert_eq!(n, 0, "the node answered a connection that sent nothing");
    assert!((0.9..5.0).contains(&waited), "closed after {waited:.1} s");
    let (ok, text) = echo("MODALITY", "XRAY", port);
    assert!(ok, "{text}");
    wait_for_audit(&audit, |lines| {
        lines
            .iter()
            .any(|l| l["dicom"] == "association" && l["result"] == "rejected")
    });
}

/// A test CA: its certificate's PEM and what signs with it.
struct TestCa {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate for `cn` signed by this CA (expired with `expired`), written as
    /// `dir/NAME.pem` and `dir/NAME.key` (0600): their paths.
    fn issue(&self, dir: &Path, name: &str, cn: &str, expired: bool) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (pem, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&pem, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        (pem, key_path)
    }
}

#[test]
#[ignore = "needs DCMTK (scripts/setup/dicom.sh); make test runs it"]
fn mutual_tls_admits_only_certificates_of_the_client_ca_and_the_listed_subject() {
    need_tools();
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca, stranger_ca) = (TestCa::new("Hospital CA"), TestCa::new("Other CA"));
    let ca_pem = d.join("ca.pem");
    std::fs::write(&ca_pem, &ca.pem).unwrap();
    let (server_cert, server_key) = ca.issue(d, "server", "xray.hospital.example", false);
    let (good_cert, good_key) = ca.issue(d, "modality", "ct1.hospital.example", false);
    let (other_cert, other_key) = ca.issue(d, "other", "ct2.hospital.example", false);
    let (old_cert, old_key) = ca.issue(d, "expired", "ct1.hospital.example", true);
    let (foreign_cert, foreign_key) =
        stranger_ca.issue(d, "foreign", "ct1.hospital.example", false);
    let (_server, port, audit) = lone_node(
        d,
        &[
            "--tls-cert",
            server_cert.to_str().unwrap(),
            "--tls-key",
            server_key.to_str().unwrap(),
            "--dicom-tls",
            "--dicom-tls-client-ca",
            ca_pem.to_str().unwrap(),
            "--dicom-allow",
            "MODALITY@127.0.0.1/ct1.hospital.example",
        ],
    );
    let echo_with = |client: Option<(&Path, &Path)>| {
        let mut cmd = Command::new("echoscu");
        match client {
            Some((cert, key)) => cmd.arg("+tls").arg(key).arg(cert),
            None => cmd.arg("+tla"),
        };
        run(cmd
            .arg("+cf")
            .arg(&ca_pem)
            .args(["-aet", "MODALITY", "-aec", "XRAY", "-to", "10", "127.0.0.1"])
            .arg(port.to_string()))
    };
    let (ok, text) = echo_with(Some((&good_cert, &good_key)));
    assert!(ok, "the listed certificate was refused:\n{text}");
    for (what, client) in [
        ("no client certificate", None),
        (
            "a certificate of another CA",
            Some((foreign_cert.as_path(), foreign_key.as_path())),
        ),
        (
            "an expired certificate",
            Some((old_cert.as_path(), old_key.as_path())),
        ),
        (
            "a certificate of the CA for another subject",
            Some((other_cert.as_path(), other_key.as_path())),
        ),
    ] {
        let (ok, text) = echo_with(client);
        assert!(!ok, "{what} was let in:\n{text}");
    }
    let cr = d.join("chest.dcm");
    write_cr(
        &t.data.join("normal/normal_00004.png"),
        &cr,
        &Ids::new("PAT-13", 1),
    );
    let tls = [
        "+tls",
        good_key.to_str().unwrap(),
        good_cert.to_str().unwrap(),
        "+cf",
        ca_pem.to_str().unwrap(),
    ];
    let (ok, text) = store(std::slice::from_ref(&cr), port, &tls);
    assert!(ok, "storescu over mutual TLS:\n{text}");
    let lines = wait_for_audit(&audit, |lines| {
        lines
            .iter()
            .any(|l| l["dicom"] == "c-store" && l["status"] == "0x0000")
    });
    assert!(
        lines
            .iter()
            .any(|l| l["certificate_cn"] == "ct1.hospital.example"),
        "{lines:?}"
    );
    // Off the loopback, plain DICOM must be asked for by name.
    let out = xray()
        .args(["serve", "--checkpoint"])
        .arg(&t.run)
        .args([
            "--dicom-addr",
            "0.0.0.0:0",
            "--results-to",
            "PACS@127.0.0.1:4242",
        ])
        .arg("--results-queue")
        .arg(d.join("q2"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--insecure-dicom"), "{err}");
}
