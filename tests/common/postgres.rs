//! A real PostgreSQL server for the tests: Debian's `postgresql` package (`.ci/run` installs it),
//! a fresh cluster (`initdb`) in a temporary folder on a free port, run as the `postgres` user
//! when the tests run as root (the server refuses root).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::free_ports;

/// A running server; stopped (immediately) when dropped.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The newest installed server's `bin` folder (Debian keeps it off PATH).
fn server_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    found.retain(|p| p.join("initdb").exists());
    found.sort();
    found
        .pop()
        .expect("PostgreSQL is needed: apt-get install postgresql (.ci/run does)")
}

impl Postgres {
    /// Creates a cluster and starts it.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pg = Postgres {
            bin: server_bin(),
            port: free_ports(1)[0],
            dir,
        };
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(pg.dir.path())
                .status()
                .unwrap();
            assert!(ok.success());
        }
        pg.as_server(
            &pg.bin.join("initdb"),
            &[
                "-D",
                &pg.data().display().to_string(),
                "--auth=trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        pg.resume();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A server program, run as the server's user.
    fn server_cmd(&self, program: &Path) -> Command {
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    /// Runs a server program as the server's user; it must succeed.
    fn as_server(&self, program: &Path, args: &[&str]) {
        let out = self.server_cmd(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program:?} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server (again), waiting until it takes connections.
    pub fn resume(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        self.as_server(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                &self.data().display().to_string(),
                "-o",
                &opts,
                "-l",
                &self.dir.path().join("log").display().to_string(),
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server at once, as a crash would.
    pub fn crash(&self) {
        self.as_server(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                &self.data().display().to_string(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// The connection string the job gets.
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// The connection string of database `db`.
    pub fn url_of(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }

    /// Creates database `db` and returns its connection string.
    pub fn database(&self, db: &str) -> String {
        let mut c = postgres::Client::connect(&self.url(), postgres::NoTls).unwrap();
        c.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
        self.url_of(db)
    }

    /// Each row of `table` as a JSON object shaped like the JSON-lines output (window bounds
    /// in epoch ms, no `row_key`, `replaces` only when set).
    pub fn rows(url: &str, table: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
        let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
        let sql = format!(
            "SELECT (to_jsonb(t) - 'row_key' - 'window_start' - 'window_end') || jsonb_build_object(\
               'window_start', (extract(epoch FROM window_start) * 1000)::bigint, \
               'window_end', (extract(epoch FROM window_end) * 1000)::bigint) FROM \"{table}\" t"
        );
        c.query(sql.as_str(), &[])
            .unwrap()
            .into_iter()
            .map(|r| {
                let v: serde_json::Value = r.get(0);
                let mut m = match v {
                    serde_json::Value::Object(m) => m,
                    other => panic!("{other}"),
                };
                if m.get("replaces").is_some_and(|v| v.is_null()) {
                    m.remove("replaces");
                }
                m
            })
            .collect()
    }

    /// `SELECT count(*)` of a table.
    pub fn count(url: &str, table: &str) -> i64 {
        let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
        c.query_one(format!("SELECT count(*) FROM \"{table}\"").as_str(), &[])
            .unwrap()
            .get(0)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data().display().to_string();
        let _ = self
            .server_cmd(&self.bin.join("pg_ctl"))
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
    }
}

/// The database's rows of every stream, keyed as `read_results` keys a run folder's.
pub fn db_results(url: &str, streams: &[&str]) -> super::Results {
    let mut all = super::Results::new();
    for s in streams {
        for row in Postgres::rows(url, s) {
            let key = super::result_id(&row);
            let start = row["window_start"].as_u64().unwrap();
            let prev = all.insert((s.to_string(), key.clone(), start), row);
            assert!(prev.is_none(), "{s}/{key}/{start} twice in the database");
        }
    }
    all
}

/// `got`'s rows with their fields in the order of `want`'s (a table's column order is not the
/// JSON lines' order; the comparison checks names and order).
pub fn ordered_like(got: super::Results, want: &super::Results) -> super::Results {
    got.into_iter()
        .map(|(k, mut row)| {
            let Some(w) = want.get(&k) else {
                return (k, row);
            };
            let mut m = serde_json::Map::new();
            for name in w.keys() {
                if let Some(v) = row.remove(name) {
                    m.insert(name.clone(), v);
                }
            }
            m.extend(row);
            (k, m)
        })
        .collect()
}
