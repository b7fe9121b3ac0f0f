//! PostgreSQL for the tests: a database of a test's own on this machine's server, dropped when
//! the test ends ([`TestDatabase`]); and [`Backend`], which runs one test body on SQLite and on
//! PostgreSQL ([`on_both_backends!`](crate::on_both_backends)).
//!
//! The server is `postgres://postgres@127.0.0.1:5432/postgres` (trust authentication, as CI sets
//! it up), or the URL in `LEDTEMP_TEST_POSTGRES_URL`: its database is where test databases are
//! created from. When it cannot be reached, a PostgreSQL test is skipped with the reason, unless
//! `LEDTEMP_REQUIRE_POSTGRES=1` (CI) makes that a failure.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use ledtemp_web::Database;
use tokio_postgres::{Client, NoTls};

/// Set to `1` (as `.ci/run` does), an unreachable PostgreSQL fails the test instead of skipping
/// it.
pub const REQUIRE_POSTGRES_ENV: &str = "LEDTEMP_REQUIRE_POSTGRES";

/// The administrator's URL, if not the default [`DEFAULT_ADMIN_URL`].
pub const ADMIN_URL_ENV: &str = "LEDTEMP_TEST_POSTGRES_URL";

/// This machine's PostgreSQL, as CI has it: user `postgres`, trust authentication.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable";

/// The administrator's URL: [`ADMIN_URL_ENV`] or [`DEFAULT_ADMIN_URL`].
pub fn admin_url() -> String {
    std::env::var(ADMIN_URL_ENV).unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// `url` with its database replaced by `name` (the query, such as `sslmode`, kept).
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority = base.find("://").map_or(0, |at| at + 3);
    let path = base[authority..].find('/').map_or(base.len(), |at| authority + at);
    format!("{}/{name}{query}", &base[..path])
}

/// Runs `future` to completion on a runtime of its own, on a thread of its own: callable from a
/// plain test and from inside a tokio test alike.
fn run<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(future)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Connects to `url`; the connection lives as long as the returned client (on the caller's
/// runtime).
async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A database with a fresh name on the test server, dropped (with any connection still open to
/// it) when this is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    admin: String,
    url: String,
}

impl TestDatabase {
    /// Creates a database of the test's own: `ledtemp_test_PID_N_RANDOM`. `None` when the server
    /// cannot be reached: the test is then skipped with the reason on standard error (or fails,
    /// with [`REQUIRE_POSTGRES_ENV`] set).
    pub fn create() -> Option<TestDatabase> {
        static CREATED: AtomicU32 = AtomicU32::new(0);
        let admin = admin_url();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.subsec_nanos());
        let name = format!(
            "ledtemp_test_{}_{}_{nanos:x}",
            std::process::id(),
            CREATED.fetch_add(1, Ordering::Relaxed)
        );
        let created = run(async {
            let client = connect(&admin).await?;
            client.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await
        });
        match created {
            Ok(()) => {
                let url = with_database(&admin, &name);
                Some(TestDatabase { name, admin, url })
            }
            Err(error) if error.as_db_error().is_none() => {
                let test = std::thread::current().name().unwrap_or("a test").to_owned();
                let cause = std::error::Error::source(&error)
                    .map_or_else(|| error.to_string(), |cause| format!("{error}: {cause}"));
                let why = format!(
                    "PostgreSQL at {} cannot be reached ({cause}; set {ADMIN_URL_ENV} to use \
                     another server)",
                    redacted(&admin)
                );
                crate::skip_unless_required(REQUIRE_POSTGRES_ENV, &test, &why);
                None
            }
            Err(error) => panic!("creating the test database {name}: {error}"),
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// It, as the server's setting.
    pub fn database(&self) -> Database {
        Database::parse(&self.url).unwrap()
    }

    /// Runs `sql` (one or more statements) in it, as the administrator.
    pub fn execute(&self, sql: &str) {
        run(async {
            let client = connect(&self.url).await.unwrap();
            client.batch_execute(sql).await
        })
        .unwrap_or_else(|error| panic!("{sql}: {error:?}"));
    }

    /// The first column of each row `sql` returns, as integers (`COUNT(*)`, `BIGINT` columns;
    /// cast others in the query).
    pub fn query_i64(&self, sql: &str) -> Vec<i64> {
        run(async {
            let client = connect(&self.url).await.unwrap();
            let rows = client.query(sql, &[]).await?;
            Ok::<_, tokio_postgres::Error>(rows.iter().map(|row| row.get::<_, i64>(0)).collect())
        })
        .unwrap_or_else(|error| panic!("{sql}: {error:?}"))
    }

    /// The first column of each row `sql` returns, as text (cast others in the query).
    pub fn query_text(&self, sql: &str) -> Vec<String> {
        run(async {
            let client = connect(&self.url).await.unwrap();
            let rows = client.query(sql, &[]).await?;
            Ok::<_, tokio_postgres::Error>(rows.iter().map(|row| row.get::<_, String>(0)).collect())
        })
        .unwrap_or_else(|error| panic!("{sql}: {error:?}"))
    }

    /// Ends every other connection to it (as a database restart or a network cut would), the
    /// way `pg_terminate_backend` does.
    pub fn terminate_connections(&self) {
        self.execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = '{}' AND pid <> pg_backend_pid()",
            self.name
        ));
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let drop_it = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let dropped = run(async {
            let client = connect(&self.admin).await?;
            client.batch_execute(&drop_it).await
        });
        if let Err(error) = dropped {
            eprintln!("dropping the test database {}: {error}", self.name);
        }
    }
}

/// `url` without its password, for a skip message.
fn redacted(url: &str) -> String {
    match Database::parse(url) {
        Ok(database) => database.to_string(),
        Err(_) => "the test server".to_owned(),
    }
}

/// The database a server test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the test's directory.
    Sqlite,
    /// A database of the test's own on the test PostgreSQL server ([`TestDatabase`]).
    Postgres,
}

/// A fresh database on one [`Backend`]; a PostgreSQL database is dropped with it.
#[derive(Debug)]
pub struct BackendDatabase {
    database: Database,
    postgres: Option<TestDatabase>,
}

impl BackendDatabase {
    /// The server's setting for it.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// The PostgreSQL database, to look into or tamper with; `None` on SQLite.
    pub fn postgres(&self) -> Option<&TestDatabase> {
        self.postgres.as_ref()
    }

    /// Runs `sql` (statements both databases understand, such as `ALTER TABLE ... RENAME TO`)
    /// on a connection of its own: to break the database under a running server, and mend it.
    pub fn execute(&self, sql: &str) {
        match (&self.database, &self.postgres) {
            (_, Some(postgres)) => postgres.execute(sql),
            (Database::Sqlite(path), None) => rusqlite::Connection::open(path)
                .and_then(|connection| connection.execute_batch(sql))
                .unwrap_or_else(|error| panic!("{sql}: {error}")),
            (Database::Postgres(_), None) => unreachable!("a PostgreSQL database is kept"),
        }
    }
}

impl Backend {
    /// A fresh, empty database: `dir/ledtemp.db`, or a new PostgreSQL database. `None` when
    /// PostgreSQL cannot be reached: the test is skipped (see [`TestDatabase::create`]) and
    /// should return.
    pub fn database(self, dir: &Path) -> Option<BackendDatabase> {
        match self {
            Backend::Sqlite => Some(BackendDatabase {
                database: Database::Sqlite(dir.join("ledtemp.db")),
                postgres: None,
            }),
            Backend::Postgres => {
                let postgres = TestDatabase::create()?;
                Some(BackendDatabase { database: postgres.database(), postgres: Some(postgres) })
            }
        }
    }
}

/// Makes two tests of one body `fn NAME(backend: Backend)`: `NAME::sqlite` and `NAME::postgres`.
///
/// `on_both_backends!(fn NAME);` for a plain test; `on_both_backends!(#[ATTRIBUTE] async fn
/// NAME);` for an async body, with the test attribute to use (such as
/// `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`). The body gets its database
/// from [`Backend::database`] and returns when that is `None` (PostgreSQL skipped).
///
/// ```
/// use ledtemp_test_support::on_both_backends;
/// use ledtemp_test_support::postgres::Backend;
///
/// fn the_database_opens(backend: Backend) {
///     let dir = tempfile::tempdir().unwrap();
///     let Some(database) = backend.database(dir.path()) else { return };
///     database.database().open().unwrap();
/// }
/// on_both_backends!(fn the_database_opens);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! on_both_backends {
    (fn $name:ident) => {
        mod $name {
            #[test]
            fn sqlite() {
                super::$name($crate::postgres::Backend::Sqlite)
            }

            #[test]
            fn postgres() {
                super::$name($crate::postgres::Backend::Postgres)
            }
        }
    };
    (#[$attribute:meta] async fn $name:ident) => {
        mod $name {
            #[$attribute]
            async fn sqlite() {
                super::$name($crate::postgres::Backend::Sqlite).await
            }

            #[$attribute]
            async fn postgres() {
                super::$name($crate::postgres::Backend::Postgres).await
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_database_url_keeps_the_server_and_the_options() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgresql://u:p@h", "t2"), "postgresql://u:p@h/t2");
    }
}
