//! A damaged `views.sqlite` (pages overwritten, a torn copy) is found when it is opened and
//! set aside, never served: views are only ever derived from the log, so a fresh file that
//! the projections fill again is the repair. The damaged file is kept beside it for a look.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::error::SqliteError;

/// What was found wrong with a database file, and where it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// What SQLite said of it.
    pub damage: String,
    /// Where the damaged file now is.
    pub moved_to: PathBuf,
}

impl Repair {
    /// Says in the log what was found and where the file went: served, damaged views would
    /// answer wrongly or not at all, so the operator should know they are being rebuilt.
    pub(crate) fn report(&self) {
        tracing::error!(
            damage = %self.damage,
            moved_to = %self.moved_to.display(),
            "views.sqlite was damaged: it is set aside, and the views are rebuilt from the log"
        );
    }
}

/// Checks `path` (`PRAGMA quick_check`, which reads every page); when SQLite finds it
/// corrupt or not a database at all, moves it and its write-ahead log aside. A file that
/// cannot be checked for another reason (locked, unreadable) is an error, not damage: moving
/// it would lose what another process is using.
pub(crate) fn set_aside_if_damaged(path: &Path) -> Result<Option<Repair>, SqliteError> {
    if !path.exists() {
        return Ok(None);
    }
    let damage = match check(path) {
        Ok(None) => return Ok(None),
        Ok(Some(damage)) => damage,
        Err(error) if is_damage(&error) => error.to_string(),
        Err(source) => return Err(SqliteError::Open { path: path.to_owned(), source }),
    };
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let moved_to = path.with_extension(format!("sqlite.damaged-{stamp}"));
    let moved = |from: &Path, to: &Path| {
        std::fs::rename(from, to)
            .map_err(|source| SqliteError::SetAside { path: from.to_owned(), source })
    };
    moved(path, &moved_to)?;
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", path.display()));
        if side.exists() {
            moved(&side, &PathBuf::from(format!("{}{suffix}", moved_to.display())))?;
        }
    }
    Ok(Some(Repair { damage, moved_to }))
}

/// `None` when every page is sound, else what `quick_check` reported.
fn check(path: &Path) -> Result<Option<String>, rusqlite::Error> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let mut statement = connection.prepare("PRAGMA quick_check(5)")?;
    let findings: Vec<String> =
        statement.query_map([], |row| row.get(0))?.collect::<Result<_, _>>()?;
    Ok((findings != ["ok"]).then(|| findings.join("; ")))
}

fn is_damage(error: &rusqlite::Error) -> bool {
    matches!(error.sqlite_error_code(), Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase))
}
