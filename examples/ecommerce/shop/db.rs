//! Each service's own SQLite file (in the system's temporary directory).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

/// One connection to a service's database. The example's queries are
/// tiny, so handlers run them inline under the lock.
pub type Db = Arc<Mutex<rusqlite::Connection>>;

/// Opens (or creates) the database at `path` in WAL mode (the two payments
/// instances share theirs) and runs `schema`.
pub fn open(path: &Path, schema: &str) -> Result<Db, rusqlite::Error> {
    let connection = rusqlite::Connection::open(path)?;
    connection.busy_timeout(Duration::from_secs(5))?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.execute_batch(schema)?;
    Ok(Arc::new(Mutex::new(connection)))
}
