//! Which inputs one task of a batch job predicts: `--shard I/N`, or `--shard auto` inside a
//! Slurm job array or a Kubernetes Indexed Job.
//!
//! An input belongs to shard `xxh3(key) mod N`, where the key is its path relative to the
//! folder it was found in ([`super::Input`]). The assignment depends on nothing but the key and
//! `N`: files added elsewhere in the archive, another listing order or another mount point
//! leave every other file in its shard.

use xxhash_rust::xxh3::xxh3_64;

use crate::error::Error;

/// Shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// From 0 to `count - 1`.
    pub index: usize,
    /// How many shards share the inputs.
    pub count: usize,
}

impl Shard {
    /// Parses `I/N`, `auto` or `auto/N`, reading the scheduler's variables through `env`:
    /// `SLURM_ARRAY_TASK_ID` (less `SLURM_ARRAY_TASK_MIN`) and `SLURM_ARRAY_TASK_COUNT` in a
    /// Slurm array; `JOB_COMPLETION_INDEX` in a Kubernetes Indexed Job, whose count is not in
    /// the environment and comes from `auto/N` or `XRAY_SHARD_COUNT`.
    pub fn parse(spec: &str, env: impl Fn(&str) -> Option<String>) -> Result<Shard, Error> {
        let bad = |why: String| Error::usage(format!("--shard {spec}: {why}"));
        let number = |what: &str, text: &str| -> Result<usize, Error> {
            text.trim()
                .parse::<usize>()
                .map_err(|_| bad(format!("{what} `{text}` is not a whole number")))
        };
        let (first, count) = match spec.split_once('/') {
            Some((a, b)) => (a, Some(number("the count", b)?)),
            None => (spec, None),
        };
        // The count `auto/N` gives, else the one in variable `var`.
        let count_or = |var: &str, missing: &str| -> Result<usize, Error> {
            match count {
                Some(c) => Ok(c),
                None => number(var, &env(var).ok_or_else(|| bad(missing.into()))?),
            }
        };
        let shard = if first == "auto" {
            if let Some(id) = env("SLURM_ARRAY_TASK_ID") {
                let id = number("SLURM_ARRAY_TASK_ID", &id)?;
                let min = env("SLURM_ARRAY_TASK_MIN")
                    .map(|m| number("SLURM_ARRAY_TASK_MIN", &m))
                    .transpose()?
                    .unwrap_or(0);
                let count = count_or(
                    "SLURM_ARRAY_TASK_COUNT",
                    "SLURM_ARRAY_TASK_COUNT is not set; give auto/N",
                )?;
                Shard {
                    index: id.checked_sub(min).ok_or_else(|| {
                        bad(format!(
                            "SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}"
                        ))
                    })?,
                    count,
                }
            } else if let Some(index) = env("JOB_COMPLETION_INDEX") {
                let count = count_or(
                    "XRAY_SHARD_COUNT",
                    "a Kubernetes Indexed Job does not say how many shards there are: give \
                     auto/N (the Job's completions) or set XRAY_SHARD_COUNT",
                )?;
                Shard {
                    index: number("JOB_COMPLETION_INDEX", &index)?,
                    count,
                }
            } else {
                return Err(bad(
                    "neither SLURM_ARRAY_TASK_ID (a Slurm job array) nor JOB_COMPLETION_INDEX \
                     (a Kubernetes Indexed Job) is set; give I/N"
                        .into(),
                ));
            }
        } else {
            Shard {
                index: number("the shard", first)?,
                count: count.ok_or_else(|| bad("expected I/N, auto or auto/N".into()))?,
            }
        };
        if shard.count == 0 || shard.index >= shard.count {
            return Err(bad(format!(
                "shard {} of {} does not exist (shards are numbered 0 to N-1)",
                shard.index, shard.count
            )));
        }
        Ok(shard)
    }

    /// Whether the input with shard key `key` is this shard's.
    pub fn owns(&self, key: &str) -> bool {
        (xxh3_64(key.as_bytes()) % self.count as u64) as usize == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn parses_explicit_and_scheduler_shards() {
        let none = env(&[]);
        assert_eq!(
            Shard::parse("2/4", &none).unwrap(),
            Shard { index: 2, count: 4 }
        );
        for bad in ["4/4", "0/0", "x/4", "3", "auto", "-1/4"] {
            let e = Shard::parse(bad, &none).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--shard {bad}: ")), "{e}");
        }
        // Slurm: `--array=1-4` numbers tasks from 1.
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(
            Shard::parse("auto", &slurm).unwrap(),
            Shard { index: 2, count: 4 }
        );
        // Kubernetes: the index is in the environment, the count is not.
        let k8s = env(&[("JOB_COMPLETION_INDEX", "1")]);
        assert_eq!(
            Shard::parse("auto/3", &k8s).unwrap(),
            Shard { index: 1, count: 3 }
        );
        assert!(Shard::parse("auto", &k8s)
            .unwrap_err()
            .to_string()
            .contains("XRAY_SHARD_COUNT"));
        let k8s = env(&[("JOB_COMPLETION_INDEX", "1"), ("XRAY_SHARD_COUNT", "2")]);
        assert_eq!(
            Shard::parse("auto", &k8s).unwrap(),
            Shard { index: 1, count: 2 }
        );
    }

    #[test]
    fn every_key_in_exactly_one_shard_and_stable() {
        let keys: Vec<String> = (0..2000).map(|i| format!("p{i}/img_{i:05}.png")).collect();
        let shards: Vec<Shard> = (0..4).map(|index| Shard { index, count: 4 }).collect();
        let mut sizes = [0usize; 4];
        for k in &keys {
            let owners: Vec<usize> = shards
                .iter()
                .filter(|s| s.owns(k))
                .map(|s| s.index)
                .collect();
            assert_eq!(owners.len(), 1, "{k}");
            sizes[owners[0]] += 1;
        }
        // Balanced within a few percent of 500 each.
        assert!(sizes.iter().all(|&n| (440..=560).contains(&n)), "{sizes:?}");
        // The assignment is a fixed function of the key (xxh3-64, seedless): the same on
        // every machine and release. Pinned values, from Python's `xxhash.xxh3_64`.
        let of4 = |k: &str| (0..4).find(|&i| Shard { index: i, count: 4 }.owns(k));
        assert_eq!(of4("a.png"), Some(3));
        assert_eq!(of4("b.png"), Some(2));
        assert_eq!(of4("NORMAL/x.jpeg"), Some(1));
        assert_eq!(of4("PNEUMONIA/person1_bacteria_1.jpeg"), Some(0));
    }
}
