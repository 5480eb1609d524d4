//! `xray export --format torchscript`: the module loads in PyTorch (the wheel that
//! scripts/setup/libtorch.sh installs) and in tch's CModule, and both give `xray predict`'s
//! probabilities to 1e-5 on the same preprocessed tensors; its sidecar says how to use it; a
//! run folder without weights is exit 2.

use std::path::PathBuf;

use tch::{CModule, Device, Kind};

use crate::common::{read_json, trained, xray, RunOk};

/// The Python of the torch wheel the build uses (`LIBTORCH` is its site-packages/torch).
fn torch_python() -> Option<PathBuf> {
    let torch = PathBuf::from(std::env::var_os("LIBTORCH")?);
    let python = torch.ancestors().nth(4)?.join("bin/python");
    python.is_file().then_some(python)
}

#[test]
fn torchscript_export_matches_predict_in_pytorch_and_tch() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("model.pt");
    xray()
        .args(["export", "--format", "torchscript", "--checkpoint"])
        .arg(&t.run)
        .arg("-o")
        .arg(&module)
        .assert()
        .success();
    let sidecar = read_json(&dir.path().join("model.pt.json"));
    assert_eq!(sidecar["classes"], serde_json::json!(["normal", "opacity"]));
    assert_eq!(sidecar["input_size"], 64);
    assert_eq!(sidecar["ood"]["method"], "mahalanobis");
    assert!(dir.path().join("model.pt.ood.safetensors").is_file());

    // The same preprocessed tensors xray predicts from.
    let predictor = xray::infer::Predictor::load(&t.run, Device::Cpu).unwrap();
    let pixels = t.first_pixels(&predictor);
    let expected = predictor
        .probabilities_of_pixels(&pixels, 8, false)
        .unwrap()
        .probs;
    let refs: Vec<&[u8]> = pixels.iter().map(|p| p.as_slice()).collect();
    let xs = predictor.input_tensor(&refs);

    let loaded = CModule::load(&module).unwrap();
    let out = loaded.forward_ts(&[&xs]).unwrap().to_kind(Kind::Double);
    let mut worst = 0.0f64;
    for (i, row) in expected.iter().enumerate() {
        for (j, &p) in row.iter().enumerate() {
            worst = worst.max((out.double_value(&[i as i64, j as i64]) - p).abs());
        }
    }
    assert!(worst < 1e-5, "tch CModule differs from predict by {worst}");

    let Some(python) = torch_python() else {
        panic!("the torch wheel's python is needed (LIBTORCH unset: run through make test)");
    };
    let raw = dir.path().join("inputs.f32");
    let floats: Vec<f32> = Vec::<f32>::try_from(xs.flatten(0, -1)).unwrap();
    std::fs::write(
        &raw,
        floats
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let script = "import sys, json, torch\n\
        m = torch.jit.load(sys.argv[1])\n\
        x = torch.frombuffer(bytearray(open(sys.argv[2], 'rb').read()), dtype=torch.float32)\n\
        x = x.view(-1, 1, 64, 64)\n\
        with torch.no_grad():\n    print(json.dumps(m(x).double().tolist()))\n";
    let run = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(&module)
        .arg(&raw)
        .output_ok();

    let torch_out: Vec<Vec<f64>> = serde_json::from_slice(&run.stdout).unwrap();
    let mut worst = 0.0f64;
    for (a, b) in torch_out.iter().zip(&expected) {
        for (x, y) in a.iter().zip(b) {
            worst = worst.max((x - y).abs());
        }
    }
    assert_eq!(torch_out.len(), expected.len());
    eprintln!("torchscript export: PyTorch differs from xray predict by at most {worst:.2e}");
    assert!(worst < 1e-5, "PyTorch differs from predict by {worst}");
}

#[test]
fn exporting_a_folder_without_weights_is_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    xray()
        .arg("export")
        .arg("--checkpoint")
        .arg(dir.path())
        .arg("-o")
        .arg(dir.path().join("m.pt"))
        .assert()
        .code(2);
}
