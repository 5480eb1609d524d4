//! `precision = "auto"` on a CPU that computes bfloat16 in hardware: bfloat16 only where it
//! measures faster. Having the instructions is not enough: MobileNetV2's depthwise convolutions
//! are memory-bound, and on an AVX512-BF16 CPU its training steps and its inference ran slower
//! in bf16 than in float32 (BENCHMARKS.md). So the first run of a model at a size times a few
//! steps in both, keeps bf16 only at [`MIN_SPEEDUP`] or more, and remembers the two times in
//! the xray cache folder ([`cache_file`]) for the next run on this machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::fsutil::{cache_dir, write_json_atomic};

/// bf16 is kept only when its step is at least this many times faster than float32's: below
/// it, the gain does not pay for bf16's coarser arithmetic (a bf16-trained model's
/// probabilities move by up to 0.15 between the precisions it is run in).
pub const MIN_SPEEDUP: f64 = 1.15;

/// Timed steps per precision, after one warm-up step each (oneDNN builds its kernels then).
pub const ROUNDS: usize = 3;

/// The median time of one step in each precision, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepTimes {
    /// float32.
    pub fp32_s: f64,
    /// bfloat16 autocast, channels-last.
    pub bf16_s: f64,
}

impl StepTimes {
    /// How many times faster bf16 is (above 1: faster).
    pub fn speedup(&self) -> f64 {
        self.fp32_s / self.bf16_s
    }

    /// Whether bf16 is worth it: at least [`MIN_SPEEDUP`] times faster.
    pub fn prefers_bf16(&self) -> bool {
        self.speedup() >= MIN_SPEEDUP
    }
}

/// What `auto` measured and chose, for the log and `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoChoice {
    /// What was timed, e.g. "training step of 32 images at 224 px".
    pub timed: String,
    /// The two step times.
    #[serde(flatten)]
    pub times: StepTimes,
    /// "bf16" or "fp32".
    pub chosen: String,
    /// Whether the times came from the cache (an earlier run on this machine) rather than
    /// being measured now.
    pub cached: bool,
}

impl AutoChoice {
    /// The choice `times` make.
    fn of(timed: &str, times: StepTimes, cached: bool) -> AutoChoice {
        AutoChoice {
            timed: timed.to_string(),
            times,
            chosen: if times.prefers_bf16() { "bf16" } else { "fp32" }.to_string(),
            cached,
        }
    }

    /// Whether bf16 was chosen.
    pub fn bf16(&self) -> bool {
        self.chosen == "bf16"
    }

    /// One line for the log: the choice, the two times and the rule.
    pub fn note(&self) -> String {
        let how = if self.cached {
            "measured on this machine before"
        } else {
            "measured now"
        };
        format!(
            "auto: a {} took {:.3} s in fp32 and {:.3} s in bf16 ({how}), bf16 {:.2}x; bf16 is \
             kept at {MIN_SPEEDUP}x or more",
            self.timed,
            self.times.fp32_s,
            self.times.bf16_s,
            self.times.speedup()
        )
    }
}

/// The cache of step times: `XRAY_CACHE_DIR` or `~/.cache/xray`, file `precision.json`.
pub fn cache_file() -> Option<PathBuf> {
    cache_dir().map(|d| d.join("precision.json"))
}

/// What identifies this machine's arithmetic in the cache: the CPU model, the thread count,
/// and this xray (and so libtorch) version.
fn machine_key() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    format!(
        "{cpu}|{} threads|xray {}",
        tch::get_num_threads(),
        env!("CARGO_PKG_VERSION")
    )
}

fn read_cache(path: Option<&Path>) -> BTreeMap<String, StepTimes> {
    path.and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The choice for `workload` (what is timed, e.g. "training step of 32 images at 224 px",
/// plus anything else that changes the times, e.g. the architecture): the cached times of this
/// machine, or `measure`'s, which are then cached. A cache that cannot be written only costs
/// the next run a measurement.
pub fn choose(
    workload: &str,
    timed: &str,
    measure: impl FnOnce() -> Result<StepTimes>,
) -> Result<AutoChoice> {
    choose_with(cache_file(), workload, timed, measure)
}

/// [`choose`] with the cache in `cache_file` (none: measured every time).
fn choose_with(
    cache_file: Option<PathBuf>,
    workload: &str,
    timed: &str,
    measure: impl FnOnce() -> Result<StepTimes>,
) -> Result<AutoChoice> {
    let key = format!("{workload}|{}", machine_key());
    let usable = |t: &StepTimes| t.fp32_s > 0.0 && t.bf16_s > 0.0;
    let (times, cached) = match read_cache(cache_file.as_deref()).get(&key) {
        Some(t) if usable(t) => (*t, true),
        _ => {
            let t = measure()?;
            // Read again: another run may have measured meanwhile, and the first times kept
            // win, so that runs started together on this machine go on choosing alike.
            let mut cache = read_cache(cache_file.as_deref());
            if let Some(earlier) = cache.get(&key).filter(|e| usable(e)) {
                return Ok(AutoChoice::of(timed, *earlier, true));
            }
            cache.insert(key, t);
            if let Some(path) = cache_file {
                let written = path
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .map_err(anyhow::Error::from)
                    .and_then(|()| write_json_atomic(&path, &cache));
                if let Err(e) = written {
                    crate::progress::note(&format!(
                        "note: cannot keep the precision timings in {}: {e:#}",
                        path.display()
                    ));
                }
            }
            (t, false)
        }
    };
    Ok(AutoChoice::of(timed, times, cached))
}

/// Times `fp32` and `bf16` (each one step) alternately: one warm-up step each, then
/// [`ROUNDS`] rounds; the medians. Alternating spreads a noisy neighbour over both.
pub fn time_alternating(
    mut fp32: impl FnMut() -> Result<()>,
    mut bf16: impl FnMut() -> Result<()>,
) -> Result<StepTimes> {
    fp32()?;
    bf16()?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t = Instant::now();
        fp32()?;
        a.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        bf16()?;
        b.push(t.elapsed().as_secs_f64());
    }
    Ok(StepTimes {
        fp32_s: median(&mut a),
        bf16_s: median(&mut b),
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_is_kept_only_at_the_minimum_speedup() {
        let t = |fp32_s, bf16_s| StepTimes { fp32_s, bf16_s };
        assert!(t(1.15, 1.0).prefers_bf16());
        assert!(t(2.0, 1.0).prefers_bf16());
        assert!(!t(1.14, 1.0).prefers_bf16());
        assert!(!t(1.0, 1.05).prefers_bf16());
    }

    #[test]
    fn steps_are_timed_alternately_and_the_median_kept() {
        let calls = std::cell::RefCell::new(Vec::new());
        let sleep = |ms| std::thread::sleep(std::time::Duration::from_millis(ms));
        let times = time_alternating(
            || {
                calls.borrow_mut().push('f');
                sleep(30);
                Ok(())
            },
            || {
                calls.borrow_mut().push('b');
                sleep(10);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(calls.borrow().iter().collect::<String>(), "fbfbfbfb");
        assert!(times.fp32_s >= 0.03 && times.bf16_s >= 0.01, "{times:?}");
        assert!(times.bf16_s < times.fp32_s, "{times:?}");
    }

    #[test]
    fn a_choice_is_measured_once_then_read_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let file = Some(dir.path().join("cache/precision.json"));
        let mut measured = 0;
        let mut pick = |fp32_s, bf16_s| {
            choose_with(file.clone(), "test|w", "step", || {
                measured += 1;
                Ok(StepTimes { fp32_s, bf16_s })
            })
            .unwrap()
        };
        let first = pick(2.0, 1.0);
        assert_eq!((first.chosen.as_str(), first.cached), ("bf16", false));
        // The second run reads the first one's times, not these.
        let second = pick(1.0, 2.0);
        assert_eq!((second.chosen.as_str(), second.cached), ("bf16", true));
        assert_eq!(second.times, first.times);
        assert_eq!(measured, 1);
        assert!(first.note().contains("2.00x"), "{}", first.note());
        let slower = choose_with(file.clone(), "test|other", "step", || {
            Ok(StepTimes {
                fp32_s: 1.0,
                bf16_s: 1.1,
            })
        })
        .unwrap();
        assert_eq!(slower.chosen, "fp32");
        let cache = read_cache(file.as_deref());
        assert_eq!(cache.len(), 2, "{cache:?}");
    }
}
