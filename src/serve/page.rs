//! The single page of `xray serve`: upload an image, see the label, a bar per class and the
//! Grad-CAM overlay. No outside resources: it works on a hospital network with no internet.

use serde_json::Value;

use crate::report::page::escape_html as esc;

/// The page, with the model's name and validation figures filled in.
pub fn render(info: &Value, max_upload_bytes: usize) -> String {
    let fig = |v: &Value| v.as_f64().map_or("n/a".to_string(), |v| format!("{v:.3}"));
    let model_line = format!(
        "Model {} ({}), classes {}; validation accuracy {}, AUC {}.",
        esc(info["model"].as_str().unwrap_or("")),
        esc(info["arch"].as_str().unwrap_or("")),
        esc(&info["classes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()),
        fig(&info["validation"]["accuracy"]),
        fig(&info["validation"]["auc"]),
    );
    PAGE.replace("{{MODEL}}", &model_line)
        .replace("{{MAX_MB}}", &format!("{}", max_upload_bytes >> 20))
}

const PAGE: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>xray</title>
<link rel="icon" href="data:,">
<style>
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em}.note{color:#555}
.warn{background:#fff4e0;border:1px solid #f0c36d;padding:.5em .8em;border-radius:4px}
#drop{border:2px dashed #999;border-radius:6px;padding:1.2em;text-align:center;margin:1em 0}
#result{display:none;margin-top:1em}.row{display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start}
#label{font-size:2em;font-weight:700}#prob{font-size:1.2em;color:#444}
.bar{margin:.3em 0}.bar span{display:inline-block;width:9em}.track{display:inline-block;width:260px;height:14px;background:#eee;vertical-align:middle}
.fill{height:100%;background:#3b6fd8}#overlay{width:380px;max-width:100%;border:1px solid #ddd}
#error{color:#b00020;font-weight:600}
</style>
</head>
<body>
<h1>xray</h1>
<p class="note">{{MODEL}}</p>
<p class="warn">Research use, not a diagnosis.</p>
<form id="form">
<div id="drop">
<input id="file" name="image" type="file" accept=".png,.jpg,.jpeg,.bmp,.tif,.tiff,.dcm,image/*">
<p class="note">PNG, JPEG, BMP, TIFF or DICOM, up to {{MAX_MB}} MiB.</p>
</div>
</form>
<p id="status" class="note"></p>
<p id="error"></p>
<div id="result">
<div class="row">
<div><div id="label"></div><div id="prob"></div><div id="bars"></div></div>
<div><img id="overlay" alt="Grad-CAM overlay"><div class="note">Grad-CAM: red is where the model found most evidence for the label.</div></div>
</div>
</div>
<script>
const file = document.getElementById('file');
const status = document.getElementById('status');
const err = document.getElementById('error');
file.addEventListener('change', async () => {
  if (!file.files.length) return;
  const body = new FormData();
  body.append('image', file.files[0]);
  err.textContent = '';
  status.textContent = 'Reading ' + file.files[0].name + '...';
  document.getElementById('result').style.display = 'none';
  try {
    const r = await fetch('/api/predict?heatmap=true', {method: 'POST', body});
    const j = await r.json();
    if (!r.ok) { err.textContent = j.error || ('HTTP ' + r.status); status.textContent = ''; return; }
    document.getElementById('label').textContent = j.label;
    document.getElementById('prob').textContent = (100 * j.probability).toFixed(1) + '%';
    const bars = document.getElementById('bars');
    bars.innerHTML = '';
    for (const [name, p] of Object.entries(j.probabilities)) {
      const row = document.createElement('div'); row.className = 'bar';
      const label = document.createElement('span'); label.textContent = name;
      const track = document.createElement('div'); track.className = 'track';
      const fill = document.createElement('div'); fill.className = 'fill'; fill.style.width = (100 * p).toFixed(1) + '%';
      track.appendChild(fill);
      const pct = document.createElement('span'); pct.textContent = ' ' + (100 * p).toFixed(1) + '%'; pct.style.width = 'auto';
      row.append(label, track, pct); bars.appendChild(row);
    }
    document.getElementById('overlay').src = j.gradcam;
    document.getElementById('result').style.display = 'block';
    status.textContent = j.path + ' · model ' + j.model;
  } catch (e) {
    err.textContent = 'Request failed: ' + e; status.textContent = '';
  }
});
</script>
</body>
</html>
"#;
