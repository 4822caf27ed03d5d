//! Databases for tests: a fresh PostgreSQL database per test, and a fresh
//! SQLite file per test.
//!
//! PostgreSQL is found in this order: `DATABASE_URL`; the local server at
//! 127.0.0.1:5432 (user `postgres`, database `test`); a throwaway cluster
//! started from the `initdb` and `pg_ctl` on the PATH under
//! `target/tmp/postgres`. Without any of them the test fails and says how to
//! get one: database tests never skip.
//!
//! Each test gets its own database (`zeh_t_<pid>_<n>`), so tests run in
//! parallel and `LISTEN`/`NOTIFY` channels never cross. Databases left by
//! test processes that have ended are dropped when the next one starts.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

#[cfg(feature = "postgres")]
pub(crate) use self::postgres::{TestPostgres, cluster, crash, database_on, postgres};

/// A fresh SQLite file for the calling test, under `target/tmp`.
pub(crate) fn sqlite_path(test: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sqlite");
    std::fs::create_dir_all(&dir).expect("creating the SQLite test folder");
    let path = dir.join(format!(
        "{test}-{}-{}.db",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

/// The `sqlite://` URL of a fresh SQLite file for the calling test,
/// created when first opened.
pub(crate) fn sqlite_url(test: &str) -> String {
    format!("sqlite://{}?mode=rwc", sqlite_path(test).display())
}

#[cfg(feature = "postgres")]
mod postgres {
    use std::path::Path;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use sqlx::{Connection, Executor, PgConnection, Row};
    use tokio::sync::OnceCell;

    const LOCAL_SERVER: &str = "postgres://postgres@127.0.0.1:5432/test";
    const THROWAWAY_PORT: u16 = 25429;
    const PREFIX: &str = "zeh_t_";

    /// A database of its own for one test.
    #[derive(Debug, Clone)]
    pub(crate) struct TestPostgres {
        /// The URL of the test's database.
        pub(crate) url: String,
        /// The database's name.
        pub(crate) name: String,
    }

    /// Creates a fresh, empty PostgreSQL database for the calling test.
    pub(crate) async fn postgres() -> TestPostgres {
        static SERVER: OnceCell<String> = OnceCell::const_new();

        let admin_url = SERVER.get_or_init(find_server).await;
        database_on(admin_url).await
    }

    /// Creates a fresh, empty database for the calling test on the server of
    /// `admin_url`.
    pub(crate) async fn database_on(admin_url: &str) -> TestPostgres {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let mut admin = PgConnection::connect(admin_url)
            .await
            .unwrap_or_else(|error| panic!("connecting to PostgreSQL at {admin_url}: {error}"));
        let name = format!(
            "{PREFIX}{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        admin
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await
            .expect("dropping a leftover test database");
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("creating the test database");
        TestPostgres {
            url: with_database(admin_url, &name),
            name,
        }
    }

    /// The admin URL of a server that answers, after dropping the databases of
    /// test processes that have ended.
    async fn find_server() -> String {
        let configured = std::env::var("DATABASE_URL").ok();
        let candidate = configured
            .clone()
            .unwrap_or_else(|| LOCAL_SERVER.to_owned());
        let url = if answers(&candidate).await {
            candidate
        } else {
            match start_throwaway_cluster().await {
                Ok(url) => url,
                Err(why) => panic!(
                    "the database tests need PostgreSQL, and none answers at {candidate} \
                     ({}); a throwaway cluster could not be started either: {why}. \
                     Install PostgreSQL (`apt-get install postgresql`) and either start it \
                     on 127.0.0.1:5432 with trust auth for user `postgres` and a database \
                     `test`, or set DATABASE_URL to a server where the user may create databases.",
                    if configured.is_some() {
                        "DATABASE_URL"
                    } else {
                        "the default"
                    }
                ),
            }
        };
        drop_stale_databases(&url).await;
        url
    }

    async fn answers(url: &str) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(url)).await,
            Ok(Ok(_))
        )
    }

    /// Drops `zeh_t_<pid>_<n>` databases whose process is gone.
    async fn drop_stale_databases(url: &str) {
        let Ok(mut admin) = PgConnection::connect(url).await else {
            return;
        };
        let rows = sqlx::query("SELECT datname FROM pg_database WHERE datname LIKE 'zeh\\_t\\_%'")
            .fetch_all(&mut admin)
            .await
            .unwrap_or_default();
        for row in rows {
            let name: String = row.get(0);
            let pid = name
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.split('_').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            let alive = pid.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            if !alive {
                let _ = admin
                    .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await;
            }
        }
    }

    /// Starts (or reuses) a cluster under `target/tmp/postgres`, listening on
    /// 127.0.0.1 only.
    async fn start_throwaway_cluster() -> Result<String, String> {
        cluster("postgres", THROWAWAY_PORT, &[]).await
    }

    /// Starts (or reuses, if one answers on `port`: below the ephemeral
    /// range, 32768 and up, where a client's connection may hold it) a
    /// throwaway cluster of
    /// its own under `target/tmp/<name>`, listening on 127.0.0.1:`port` only,
    /// with the server `settings` (`name=value`) on top of the defaults:
    /// for a test that needs settings, a crash or a restore of its own. The
    /// admin URL.
    pub(crate) async fn cluster(
        name: &str,
        port: u16,
        settings: &[&str],
    ) -> Result<String, String> {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        let data = dir.join("data");
        // A server on the port that is not this folder's (another checkout's
        // tests, say) is left alone: the next free port serves instead.
        let mut port = port;
        loop {
            let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
            match serves_from(&url).await {
                None => break,
                Some(served) if Path::new(&served) == data => return Ok(url),
                Some(_) if port < u16::MAX => port += 1,
                Some(served) => return Err(format!("no free port: {served} holds the last")),
            }
        }
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        // PostgreSQL refuses to run as root; run it as `postgres` then.
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| out.stdout.trim_ascii() == b"0");
        if as_root {
            run(Command::new("chown").args(["-R", "postgres"]).arg(&dir))?;
        }
        let tool = |name: &str| server_tool(as_root, name);
        if !data.join("PG_VERSION").exists() {
            run(tool("initdb")
                .args(["-A", "trust", "-U", "postgres", "-D"])
                .arg(&data))?;
        }
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {}",
            dir.display()
        );
        for setting in settings {
            options.push_str(" -c ");
            options.push_str(setting);
        }
        // A server of this folder left running on another port (or with
        // other settings) by an earlier run: stop it first. A pid file left
        // by a server that is gone (or copied with the folder) is removed.
        let running = tool("pg_ctl")
            .args(["status", "-D"])
            .arg(&data)
            .output()
            .is_ok_and(|output| output.status.success());
        if running {
            let stopped = tool("pg_ctl")
                .args(["stop", "-m", "fast", "-w", "-t", "10", "-D"])
                .arg(&data)
                .output()
                .is_ok_and(|output| output.status.success());
            if !stopped {
                let _ = std::fs::remove_file(data.join("postmaster.pid"));
            }
        }
        run(tool("pg_ctl")
            .args(["-w", "-D"])
            .arg(&data)
            .args(["-l"])
            .arg(dir.join("log"))
            .args(["-o", &options, "start"]))?;
        if answers(&url).await {
            Ok(url)
        } else {
            Err(format!("it started but does not answer at {url}"))
        }
    }

    /// The data directory of the server at `url`, if one answers.
    async fn serves_from(url: &str) -> Option<String> {
        let connect = tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(url));
        let mut connection = connect.await.ok()?.ok()?;
        sqlx::query_scalar("SHOW data_directory")
            .fetch_one(&mut connection)
            .await
            .ok()
    }

    /// The server program `name`, run as `postgres` when the test runs as
    /// root (PostgreSQL refuses to run as root).
    fn server_tool(as_root: bool, name: &str) -> Command {
        let mut command = if as_root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--", name]);
            command
        } else {
            Command::new(name)
        };
        command.env("LC_ALL", "C");
        command
    }

    /// Crashes the throwaway cluster `name` (`pg_ctl stop -m immediate`:
    /// no checkpoint, what is not flushed to its WAL is lost); `cluster`
    /// starts it again.
    pub(crate) fn crash(name: &str) -> Result<(), String> {
        let data = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(name)
            .join("data");
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| out.stdout.trim_ascii() == b"0");
        run(server_tool(as_root, "pg_ctl")
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(&data))
    }

    fn run(command: &mut Command) -> Result<(), String> {
        let shown = format!("{command:?}");
        let output = command
            .output()
            .map_err(|error| format!("{shown} could not run: {error}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{shown} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    /// `url` with its database replaced by `name`.
    fn with_database(url: &str, name: &str) -> String {
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (url, None),
        };
        let server = match base.rfind('/') {
            Some(slash) if slash > "postgres://".len() => &base[..slash],
            _ => base,
        };
        match query {
            Some(query) => format!("{server}/{name}?{query}"),
            None => format!("{server}/{name}"),
        }
    }
}
