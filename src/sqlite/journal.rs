//! The journal mode the crate needs, set by the `migrate`s: WAL, so that
//! readers (the feed, the consumer's loads) and the writer do not block
//! each other.

use std::fmt;

use sqlx::SqliteConnection;

/// Sets the database of `connection` to WAL journal mode, unless it is in
/// it already or lives in memory (where the mode is `memory` and cannot
/// change). WAL stays with the file, for every connection after.
///
/// Run it outside a transaction: SQLite refuses to change the mode inside
/// one.
pub(crate) async fn use_wal(connection: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *connection)
        .await?;
    if mode.eq_ignore_ascii_case("wal") {
        return Ok(());
    }
    // An in-memory (or temporary) database has no file.
    let file: String =
        sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
            .fetch_one(&mut *connection)
            .await?;
    if file.is_empty() {
        return Ok(());
    }
    let set = sqlx::query_scalar::<_, String>("PRAGMA journal_mode = WAL")
        .fetch_one(&mut *connection)
        .await;
    match set {
        Ok(now) if now.eq_ignore_ascii_case("wal") => {
            tracing::info!(
                database = %file,
                from = %mode,
                "set the SQLite database's journal mode from {mode} to WAL, which stays with the file"
            );
            Ok(())
        }
        // SQLite answers the mode it kept when it cannot change it.
        Ok(kept) => Err(JournalModeError {
            file,
            mode: kept,
            source: None,
        }
        .into()),
        Err(error) => Err(JournalModeError {
            file,
            mode,
            source: Some(error),
        }
        .into()),
    }
}

/// The database could not be set to WAL journal mode.
#[derive(Debug)]
struct JournalModeError {
    file: String,
    mode: String,
    source: Option<sqlx::Error>,
}

impl fmt::Display for JournalModeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the SQLite database {} is in journal mode {} and could not be set to WAL",
            self.file, self.mode
        )?;
        if let Some(source) = &self.source {
            write!(f, " ({source})")?;
        }
        f.write_str(
            "; WAL is needed so that readers and the writer do not block each other. It \
             can only be set outside a transaction, while no other connection holds the \
             file in a transaction or in `locking_mode=EXCLUSIVE`: migrate again once \
             they are done, or run `PRAGMA journal_mode=WAL` on the file once",
        )
    }
}

impl std::error::Error for JournalModeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|source| source as &(dyn std::error::Error + 'static))
    }
}

impl From<JournalModeError> for sqlx::Error {
    fn from(error: JournalModeError) -> Self {
        sqlx::Error::Configuration(Box::new(error))
    }
}
