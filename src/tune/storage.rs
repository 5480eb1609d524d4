//! A search that many workers share through PostgreSQL (`xray tune --storage postgres://…`).
//!
//! Three tables hold every search of a database: `xray_search` (one row per search name, with
//! its config), `xray_trial` (one row per trial: status, the worker that holds it, a heartbeat,
//! its values and result) and `xray_epoch` (each trial's best-so-far score after each epoch,
//! which the median pruner of every worker reads).
//!
//! A worker claims its next trial in one transaction that locks the search's row, so claims
//! are serialised: it first takes over a `running` trial whose heartbeat is older than the
//! timeout (its worker died), else proposes the lowest unclaimed trial number from every
//! finished trial in the database and records it as running. While it trains, a thread
//! renews the heartbeat; the result is written only if the trial is still the worker's, so a
//! worker that was given up for dead cannot overwrite the one that took its trial over.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use postgres::{Client, NoTls};

use super::space::Space;
use super::{Status, Trial};
use crate::error::Error;

/// The tables, created once per database (under an advisory lock: workers start together).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS xray_search (
    id bigserial PRIMARY KEY,
    name text UNIQUE NOT NULL,
    config text NOT NULL,
    created timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS xray_trial (
    search bigint NOT NULL REFERENCES xray_search (id) ON DELETE CASCADE,
    trial integer NOT NULL,
    status text NOT NULL,
    worker text NOT NULL,
    claims integer NOT NULL DEFAULT 1,
    heartbeat timestamptz NOT NULL DEFAULT now(),
    params text[] NOT NULL,
    value double precision,
    best_epoch integer,
    epochs integer,
    seconds double precision,
    started timestamptz NOT NULL DEFAULT now(),
    finished timestamptz,
    PRIMARY KEY (search, trial)
);
CREATE TABLE IF NOT EXISTS xray_epoch (
    search bigint NOT NULL,
    trial integer NOT NULL,
    epoch integer NOT NULL,
    score double precision NOT NULL,
    PRIMARY KEY (search, trial, epoch),
    FOREIGN KEY (search, trial) REFERENCES xray_trial (search, trial) ON DELETE CASCADE
);
";

/// A `postgres://` URL with every password replaced by `***`, for messages: the one in the
/// user part (`user:PASSWORD@`) and any `password=` parameter (`?password=…`, `&password=…`,
/// or a `key=value` connection string).
pub fn redact(url: &str) -> String {
    static PARAM: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let param = PARAM.get_or_init(|| {
        regex::Regex::new(r"(?i)(^|[?&\s])(password\s*=\s*)('[^']*'|[^&\s]*)")
            .expect("a valid pattern")
    });
    let url = param.replace_all(url, "${1}${2}***").into_owned();
    let Some((scheme, rest)) = url.split_once("://") else {
        return url;
    };
    // The user part ends at the last `@` before the path (a password may hold `@`).
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].split_once(':') {
            Some((name, _)) => format!("{scheme}://{name}:***{}", &rest[at..]),
            None => url.clone(),
        },
        None => url.clone(),
    }
}

/// Opens a connection to `url`; a bad URL or an unreachable server is a usage error (exit 2)
/// naming the URL without its password. Waits at most 10 s unless the URL says
/// `connect_timeout`. Without a password in the URL, `PGPASSWORD` gives it. `sslmode` and
/// `sslrootcert` work as in libpq ([`super::pgtls`]).
pub fn connect(url: &str) -> Result<Client> {
    let shown = redact(url);
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(Error::usage(format!(
            "--storage {shown}: not a PostgreSQL URL (postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE)"
        ))
        .into());
    }
    let (url, tls) = super::pgtls::split_url(url, &shown)?;
    let mut config = postgres::Config::from_str(&url)
        .map_err(|e| Error::usage(format!("--storage {shown}: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config.application_name("xray tune");
    // As libpq does: a password kept out of the URL (which `ps` shows) comes from PGPASSWORD.
    if config.get_password().is_none() {
        if let Ok(password) = std::env::var("PGPASSWORD") {
            config.password(password);
        }
    }
    let connected = match super::pgtls::connector(&tls, &shown)? {
        None => config.connect(NoTls),
        Some(rustls) => config.connect(rustls),
    };
    connected.map_err(|e| {
        let why = std::error::Error::source(&e).map_or(e.to_string(), |s| format!("{e}: {s}"));
        Error::usage(format!("--storage {shown}: cannot connect: {why}")).into()
    })
}

/// One search in the database, as one worker sees it.
pub struct SharedSearch {
    client: Client,
    url: String,
    search: i64,
    worker: String,
    heartbeat_timeout: Duration,
}

/// What a worker is told to do next.
#[derive(Debug)]
pub enum Claim {
    /// Train trial `id` with `params` (rendered values); `claims` counts this worker's claim
    /// (more than 1: a dead worker's trial taken over).
    Trial {
        /// Trial number.
        id: usize,
        /// Its values, rendered as trials.csv shows them.
        params: Vec<String>,
        /// How many times it has been claimed, this claim included.
        claims: i32,
    },
    /// Every trial is claimed, some still running elsewhere: wait and ask again.
    Wait,
    /// Nothing left: every planned trial finished (or the time budget is spent).
    Done {
        /// Whether the time budget ended it.
        out_of_time: bool,
    },
}

impl SharedSearch {
    /// Connects, creates the tables if needed, and finds or records search `name` with
    /// `config` (its comparable TOML). Another config under the same name is a usage error.
    pub fn open(
        url: &str,
        name: &str,
        config: &str,
        worker: &str,
        heartbeat_timeout: Duration,
    ) -> Result<SharedSearch> {
        let mut client = connect(url)?;
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock(7226183942)", &[])?;
        tx.batch_execute(SCHEMA).context("creating xray's tables")?;
        tx.execute(
            "INSERT INTO xray_search (name, config) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&name, &config],
        )?;
        let row = tx.query_one(
            "SELECT id, config FROM xray_search WHERE name = $1",
            &[&name],
        )?;
        tx.commit()?;
        let stored: String = row.get(1);
        if stored != config {
            return Err(Error::usage(format!(
                "--storage {}: search `{name}` exists there with another config or space; give \
                 another --search name, or the same config to join it",
                redact(url)
            ))
            .into());
        }
        Ok(SharedSearch {
            client,
            url: url.to_string(),
            search: row.get(0),
            worker: worker.to_string(),
            heartbeat_timeout,
        })
    }

    /// Claims the next trial (see the module documentation). `propose(id, finished, taken)`
    /// gives trial `id`'s rendered values from the finished trials and every claimed trial's
    /// values (to avoid proposing a point twice).
    pub fn claim(
        &mut self,
        planned: usize,
        budget_seconds: f64,
        space: &Space,
        propose: impl FnOnce(usize, &[Trial], &[Vec<String>]) -> Vec<String>,
    ) -> Result<Claim> {
        let mut tx = self.client.transaction()?;
        tx.query_one(
            "SELECT id FROM xray_search WHERE id = $1 FOR UPDATE",
            &[&self.search],
        )?;
        let stale = tx.query_opt(
            "UPDATE xray_trial SET worker = $2, heartbeat = now(), claims = claims + 1
             WHERE (search, trial) = (
                 SELECT search, trial FROM xray_trial
                 WHERE search = $1 AND status = 'running' AND trial < $4
                   AND heartbeat < now() - make_interval(secs => $3)
                 ORDER BY trial LIMIT 1)
             RETURNING trial, params, claims",
            &[
                &self.search,
                &self.worker,
                &self.heartbeat_timeout.as_secs_f64(),
                &(planned as i32),
            ],
        )?;
        if let Some(row) = stale {
            tx.commit()?;
            return Ok(Claim::Trial {
                id: row.get::<_, i32>(0) as usize,
                params: row.get(1),
                claims: row.get(2),
            });
        }
        // Finished and running trials from one statement, so one snapshot: read apart, a trial
        // finishing between the two reads was in neither, and its id was claimed again (a
        // duplicate key, seen once in three runs of the TPE workers' test).
        let (trials, running) = read_trials_and_running(&mut tx, self.search, space)?;
        let spent: f64 = trials.iter().map(|t| t.seconds).sum();
        if budget_seconds > 0.0 && spent >= budget_seconds {
            tx.commit()?;
            return Ok(Claim::Done { out_of_time: true });
        }
        let mut claimed: Vec<usize> = trials.iter().map(|t| t.id).collect();
        claimed.extend(running.iter().map(|r| r.0));
        claimed.sort_unstable();
        let Some(id) = (0..planned).find(|i| claimed.binary_search(i).is_err()) else {
            tx.commit()?;
            let waiting = running.iter().any(|r| r.0 < planned);
            return Ok(if waiting {
                Claim::Wait
            } else {
                Claim::Done { out_of_time: false }
            });
        };
        let mut taken: Vec<Vec<String>> = trials.iter().map(|t| t.values.clone()).collect();
        taken.extend(running.into_iter().map(|r| r.1));
        let params = propose(id, &trials, &taken);
        tx.execute(
            "INSERT INTO xray_trial (search, trial, status, worker, params)
             VALUES ($1, $2, 'running', $3, $4)",
            &[&self.search, &(id as i32), &self.worker, &params],
        )?;
        tx.commit()?;
        Ok(Claim::Trial {
            id,
            params,
            claims: 1,
        })
    }

    /// Records trial `id`'s best-so-far scores (one per epoch so far: a resumed trial's
    /// earlier epochs too, in case its first worker died between checkpoint and record) and
    /// renews its heartbeat; false when the trial is no longer this worker's.
    pub fn record_curve(&mut self, id: usize, curve: &[f64]) -> Result<bool> {
        let mut tx = self.client.transaction()?;
        let mine = tx.execute(
            "UPDATE xray_trial SET heartbeat = now()
             WHERE search = $1 AND trial = $2 AND worker = $3 AND status = 'running'",
            &[&self.search, &(id as i32), &self.worker],
        )? == 1;
        if mine {
            upsert_curve(&mut tx, self.search, id, curve)?;
        }
        tx.commit()?;
        Ok(mine)
    }

    /// Writes the trial's result and its whole curve if it is still this worker's; false when
    /// another worker took it over (the result is then dropped).
    pub fn finish(&mut self, trial: &Trial) -> Result<bool> {
        let mut tx = self.client.transaction()?;
        let n = tx.execute(
            "UPDATE xray_trial SET status = $4, value = $5, best_epoch = $6, epochs = $7,
                 seconds = $8, finished = now(), heartbeat = now()
             WHERE search = $1 AND trial = $2 AND worker = $3 AND status = 'running'",
            &[
                &self.search,
                &(trial.id as i32),
                &self.worker,
                &trial.status.as_str(),
                &trial.value,
                &(trial.best_epoch as i32),
                &(trial.epochs as i32),
                &trial.seconds,
            ],
        )?;
        if n == 1 {
            upsert_curve(&mut tx, self.search, trial.id, &trial.curve)?;
        }
        tx.commit()?;
        Ok(n == 1)
    }

    /// Every finished trial of the search, by number.
    pub fn trials(&mut self, space: &Space) -> Result<Vec<Trial>> {
        let mut tx = self.client.transaction()?;
        let trials = read_trials(&mut tx, self.search, space)?;
        tx.commit()?;
        Ok(trials)
    }

    /// How many trials are running now (on any worker).
    pub fn running(&mut self) -> Result<usize> {
        let n: i64 = self
            .client
            .query_one(
                "SELECT count(*) FROM xray_trial WHERE search = $1 AND status = 'running'",
                &[&self.search],
            )?
            .get(0);
        Ok(n as usize)
    }

    /// Starts a thread that renews trial `id`'s heartbeat every quarter of the timeout over
    /// its own connection, until the returned guard is dropped. The flag turns true if the
    /// trial stops being this worker's.
    pub fn heartbeat(&self, id: usize) -> Result<Heartbeat> {
        let mut client = connect(&self.url)?;
        let stop = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(AtomicBool::new(false));
        let every = (self.heartbeat_timeout / 4).max(Duration::from_millis(200));
        let (search, worker) = (self.search, self.worker.clone());
        let thread = {
            let (stop, lost) = (stop.clone(), lost.clone());
            std::thread::Builder::new()
                .name("xray-heartbeat".into())
                .spawn(move || {
                    let tick = Duration::from_millis(100);
                    let mut waited = Duration::ZERO;
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        waited += tick;
                        if waited < every {
                            continue;
                        }
                        waited = Duration::ZERO;
                        let renewed = client.execute(
                            "UPDATE xray_trial SET heartbeat = now()
                             WHERE search = $1 AND trial = $2 AND worker = $3
                               AND status = 'running'",
                            &[&search, &(id as i32), &worker],
                        );
                        match renewed {
                            Ok(1) => {}
                            Ok(_) => lost.store(true, Ordering::Relaxed),
                            Err(e) => eprintln!("warning: heartbeat of trial {id}: {e}"),
                        }
                    }
                })
                .context("starting the heartbeat thread")?
        };
        Ok(Heartbeat {
            stop,
            lost,
            thread: Some(thread),
        })
    }
}

/// The heartbeat of one trial; stops when dropped.
pub struct Heartbeat {
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    /// Whether the trial was taken over by another worker.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes trial `id`'s score after each epoch (from 1), replacing what was there.
fn upsert_curve(
    tx: &mut postgres::Transaction<'_>,
    search: i64,
    id: usize,
    curve: &[f64],
) -> Result<()> {
    let epochs: Vec<i32> = (1..=curve.len() as i32).collect();
    tx.execute(
        "INSERT INTO xray_epoch (search, trial, epoch, score)
         SELECT $1, $2, e, s FROM unnest($3::integer[], $4::float8[]) AS u (e, s)
         ON CONFLICT (search, trial, epoch) DO UPDATE SET score = EXCLUDED.score",
        &[&search, &(id as i32), &epochs, &curve],
    )?;
    Ok(())
}

/// The finished trials of `search` with their curves, by number.
fn read_trials(
    tx: &mut postgres::Transaction<'_>,
    search: i64,
    space: &Space,
) -> Result<Vec<Trial>> {
    read_trials_and_running(tx, search, space).map(|(trials, _)| trials)
}

/// A running trial: its number and rendered values.
type Running = (usize, Vec<String>);

/// The search's finished trials, and the running ones, read in one statement.
fn read_trials_and_running(
    tx: &mut postgres::Transaction<'_>,
    search: i64,
    space: &Space,
) -> Result<(Vec<Trial>, Vec<Running>)> {
    let all = tx.query(
        "SELECT trial, status, value, best_epoch, epochs, seconds, params FROM xray_trial
         WHERE search = $1 ORDER BY trial",
        &[&search],
    )?;
    let (running, rows): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|r| r.get::<_, String>(1) == "running");
    let running = running
        .iter()
        .map(|r| (r.get::<_, i32>(0) as usize, r.get::<_, Vec<String>>(6)))
        .collect();
    let epochs = tx.query(
        "SELECT trial, score FROM xray_epoch WHERE search = $1 ORDER BY trial, epoch",
        &[&search],
    )?;
    let mut curves: HashMap<i32, Vec<f64>> = HashMap::new();
    for e in &epochs {
        curves.entry(e.get(0)).or_default().push(e.get(1));
    }
    let mut trials = Vec::with_capacity(rows.len());
    for r in rows {
        let id: i32 = r.get(0);
        let status_text: String = r.get(1);
        let status = Status::parse(&status_text)
            .with_context(|| format!("trial {id}: unknown status `{status_text}`"))?;
        let values: Vec<String> = r.get(6);
        let point = space
            .parse_point(&values.iter().map(String::as_str).collect::<Vec<_>>())
            .with_context(|| format!("trial {id}'s values are outside the space"))?;
        trials.push(Trial {
            id: id as usize,
            status,
            value: r.get(2),
            best_epoch: r.get::<_, Option<i32>>(3).unwrap_or(0) as usize,
            epochs: r.get::<_, Option<i32>>(4).unwrap_or(0) as usize,
            seconds: r.get::<_, Option<f64>>(5).unwrap_or(0.0),
            values,
            point,
            curve: curves.remove(&id).unwrap_or_default(),
        });
    }
    Ok((trials, running))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://xray:s3cret@db:5432/tune"),
            "postgres://xray:***@db:5432/tune"
        );
        assert_eq!(redact("postgres://xray@db/tune"), "postgres://xray@db/tune");
        assert_eq!(redact("not a url"), "not a url");
        for (url, want) in [
            (
                "postgres://u@db/tune?password=secret",
                "postgres://u@db/tune?password=***",
            ),
            (
                "postgres://u@db/tune?sslmode=require&PASSWORD=secret&x=1",
                "postgres://u@db/tune?sslmode=require&PASSWORD=***&x=1",
            ),
            (
                "postgres://u:se@cr:et@db:5432/tune",
                "postgres://u:***@db:5432/tune",
            ),
            (
                "host=db user=u password='secret word' dbname=t",
                "host=db user=u password=*** dbname=t",
            ),
        ] {
            let shown = redact(url);
            assert_eq!(shown, want);
            assert!(
                !shown.contains("secret") && !shown.contains("cr:et"),
                "{shown}"
            );
        }
    }
}
