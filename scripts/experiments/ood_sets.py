"""Out-of-distribution sets for scripts/experiments/ood_measure.sh, and their scores.

  ood_sets.py build RUN_DIR OUT   writes OUT/sets/<name>/ image folders
  ood_sets.py score OUT           reads OUT/<name>.jsonl (xray predict --format json) and prints
                                  AUROC per set against the in-distribution test set, and each
                                  set's flag rate at the run's stored threshold

Sets, all built offline: the run's own test split (in distribution); the same X-rays rotated by
90 degrees and inverted; synth images at half the exposure; scikit-image's bundled sample images
(photos, a retina fundus image, microscopy, text; its MRI slices need a download, so they are
not among them) with flips and crops; uniform noise.
"""

import csv
import json
import os
import subprocess
import sys
import tomllib

import numpy as np
from PIL import Image


def test_images(run):
    with open(os.path.join(run, "config.toml"), "rb") as f:
        split_dir = tomllib.load(f)["data"]["split"]
    with open(os.path.join(split_dir, "split_report.json")) as f:
        data_dir = json.load(f)["data_dir"]
    with open(os.path.join(split_dir, "split.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    return [os.path.join(data_dir, r["path"]) for r in rows]


def save(folder, name, array):
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(os.path.join(folder, name))


def build(run, out, xray):
    sets = os.path.join(out, "sets")
    tests = test_images(run)
    inside = os.path.join(sets, "in_test")
    os.makedirs(inside, exist_ok=True)
    for i, p in enumerate(tests):
        link = os.path.join(inside, f"{i:04d}_{os.path.basename(p)}")
        if not os.path.exists(link):
            os.symlink(os.path.abspath(p), link)
    for i, p in enumerate(tests[:200]):
        g = np.asarray(Image.open(p).convert("L"))
        save(os.path.join(sets, "xray_rotated_90"), f"{i:04d}.png", np.rot90(g))
        save(os.path.join(sets, "xray_inverted"), f"{i:04d}.png", 255 - g)
    synth = os.path.join(out, "synth")
    if not os.path.isdir(synth):
        subprocess.run([xray, "synth", "--per-class", "100", "--size", "256", "--out", synth],
                       check=True)
    n = 0
    for root, _, files in os.walk(synth):
        for f in sorted(files):
            if f.endswith(".png"):
                g = np.asarray(Image.open(os.path.join(root, f)).convert("L"), dtype=np.float64)
                save(os.path.join(sets, "synth_half_exposure"), f"{n:04d}.png", g * 0.5)
                n += 1
    import skimage.data as d

    names = ["astronaut", "camera", "coffee", "chelsea", "rocket", "cat", "coins", "moon",
             "page", "text", "horse", "hubble_deep_field", "immunohistochemistry", "retina",
             "brick", "grass", "gravel", "colorwheel", "microaneurysms", "logo"]
    for name in names:
        a = np.asarray(getattr(d, name)())
        if a.ndim == 3 and a.shape[2] == 4:
            a = a[:, :, :3]
        if a.dtype != np.uint8:
            a = a.astype(np.float64)
            a = (255 * (a - a.min()) / max(a.max() - a.min(), 1e-9)).astype(np.uint8)
        h, w = a.shape[:2]
        crop = a[h // 8: h - h // 8, w // 8: w - w // 8]
        for j, v in enumerate([a, a[:, ::-1], crop, crop[::-1]]):
            save(os.path.join(sets, "skimage_samples"), f"{name}_{j}.png", np.ascontiguousarray(v))
    rng = np.random.default_rng(0)
    for i in range(100):
        save(os.path.join(sets, "uniform_noise"), f"{i:03d}.png",
             rng.integers(0, 256, (256, 256, 3)))


def score(out):
    """AUROC of the guard's score and, for comparison, of the classifier's own confidence
    (one minus the top probability, the "maximum softmax probability" baseline)."""
    from sklearn.metrics import roc_auc_score

    def load(name):
        with open(os.path.join(out, f"{name}.jsonl")) as f:
            lines = [json.loads(l) for l in f if l.strip()]
        return (np.array([l["ood_score"] for l in lines]),
                np.array([1.0 - max(l["probabilities"].values()) for l in lines]),
                np.array([bool(l["out_of_distribution"]) for l in lines]))

    inside, inside_msp, inside_flags = load("in_test")
    rows = [("in_test (in distribution)", len(inside), None, None, inside_flags.mean())]
    for name in ["xray_rotated_90", "xray_inverted", "synth_half_exposure", "skimage_samples",
                 "uniform_noise"]:
        s, msp, flags = load(name)
        y = np.r_[np.zeros(len(inside)), np.ones(len(s))]
        rows.append((name, len(s), roc_auc_score(y, np.r_[inside, s]),
                     roc_auc_score(y, np.r_[inside_msp, msp]), flags.mean()))
    table = ["| set | images | AUROC, guard (Mahalanobis) | AUROC, classifier confidence | "
             "flagged at the stored threshold |",
             "|---|---|---|---|---|"]
    fmt = lambda v: "" if v is None else f"{v:.4f}"
    for name, n, auc, msp, rate in rows:
        table.append(f"| {name} | {n} | {fmt(auc)} | {fmt(msp)} | {100 * rate:.1f}% |")
    text = "\n".join(table)
    print(text)
    with open(os.path.join(out, "ood_table.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    if sys.argv[1] == "build":
        build(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "target/release/xray")
    else:
        score(sys.argv[2])
