//! The search space of `[tune.space]`: each dotted config key maps to a list of values or to a
//! range, and a point of the space is one coordinate per parameter (a list index, or the value
//! itself for a range).

use rand::Rng;

use crate::error::Error;

/// The values one parameter may take.
#[derive(Debug, Clone, PartialEq)]
pub enum Domain {
    /// One of the listed values.
    Choice(Vec<toml::Value>),
    /// A number in `[low, high]`; `log`: its logarithm is what is searched uniformly; `int`:
    /// rounded to an integer.
    Range {
        /// Lower bound, inclusive.
        low: f64,
        /// Upper bound, inclusive.
        high: f64,
        /// Search the logarithm.
        log: bool,
        /// Round to an integer.
        int: bool,
    },
}

/// One searched config key.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// The dotted config key, e.g. `train.lr`.
    pub key: String,
    /// Its values.
    pub domain: Domain,
}

/// A point of the space: per parameter, the index of the value (choices) or the value (ranges).
pub type Point = Vec<f64>;

/// The parameters of `[tune.space]`, in key order.
#[derive(Debug, Clone, PartialEq)]
pub struct Space {
    /// The parameters.
    pub params: Vec<Param>,
}

impl Space {
    /// Reads `[tune.space]`. Keys may be quoted dotted paths (`"train.lr" = ...`) or nested
    /// tables (`[tune.space.train] lr = ...`); a leaf is a list, or a table with `low` and
    /// `high` (and optionally `log`, `int`).
    pub fn parse(table: &toml::Table) -> Result<Space, Error> {
        let mut params = Vec::new();
        collect(table, "", &mut params)?;
        if params.is_empty() {
            return Err(Error::usage(
                "[tune.space] is empty: give at least one key, e.g. \"train.lr\" = { low = 1e-4, high = 1e-2, log = true }",
            ));
        }
        params.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Space { params })
    }

    /// Number of grid points (the product of the list lengths); an error names a range, which
    /// a grid cannot enumerate.
    pub fn grid_size(&self) -> Result<usize, Error> {
        let mut n = 1usize;
        for p in &self.params {
            match &p.domain {
                Domain::Choice(values) => n = n.saturating_mul(values.len()),
                Domain::Range { .. } => {
                    return Err(Error::usage(format!(
                        "tune.strategy = \"grid\" needs lists, but tune.space.{} is a range: list its values, or use \"random\" or \"tpe\"",
                        p.key
                    )))
                }
            }
        }
        Ok(n)
    }

    /// The `i`-th grid point, the last parameter varying fastest (`i < grid_size()`).
    pub fn grid_point(&self, mut i: usize) -> Point {
        let mut point = vec![0.0; self.params.len()];
        for (k, p) in self.params.iter().enumerate().rev() {
            let n = match &p.domain {
                Domain::Choice(values) => values.len(),
                Domain::Range { .. } => 1,
            };
            point[k] = (i % n) as f64;
            i /= n;
        }
        point
    }

    /// A point drawn uniformly: uniform index for lists, uniform value (or logarithm) for
    /// ranges.
    pub fn sample_uniform(&self, rng: &mut impl Rng) -> Point {
        self.params.iter().map(|p| p.domain.sample(rng)).collect()
    }

    /// The config value of each parameter at `point`, as `(key, value)`.
    pub fn values(&self, point: &[f64]) -> Vec<(String, toml::Value)> {
        self.params
            .iter()
            .zip(point)
            .map(|(p, &x)| (p.key.clone(), p.domain.value(x)))
            .collect()
    }

    /// Reads a point back from its values as [`render`] wrote them (trials.csv); `None` when a
    /// value does not belong to the space.
    pub fn parse_point(&self, rendered: &[&str]) -> Option<Point> {
        self.params
            .iter()
            .zip(rendered)
            .map(|(p, text)| match &p.domain {
                Domain::Choice(values) => values
                    .iter()
                    .position(|v| render(v) == *text)
                    .map(|i| i as f64),
                Domain::Range { .. } => text.parse::<f64>().ok(),
            })
            .collect()
    }
}

impl Domain {
    /// A uniform draw (log-uniform for `log` ranges).
    pub fn sample(&self, rng: &mut impl Rng) -> f64 {
        match self {
            Domain::Choice(values) => rng.gen_range(0..values.len()) as f64,
            Domain::Range { low, high, log, .. } => {
                let (a, b) = self.internal_bounds();
                let x = if a < b { rng.gen_range(a..=b) } else { a };
                let x = if *log { x.exp() } else { x };
                self.snap(x.clamp(*low, *high))
            }
        }
    }

    /// The bounds of the coordinate the samplers search: the logarithm for `log` ranges.
    pub fn internal_bounds(&self) -> (f64, f64) {
        match self {
            Domain::Choice(values) => (0.0, values.len() as f64 - 1.0),
            Domain::Range {
                low,
                high,
                log: true,
                ..
            } => (low.ln(), high.ln()),
            Domain::Range { low, high, .. } => (*low, *high),
        }
    }

    /// `x` in the searched coordinate (its logarithm for `log` ranges).
    pub fn to_internal(&self, x: f64) -> f64 {
        match self {
            Domain::Range { log: true, .. } => x.ln(),
            _ => x,
        }
    }

    /// The value at the searched coordinate `u`, rounded when the range is of integers.
    pub fn from_internal(&self, u: f64) -> f64 {
        match self {
            Domain::Range {
                log: true,
                low,
                high,
                ..
            } => self.snap(u.exp().clamp(*low, *high)),
            Domain::Range { low, high, .. } => self.snap(u.clamp(*low, *high)),
            Domain::Choice(_) => u,
        }
    }

    /// Integers rounded; other values kept to 4 significant digits, which no training can
    /// tell apart and which keep trials.csv and best.toml readable.
    fn snap(&self, x: f64) -> f64 {
        match self {
            Domain::Range { int: true, .. } => x.round(),
            Domain::Range { low, high, .. } => format!("{x:.3e}")
                .parse::<f64>()
                .unwrap_or(x)
                .clamp(*low, *high),
            Domain::Choice(_) => x,
        }
    }

    /// The config value at coordinate `x`.
    pub fn value(&self, x: f64) -> toml::Value {
        match self {
            Domain::Choice(values) => values[(x as usize).min(values.len() - 1)].clone(),
            Domain::Range { int: true, .. } => toml::Value::Integer(x.round() as i64),
            Domain::Range { .. } => toml::Value::Float(x),
        }
    }
}

/// A config value as one CSV cell: strings bare, everything else as TOML writes it.
pub fn render(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn collect(table: &toml::Table, prefix: &str, out: &mut Vec<Param>) -> Result<(), Error> {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match value {
            toml::Value::Array(values) => {
                if values.is_empty() {
                    return Err(Error::usage(format!("tune.space.{key}: the list is empty")));
                }
                out.push(Param {
                    key,
                    domain: Domain::Choice(values.clone()),
                });
            }
            toml::Value::Table(t) if t.contains_key("low") || t.contains_key("high") => {
                out.push(Param {
                    domain: range(&key, t)?,
                    key,
                });
            }
            toml::Value::Table(t) => collect(t, &key, out)?,
            other => {
                return Err(Error::usage(format!(
                    "tune.space.{key} = {other}: give a list of values or {{ low = .., high = .. }}"
                )))
            }
        }
    }
    Ok(())
}

fn range(key: &str, t: &toml::Table) -> Result<Domain, Error> {
    let bad = |why: String| Error::usage(format!("tune.space.{key}: {why}"));
    for k in t.keys() {
        if !["low", "high", "log", "int"].contains(&k.as_str()) {
            return Err(bad(format!(
                "unknown key `{k}` in a range (expected low, high, log, int)"
            )));
        }
    }
    let number = |k: &str| -> Result<(f64, bool), Error> {
        match t.get(k) {
            Some(toml::Value::Integer(i)) => Ok((*i as f64, true)),
            Some(toml::Value::Float(f)) => Ok((*f, false)),
            Some(other) => Err(bad(format!("`{k}` must be a number, got {other}"))),
            None => Err(bad(format!(
                "a range needs both low and high; `{k}` is missing"
            ))),
        }
    };
    let flag = |k: &str| -> Result<Option<bool>, Error> {
        match t.get(k) {
            None => Ok(None),
            Some(toml::Value::Boolean(b)) => Ok(Some(*b)),
            Some(other) => Err(bad(format!("`{k}` must be true or false, got {other}"))),
        }
    };
    let ((low, low_int), (high, high_int)) = (number("low")?, number("high")?);
    let log = flag("log")?.unwrap_or(false);
    let int = flag("int")?.unwrap_or(low_int && high_int);
    if !(low.is_finite() && high.is_finite() && low <= high) {
        return Err(bad(format!("needs low <= high, got {low} and {high}")));
    }
    if log && low <= 0.0 {
        return Err(bad(format!("a log range needs low > 0, got {low}")));
    }
    Ok(Domain::Range {
        low,
        high,
        log,
        int,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::SeedableRng;

    /// A space from the text of a `[tune.space]` table (for this module's and tpe's tests).
    pub(crate) fn space(text: &str) -> Space {
        Space::parse(&text.parse::<toml::Table>().unwrap()).unwrap()
    }

    #[test]
    fn grid_is_the_product_of_the_lists() {
        let s = space(
            "\"train.lr\" = [0.1, 0.01]\n\"train.optimizer\" = [\"adamw\", \"sgd\", \"adam\"]\n[model]\ndropout = [0.0, 0.5]\n",
        );
        assert_eq!(s.grid_size().unwrap(), 12);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..12 {
            let v = s.values(&s.grid_point(i));
            seen.insert(format!("{v:?}"));
        }
        assert_eq!(seen.len(), 12, "every grid point is distinct");
        let keys: Vec<_> = s.params.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["model.dropout", "train.lr", "train.optimizer"]);
    }

    #[test]
    fn ranges_respect_bounds_and_log_scale() {
        let s = space(
            "\"train.lr\" = { low = 1e-5, high = 1e-1, log = true }\n\"model.dropout\" = { low = 0.0, high = 0.5 }\n\"train.batch_size\" = { low = 8, high = 64, log = true }\n",
        );
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let points: Vec<Point> = (0..4000).map(|_| s.sample_uniform(&mut rng)).collect();
        let column = |key: &str| -> Vec<f64> {
            let k = s.params.iter().position(|p| p.key == key).unwrap();
            points.iter().map(|p| p[k]).collect()
        };
        let lr = column("train.lr");
        assert!(lr.iter().all(|&x| (1e-5..=1e-1).contains(&x)));
        // Log-uniform: each decade holds a quarter of the draws (a linear draw would put
        // 90% in the top decade).
        for decade in 0..4 {
            let lo = 1e-5 * 10f64.powi(decade);
            let share = lr.iter().filter(|&&x| x >= lo && x < lo * 10.0).count() as f64 / 4000.0;
            assert!((share - 0.25).abs() < 0.03, "decade {decade}: {share}");
        }
        let dropout = column("model.dropout");
        assert!(dropout.iter().all(|&x| (0.0..=0.5).contains(&x)));
        let below = dropout.iter().filter(|&&x| x < 0.25).count() as f64 / 4000.0;
        assert!((below - 0.5).abs() < 0.03, "{below}");
        let batch = column("train.batch_size");
        assert!(batch
            .iter()
            .all(|&x| x.fract() == 0.0 && (8.0..=64.0).contains(&x)));
        let v = s.values(&points[0]);
        assert!(matches!(
            v.iter().find(|(k, _)| k == "train.batch_size").unwrap().1,
            toml::Value::Integer(_)
        ));
    }

    #[test]
    fn points_read_back_from_their_rendering() {
        let s = space("\"train.lr\" = { low = 1e-4, high = 1e-2, log = true }\n\"train.optimizer\" = [\"adamw\", \"sgd\"]\n\"train.batch_size\" = [16, 32]\n");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for _ in 0..50 {
            let p = s.sample_uniform(&mut rng);
            let cells: Vec<String> = s.values(&p).iter().map(|(_, v)| render(v)).collect();
            let refs: Vec<&str> = cells.iter().map(String::as_str).collect();
            assert_eq!(s.parse_point(&refs).unwrap(), p);
        }
    }

    #[test]
    fn bad_spaces_are_usage_errors() {
        for (text, needle) in [
            (
                "\"train.lr\" = { low = 0.0, high = 1.0, log = true }",
                "log range",
            ),
            ("\"train.lr\" = { low = 1.0, high = 0.1 }", "low <= high"),
            ("\"train.lr\" = { low = 1.0 }", "high"),
            ("\"train.lr\" = []", "empty"),
            ("\"train.lr\" = 0.1", "list"),
            ("\"train.lr\" = { low = 0.1, high = 1.0, step = 2 }", "step"),
        ] {
            let err = Space::parse(&text.parse::<toml::Table>().unwrap()).unwrap_err();
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
        let s = space("\"train.lr\" = { low = 0.1, high = 1.0 }");
        assert!(s.grid_size().unwrap_err().to_string().contains("train.lr"));
    }
}
