const saved = sessionStorage.getItem('xray-token');
if (saved && document.getElementById('token')) document.getElementById('token').value = saved;
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
    // With tokens, the one typed above goes with each request (kept for this tab only).
    const headers = {};
    const token = document.getElementById('token');
    if (token) {
      sessionStorage.setItem('xray-token', token.value.trim());
      headers['Authorization'] = 'Bearer ' + token.value.trim();
    }
    const r = await fetch('/api/predict?heatmap=true', {method: 'POST', body, headers});
    const j = await r.json();
    if (!r.ok) {
      err.textContent = r.status === 401 ? 'Access refused: check the access token.' : (j.error || ('HTTP ' + r.status));
      status.textContent = ''; file.value = ''; return;
    }
    // Out of distribution: the guard's message before, and instead of, any class.
    const ood = document.getElementById('ood');
    const answer = document.getElementById('answer');
    if (j.out_of_distribution) {
      ood.textContent = j.message.charAt(0).toUpperCase() + j.message.slice(1) + '. No class is given.';
      ood.style.display = 'block'; answer.style.display = 'none';
      document.getElementById('result').style.display = 'block';
      status.textContent = j.path + ' · model ' + j.model + ' · out-of-distribution score ' + j.ood_score.toFixed(0) + ' (refused above ' + j.ood_threshold.toFixed(0) + ')';
      return;
    }
    ood.style.display = 'none'; answer.style.display = 'flex';
    // Multi-label: the findings over their thresholds, each bar with its threshold marked.
    const multi = Array.isArray(j.findings);
    document.getElementById('label').textContent = multi
      ? (j.findings.length ? 'Findings: ' + j.findings.join(', ') : 'No Finding')
      : j.label;
    document.getElementById('prob').textContent = multi ? '' : (100 * j.probability).toFixed(1) + '%';
    const bars = document.getElementById('bars');
    bars.innerHTML = '';
    // Most probable first, so that with many classes (23 for DermNet) the answer leads; names
    // wrap in their column instead of being cut.
    const entries = Object.entries(j.probabilities).sort((a, b) => b[1] - a[1]);
    for (const [name, p] of entries) {
      const label = document.createElement('div'); label.className = 'name'; label.textContent = name;
      const track = document.createElement('div'); track.className = 'track';
      const fill = document.createElement('div'); fill.className = 'fill'; fill.style.width = (100 * p).toFixed(1) + '%';
      track.appendChild(fill);
      if (multi && j.thresholds && j.thresholds[name] !== undefined) {
        const mark = document.createElement('div'); mark.className = 'mark';
        mark.style.left = (100 * j.thresholds[name]).toFixed(1) + '%';
        mark.title = 'threshold ' + (100 * j.thresholds[name]).toFixed(1) + '%';
        track.appendChild(mark);
      }
      const pct = document.createElement('div'); pct.className = 'pct'; pct.textContent = (100 * p).toFixed(1) + '%';
      bars.append(label, track, pct);
    }
    document.getElementById('overlay').src = j.gradcam;
    document.getElementById('result').style.display = 'block';
    status.textContent = j.path + ' · model ' + j.model;
  } catch (e) {
    err.textContent = 'Request failed: ' + e; status.textContent = '';
  }
});
