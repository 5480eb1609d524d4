//! Beyond one machine: sharded prediction and `xray merge`, a search shared by several
//! `xray tune` workers through a throwaway PostgreSQL, and the server's /metrics, /readyz and
//! JSON logs.
//!
//! PostgreSQL comes from Debian's `postgresql` package (`scripts/setup/postgres.sh`, run by
//! `make test`): each test that needs it runs `initdb` into a temporary folder and starts a
//! server on a free loopback port (as the `postgres` user when the tests run as root), and
//! stops it at the end. Those tests are `#[ignore]`d with that reason (plain `cargo test` says
//! so); `make test` installs PostgreSQL and runs them, and a missing server fails them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    assert_clean_stderr, assert_ok, read_json, repo, synth_dataset, trained, xray, RunOk,
};
use crate::serve::Server;
use crate::tune::{config, small_split};

// ---------------------------------------------------------------------------------------------
// A throwaway PostgreSQL.

/// A PostgreSQL server of the test's own, stopped (and its folder removed) when dropped.
struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Postgres {
    /// Starts one. A missing PostgreSQL is a failure, never a silent pass: the tests that need
    /// it are `#[ignore]`d with that reason, and `make test` installs it and runs them.
    fn start() -> Postgres {
        Postgres::start_with(None)
    }

    /// [`Postgres::start`], with TLS on when given a certificate and key (PEM) for it.
    fn start_with(tls: Option<(&str, &str)>) -> Postgres {
        let Some(bin) = postgres_bin() else {
            panic!("PostgreSQL is not installed (scripts/setup/postgres.sh installs it)");
        };
        let dir = tempfile::tempdir().unwrap();
        // initdb refuses to run as root: the server then runs as the `postgres` user.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        if as_postgres {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Postgres {
            dir,
            bin,
            port,
            as_postgres,
        };
        let data = pg.dir.path().join("data");
        pg.command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "xray", "-E", "UTF8", "--no-sync"])
            .output_ok();

        let mut options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50",
            pg.dir.path().display()
        );
        if let Some((cert, key)) = tls {
            use std::os::unix::fs::PermissionsExt;
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = data.join(name);
                std::fs::write(&path, pem).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
                if pg.as_postgres {
                    // The key must belong to the server's user.
                    let name = std::ffi::CString::new("postgres").unwrap();
                    // SAFETY: getpwnam reads a C string and returns a pointer into static data.
                    let user = unsafe { libc::getpwnam(name.as_ptr()) };
                    assert!(!user.is_null(), "no postgres user");
                    let (uid, gid) = unsafe { ((*user).pw_uid, (*user).pw_gid) };
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
                }
            }
            options.push_str(" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key");
        }
        let out = pg
            .command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(pg.dir.path().join("log"))
            .args(["-o", &options, "-w", "-t", "60", "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(pg.dir.path().join("log")).unwrap_or_default()
        );
        pg
    }

    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    /// The URL of a new, empty database `name`.
    fn database(&self, name: &str) -> String {
        client(&self.url("postgres"))
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        self.url(name)
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://xray@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// The folder of Debian's PostgreSQL server programs (the newest version installed).
fn postgres_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").is_file() && b.join("pg_ctl").is_file())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop()
}

fn client(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).unwrap()
}

/// The storage's connection speaks TLS as libpq does: `disable` plain, `prefer` (the default)
/// and `require` encrypted, `verify-ca` against `sslrootcert`, `verify-full` also checking the
/// host name; a wrong root or a missing one is refused.
#[test]
#[ignore = "needs PostgreSQL (scripts/setup/postgres.sh); make test runs it"]
fn tune_storage_speaks_tls_as_libpq_does() {
    // The server's certificate names db.example, not 127.0.0.1.
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["db.example".into()]).unwrap();
    let stranger = rcgen::generate_simple_self_signed(vec!["db.example".into()]).unwrap();
    let pg = Postgres::start_with(Some((&cert.pem(), &signing_key.serialize_pem())));
    let base = pg.database("tls");
    let dir = tempfile::tempdir().unwrap();
    let (root, wrong) = (dir.path().join("root.pem"), dir.path().join("wrong.pem"));
    std::fs::write(&root, cert.pem()).unwrap();
    std::fs::write(&wrong, stranger.cert.pem()).unwrap();
    let encrypted = |query: &str| -> anyhow::Result<bool> {
        let mut c = xray::tune::storage::connect(&format!("{base}?{query}"))?;
        Ok(c.query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )?
        .get(0))
    };
    let root_arg = format!("sslrootcert={}", root.display());
    assert!(!encrypted("sslmode=disable").unwrap());
    assert!(
        encrypted("connect_timeout=10").unwrap(),
        "prefer, the default"
    );
    assert!(encrypted("sslmode=require").unwrap());
    assert!(encrypted(&format!("sslmode=verify-ca&{root_arg}")).unwrap());
    for (query, words) in [
        (
            format!("sslmode=verify-full&{root_arg}"),
            "not valid for name",
        ),
        (
            format!("sslmode=verify-ca&sslrootcert={}", wrong.display()),
            "cannot connect",
        ),
        (
            format!(
                "sslmode=verify-full&sslrootcert={}",
                dir.path().join("none.pem").display()
            ),
            "sslrootcert",
        ),
    ] {
        let err = format!("{:#}", encrypted(&query).unwrap_err());
        assert!(err.contains(words), "{query}: {err}");
    }
}

/// `xray tune` as a worker of the shared search at `url`.
fn worker(cfg: &Path, url: &str, out: &Path, name: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xray"));
    c.args(["tune", "--config"])
        .arg(cfg)
        .args(["--storage", url, "--worker", name, "--out"])
        .arg(out)
        .args(extra);
    c
}

/// `deploy/slurm/tune-workers.sh` run by hand as task `task` of a job array named `w` (its
/// worker is `w-<task>`), one thread, with `extra` passed through to `xray tune`.
fn slurm_worker(cfg: &Path, url: &str, out: &Path, task: usize, extra: &[&str]) -> Command {
    let mut c = Command::new("bash");
    c.arg(repo().join("deploy/slurm/tune-workers.sh"))
        .args(extra)
        .env("XRAY", env!("CARGO_BIN_EXE_xray"))
        .env("CONFIG", cfg)
        .env("DB", url)
        .env("OUT", out)
        .env("SLURM_JOB_ID", "w")
        .env("SLURM_ARRAY_TASK_ID", task.to_string())
        .env("SLURM_CPUS_PER_TASK", "1");
    c
}

/// The index a worker's name ends with (`w0` or, from the Slurm script, `w-0`).
fn worker_index(name: &str) -> usize {
    let digits = name.len() - name.trim_start_matches(|c: char| !c.is_ascii_digit()).len();
    name[digits..].parse().unwrap()
}

/// Runs one worker per folder of `outs` at once and waits for all: the last through
/// `deploy/slurm/tune-workers.sh` (named `w-<i>`), the others directly (named `w<i>`). Each
/// must succeed with a clean stderr.
fn run_workers(cfg: &Path, url: &str, outs: &[PathBuf], extra: &[&str]) {
    let children: Vec<Child> = outs
        .iter()
        .enumerate()
        .map(|(i, out)| {
            let mut c = if i + 1 == outs.len() {
                slurm_worker(cfg, url, out, i, extra)
            } else {
                worker(cfg, url, out, &format!("w{i}"), extra)
            };
            c.stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = assert_ok(child.wait_with_output().unwrap());
        assert_clean_stderr(&out.stderr);
    }
}

/// A throwaway database `db` and a search of `tune` (a `[tune]` table) over a small synth
/// split, in a temporary folder.
struct SearchFixture {
    _pg: Postgres,
    url: String,
    dir: tempfile::TempDir,
    split: PathBuf,
    cfg: PathBuf,
}

impl SearchFixture {
    /// A database `db` on a new server, a small split and a config with `tune`.
    fn new(db: &str, tune: &str) -> Self {
        let pg = Postgres::start();
        let url = pg.database(db);
        let dir = tempfile::tempdir().unwrap();
        let split = small_split(dir.path());
        let cfg = config(dir.path(), &split, tune);
        Self {
            _pg: pg,
            url,
            dir,
            split,
            cfg,
        }
    }
}

/// Trial rows of the database: (trial, status, worker, claims, params).
fn trial_rows(url: &str) -> Vec<(i32, String, String, i32, Vec<String>)> {
    client(url)
        .query(
            "SELECT trial, status, worker, claims, params FROM xray_trial ORDER BY trial",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A search shared through PostgreSQL.

#[test]
#[ignore = "needs PostgreSQL (scripts/setup/postgres.sh); make test runs it"]
fn three_workers_run_each_grid_trial_exactly_once() {
    let f = SearchFixture::new(
        "grid",
        "[tune]\nstrategy = \"grid\"\nprune = \"none\"\n[tune.space]\n\"train.lr\" = [0.01, 0.003, 0.001]\n\"model.dropout\" = [0.0, 0.2, 0.4]\n",
    );
    let SearchFixture {
        _pg, url, dir, cfg, ..
    } = f;
    let outs: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("w{i}"))).collect();
    run_workers(&cfg, &url, &outs, &["--set", "train.epochs=2"]);
    let rows = trial_rows(&url);
    assert_eq!(rows.len(), 9, "{rows:?}");
    let workers: BTreeSet<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    assert!(workers.len() >= 2, "the trials were shared: {workers:?}");
    for (trial, status, worker, claims, _) in &rows {
        assert_eq!(status, "complete", "trial {trial}");
        assert_eq!(*claims, 1, "trial {trial} was claimed once");
        // Trained in its worker's folder, and only there.
        let name = format!("trials/{trial:04}/model.safetensors");
        let holders: Vec<usize> = (0..3).filter(|i| outs[*i].join(&name).is_file()).collect();
        assert_eq!(holders, vec![worker_index(worker)], "trial {trial}");
    }
    let points: BTreeSet<Vec<String>> = rows.iter().map(|r| r.4.clone()).collect();
    assert_eq!(points.len(), 9, "the nine grid points, each once");

    // Any machine writes the search's files from the database.
    let report = dir.path().join("report");
    let out = worker(
        &cfg,
        &url,
        &report,
        "r",
        &["--report", "--set", "train.epochs=2"],
    )
    .output_ok();

    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("9 trial(s) of 9 finished (0 run now)"),
        "{stdout}"
    );
    let csv = std::fs::read_to_string(report.join("trials.csv")).unwrap();
    assert_eq!(csv.lines().count(), 10, "{csv}");
    assert!(report.join("best.toml").is_file() && report.join("trials.png").is_file());
}

#[test]
#[ignore = "needs PostgreSQL (scripts/setup/postgres.sh); make test runs it"]
fn a_killed_workers_trial_is_finished_by_another() {
    let f = SearchFixture::new(
        "killed",
        "[tune]\nstrategy = \"grid\"\nprune = \"none\"\n[tune.space]\n\"train.lr\" = [0.005]\n",
    );
    let SearchFixture {
        _pg, url, dir, cfg, ..
    } = f;
    // Shared storage: both workers use the same folder, so the trial resumes from its
    // checkpoint.
    let out = dir.path().join("search");
    let args = ["--set", "train.epochs=6", "--heartbeat-timeout", "3"];
    let mut a = worker(&cfg, &url, &out, "a", &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let epochs = |url: &str| -> i64 {
        client(url)
            .query_one("SELECT count(*) FROM xray_epoch", &[])
            .map(|r| r.get(0))
            .unwrap_or(0)
    };
    loop {
        assert!(
            a.try_wait().unwrap().is_none(),
            "worker a ended before it was killed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no epoch recorded"
        );
        // The tables exist once the worker connected.
        if epochs(&url) >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    a.kill().unwrap(); // SIGKILL
    a.wait().unwrap();
    let rows = trial_rows(&url);
    assert_eq!((rows[0].1.as_str(), rows[0].2.as_str()), ("running", "a"));

    let b = worker(&cfg, &url, &out, "b", &args).output_ok();
    let stderr = String::from_utf8_lossy(&b.stderr);
    assert!(
        stderr.contains(
            "trial 0: taken over from a worker that stopped (resuming from its last checkpoint)"
        ),
        "{stderr}"
    );
    let rows = trial_rows(&url);
    assert_eq!(rows.len(), 1);
    let (_, status, worker_name, claims, _) = &rows[0];
    assert_eq!(
        (status.as_str(), worker_name.as_str(), *claims),
        ("complete", "b", 2)
    );
    // Every epoch once: the resumed run carried on where the killed one stopped.
    let metrics = std::fs::read_to_string(out.join("trials/0000/metrics.csv")).unwrap();
    let epochs_seen: Vec<String> = metrics
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    assert_eq!(
        epochs_seen,
        (1..=6).map(|e| e.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(epochs(&url), 6);
}

#[test]
#[ignore = "needs PostgreSQL (scripts/setup/postgres.sh); make test runs it"]
fn tpe_workers_propose_no_point_twice_and_bad_storage_is_a_usage_error() {
    // Eight points and eight trials: independent draws would almost surely repeat one
    // (all distinct with probability 8!/8^8, 0.24%).
    let f = SearchFixture::new(
        "tpe",
        "[tune]\nstrategy = \"tpe\"\ntrials = 8\nstartup_trials = 3\nprune = \"none\"\n[tune.space]\n\"train.lr\" = [0.01, 0.001]\n\"train.optimizer\" = [\"adamw\", \"sgd\"]\n\"train.batch_size\" = [16, 32]\n",
    );
    let SearchFixture {
        _pg,
        url,
        dir,
        split,
        cfg,
    } = f;
    let outs: Vec<PathBuf> = (0..2).map(|i| dir.path().join(format!("w{i}"))).collect();
    run_workers(&cfg, &url, &outs, &["--set", "train.epochs=1"]);
    let rows = trial_rows(&url);
    assert_eq!(rows.len(), 8);
    let points: HashSet<Vec<String>> = rows.iter().map(|r| r.4.clone()).collect();
    assert_eq!(points.len(), 8, "no point twice: {rows:?}");

    // The same search name with another space: exit 2.
    let other = config(
        dir.path(),
        &split,
        "[tune]\nstrategy = \"grid\"\n[tune.space]\n\"train.lr\" = [0.1]\n",
    );
    let out = worker(&other, &url, &dir.path().join("x"), "x", &[])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists there with another config"));

    // A URL that is not PostgreSQL's, and a server that does not answer: one line, exit 2,
    // no password shown.
    for (storage, why) in [
        ("mysql://root@localhost/x", "not a PostgreSQL URL"),
        (
            "postgres://xray:hunter2secret@127.0.0.1:1/none",
            "cannot connect",
        ),
        ("postgres://xray@127.0.0.1:notaport/x", "--storage"),
    ] {
        let out = worker(&cfg, storage, &dir.path().join("bad"), "z", &[])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{storage}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
        assert!(!stderr.contains("hunter2secret"), "{stderr}");
    }
}

// ---------------------------------------------------------------------------------------------
// Sharded prediction.

/// CSV rows by path: (label, probabilities).
fn csv_rows(text: &str) -> Vec<(String, String, Vec<f64>)> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            let numbers = (2..r.len() - 3)
                .filter(|&i| !r[i].is_empty())
                .map(|i| r[i].parse::<f64>().unwrap())
                .collect();
            (r[0].to_string(), r[1].to_string(), numbers)
        })
        .collect()
}

fn assert_same_predictions(a: &str, b: &str) {
    assert_eq!(a.lines().next(), b.lines().next(), "the same columns");
    let (ra, rb) = (csv_rows(a), csv_rows(b));
    assert_eq!(ra.len(), rb.len());
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!((&x.0, &x.1), (&y.0, &y.1));
        for (p, q) in x.2.iter().zip(&y.2) {
            // Batches of other sizes may round the last printed digit differently.
            assert!((p - q).abs() <= 2e-6, "{}: {p} vs {q}", x.0);
        }
    }
}

#[test]
fn four_shards_merge_into_the_unsharded_output() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let data = synth_dataset(dir.path(), 30, 64);
    // An unreadable file gets a row with its reason, in every mode.
    std::fs::write(data.join("normal/broken.png"), b"not a png").unwrap();
    let predict = || {
        let mut c = xray();
        c.arg("predict").arg("--checkpoint").arg(&t.run);
        c
    };
    let whole = predict().args(["--format", "csv"]).arg(&data).stdout_ok();
    assert_eq!(whole.lines().count(), 62, "a header and one row per file");
    assert!(whole.lines().next().unwrap().ends_with(",error"));
    let broken = whole.lines().find(|l| l.contains("broken.png")).unwrap();
    assert!(broken.contains("not a recognised image"), "{broken}");

    let shards = dir.path().join("shards");
    std::fs::create_dir(&shards).unwrap();
    // Shards 0 and 1 as plain flags, 2 as a Slurm array task (`--array=1-4`: ids from 1) through
    // deploy/slurm/predict-array.sh, 3 as a Kubernetes Indexed Job's pod.
    let slurm = || {
        let mut c = assert_cmd::Command::new("bash");
        c.arg(repo().join("deploy/slurm/predict-array.sh"))
            .env("XRAY", env!("CARGO_BIN_EXE_xray"))
            .env("ARCHIVE", &data)
            .env("RUN", &t.run)
            .env("OUT", &shards)
            .env("SLURM_ARRAY_TASK_ID", "3")
            .env("SLURM_ARRAY_TASK_MIN", "1")
            .env("SLURM_ARRAY_TASK_COUNT", "4");
        c
    };
    let flags = |spec: &str, file: &str| {
        let mut c = predict();
        c.args(["--shard", spec, "--out"])
            .arg(shards.join(file))
            .arg(&data);
        c
    };
    let mut k8s = flags("auto/4", "part-3.csv");
    k8s.env("JOB_COMPLETION_INDEX", "3");
    let runs = [
        (flags("0/4", "part-0.csv"), "part-0.csv"),
        (flags("1/4", "part-1.csv"), "part-1.csv"),
        (slurm(), "shard-3.csv"),
        (k8s, "part-3.csv"),
    ];
    let mut total = 0;
    for (i, (mut run, file)) in runs.into_iter().enumerate() {
        let out = run.output_ok();
        assert_clean_stderr(&out.stderr);
        let manifest = read_json(&shards.join(format!("{file}.json")));
        assert_eq!(manifest["shard"], format!("{i}/4"));
        total += manifest["rows"].as_u64().unwrap();
    }
    assert_eq!(total, 61, "the shards share the files without overlap");

    let merged = dir.path().join("all.csv");
    let out = xray()
        .args(["merge"])
        .arg(&shards)
        .arg("--out")
        .arg(&merged)
        .arg("--inputs")
        .arg(&data)
        .output_ok();

    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(
            "61 row(s) from 4 file(s) (all 4 shards), 1 of them errors; every input exactly once"
        ),
        "{said}"
    );
    assert_same_predictions(&whole, &std::fs::read_to_string(&merged).unwrap());

    // A missing shard, or an input without a row, is exit 1 naming it.
    std::fs::remove_file(shards.join("shard-3.csv")).unwrap();
    std::fs::remove_file(shards.join("shard-3.csv.json")).unwrap();
    let out = xray()
        .arg("merge")
        .arg(&shards)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shard(s) 2/4 missing of 4"));

    // A scheduler variable missing: exit 2.
    let out = predict()
        .args(["--shard", "auto", "--out"])
        .arg(dir.path().join("x.csv"))
        .arg(&data)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_clean_stderr(&out.stderr);
}

#[test]
fn a_shard_killed_and_rerun_neither_repeats_nor_loses_rows() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let data = synth_dataset(dir.path(), 100, 64);
    let out_file = dir.path().join("preds.jsonl");
    let partial = dir.path().join("preds.jsonl.partial");
    let predict = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_xray"));
        c.arg("predict")
            .arg("--checkpoint")
            .arg(&t.run)
            // Pieces of 8 images, each synced: many chances to be killed between them.
            .args(["--batch-size", "1", "--out"])
            .arg(&out_file)
            .arg(&data);
        c
    };
    let mut child = predict()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it was killed"
        );
        assert!(started.elapsed() < Duration::from_secs(120));
        let lines = std::fs::read_to_string(&partial).map_or(0, |t| t.lines().count());
        if lines >= 16 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out_file.exists(), "the file is named only when complete");
    let before = std::fs::read_to_string(&partial).unwrap().lines().count();
    assert!(before < 200, "killed part way ({before} rows)");

    let rerun = predict().output_ok();
    let stderr = String::from_utf8_lossy(&rerun.stderr);
    assert!(stderr.contains("done earlier"), "{stderr}");
    let text = std::fs::read_to_string(&out_file).unwrap();
    let mut paths: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(v["label"].is_string(), "{l}");
            v["path"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(paths.len(), 200);
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 200, "no row twice");
    // Run again when complete: nothing to do, nothing changes.
    predict().output_ok();
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), text);
}

// ---------------------------------------------------------------------------------------------
// The server in a cluster.

/// Samples of one metric family: labels to value.
fn samples(scrape: &prometheus_parse::Scrape, name: &str) -> Vec<(HashMap<String, String>, f64)> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| {
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            };
            let labels = s
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (labels, value)
        })
        .collect()
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(scrape, name)
        .into_iter()
        .filter(|(l, _)| {
            labels
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn metrics_count_a_known_sequence_and_logs_are_json() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xray"));
    cmd.arg("serve")
        .arg("--checkpoint")
        .arg(&t.run)
        .args([
            "--addr",
            "127.0.0.1:0",
            "--device",
            "cpu",
            "--log-format",
            "json",
            "--metrics-labels",
        ])
        .stderr(std::fs::File::create(&log).unwrap());
    let server = Server::spawn(cmd, ureq::Agent::new());

    let png = std::fs::read(t.data.join("normal/normal_00001.png")).unwrap();
    let png2 = std::fs::read(t.data.join("opacity/opacity_00001.png")).unwrap();
    assert_eq!(server.get("/healthz").0, 200);
    assert_eq!(server.get("/healthz").0, 200);
    let (code, ready) = server.get("/readyz");
    assert_eq!(code, 200, "{ready}");
    assert!(ready.contains("\"ready\""), "{ready}");
    let mut labels = Vec::new();
    for bytes in [&png, &png2] {
        let (code, v) = server.predict("x.png", bytes, "");
        assert_eq!(code, 200, "{v}");
        labels.push(v["label"].as_str().unwrap().to_string());
    }
    assert_eq!(server.predict("notes.png", b"plain text", "").0, 415);
    assert_eq!(server.get("/no-such-page").0, 404);

    let (code, text) = server.get("/metrics");
    assert_eq!(code, 200);
    // Strict: every line is a comment (HELP/TYPE) or `name{labels} value`.
    let sample = regex::Regex::new(
        r#"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? -?[0-9.eE+-]+|\+Inf|NaN$"#,
    )
    .unwrap();
    for l in text.lines() {
        assert!(
            l.starts_with("# HELP ") || l.starts_with("# TYPE ") || sample.is_match(l),
            "not Prometheus text: {l}"
        );
    }
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let requests = "xray_http_requests_total";
    assert_eq!(
        value(
            &scrape,
            requests,
            &[("route", "/healthz"), ("status", "200")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &scrape,
            requests,
            &[("route", "/readyz"), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            requests,
            &[("route", "/api/predict"), ("status", "200")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &scrape,
            requests,
            &[("route", "/api/predict"), ("status", "415")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            requests,
            &[("route", "unmatched"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        value(&scrape, requests, &[]),
        7.0,
        "the scrape itself is not counted yet"
    );
    let latency = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "xray_http_request_duration_seconds"
                && s.labels.get("route") == Some("/api/predict")
        })
        .expect("a latency histogram for /api/predict");
    match &latency.value {
        prometheus_parse::Value::Histogram(buckets) => {
            let inf = buckets.iter().map(|b| b.count).fold(0.0, f64::max);
            assert_eq!(inf, 3.0, "three predict requests in the histogram");
        }
        other => panic!("not a histogram: {other:?}"),
    }
    for label in &labels {
        assert!(value(&scrape, "xray_predictions_total", &[("label", label)]) >= 1.0);
    }
    assert_eq!(value(&scrape, "xray_predictions_total", &[]), 2.0);
    assert_eq!(value(&scrape, "xray_inference_queue_depth", &[]), 0.0);
    assert_eq!(value(&scrape, "xray_inference_queue_capacity", &[]), 8.0);
    assert!(value(&scrape, "xray_model_load_seconds", &[]) > 0.0);
    assert_eq!(
        value(&scrape, "xray_model_info", &[("arch", "simple_cnn")]),
        1.0
    );

    drop(server);
    // One JSON object per line; one access line per request, with its id, route and status.
    let logged = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = logged
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let access: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v["fields"]["message"] == "request")
        .collect();
    assert_eq!(access.len(), 8, "{logged}");
    let predicts: Vec<i64> = access
        .iter()
        .filter(|v| v["fields"]["route"] == "/api/predict")
        .map(|v| v["fields"]["status"].as_i64().unwrap())
        .collect();
    assert_eq!(predicts, vec![200, 200, 415]);
    assert!(access.iter().all(|v| v["fields"]["request_id"]
        .as_str()
        .is_some_and(|s| !s.is_empty())
        && v["level"] == "INFO"
        && v["timestamp"].is_string()));
    assert!(lines.iter().any(|v| v["fields"]["message"] == "listening"));
}
