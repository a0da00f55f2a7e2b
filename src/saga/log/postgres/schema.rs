//! The tables of a schema: their SQL, creating them and checking their layout version.

use std::time::Duration;

use super::{LONGEST_LEASE, POSTGRES_SCHEMA_VERSION, PostgresConnectError, PostgresLog};
use super::{pool_error, unavailable};

impl PostgresLog {
    pub(super) async fn prepare_schema(&self) -> Result<(), PostgresConnectError> {
        let failed = PostgresConnectError::Unavailable;
        let schema = &self.sql.schema;
        let mut client = self.pool.get().await.map_err(|e| failed(pool_error(e)))?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| failed(unavailable(e)))?;
        // One creator at a time per schema name, across processes.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('palisade saga log ' || $1::text))",
            &[schema],
        )
        .await
        .map_err(|e| failed(unavailable(e)))?;
        let tables: Vec<String> = tx
            .query(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
                &[schema],
            )
            .await
            .map_err(|e| failed(unavailable(e)))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let has = |name: &str| tables.iter().any(|t| t == name);
        if has("saga_schema") {
            let versions: Vec<i32> = tx
                .query(
                    &format!("SELECT version FROM \"{schema}\".saga_schema"),
                    &[],
                )
                .await
                .map_err(|e| failed(unavailable(e)))?
                .iter()
                .map(|row| row.get(0))
                .collect();
            return match versions.as_slice() {
                [POSTGRES_SCHEMA_VERSION] if has("sagas") && has("saga_records") => Ok(()),
                [POSTGRES_SCHEMA_VERSION] => Err(PostgresConnectError::UnknownSchema {
                    schema: schema.clone(),
                    detail: "the `sagas` or `saga_records` table is missing".into(),
                }),
                [found] => Err(PostgresConnectError::SchemaVersion {
                    schema: schema.clone(),
                    found: *found,
                    supported: POSTGRES_SCHEMA_VERSION,
                }),
                other => Err(PostgresConnectError::UnknownSchema {
                    schema: schema.clone(),
                    detail: format!("`saga_schema` holds {} rows, not one", other.len()),
                }),
            };
        }
        if has("sagas") || has("saga_records") {
            return Err(PostgresConnectError::UnknownSchema {
                schema: schema.clone(),
                detail: "it has saga tables but no `saga_schema` version table".into(),
            });
        }
        tx.batch_execute(&self.sql.create_tables)
            .await
            .map_err(|e| failed(unavailable(e)))?;
        tx.commit().await.map_err(|e| failed(unavailable(e)))?;
        tracing::info!(schema = %schema, version = POSTGRES_SCHEMA_VERSION, "postgres saga log schema created");
        Ok(())
    }
}

/// SQL text for one schema, built once.
#[derive(Debug)]
pub(super) struct Statements {
    pub(super) schema: String,
    pub(super) create_tables: String,
    pub(super) create_saga: String,
    pub(super) insert_record: String,
    pub(super) lock: String,
    pub(super) append: String,
    pub(super) set_expiry: String,
    pub(super) release: String,
    pub(super) take: String,
    pub(super) unfinished: String,
    pub(super) take_many: String,
    pub(super) history: String,
    pub(super) history_many: String,
    pub(super) summary: String,
    pub(super) list: String,
    pub(super) prune: String,
}

/// `now() + $n microseconds`, the server-side lease expiry.
fn expiry(param: u8) -> String {
    format!("now() + ${param}::bigint * interval '1 microsecond'")
}

pub(super) fn ttl_micros(ttl: Duration) -> i64 {
    i64::try_from(ttl.min(LONGEST_LEASE).as_micros()).unwrap_or(i64::MAX)
}

const SUMMARY_COLUMNS: &str = "id, definition, version, state, owner, epoch, \
     COALESCE(lease_expires_at > now(), false), records, created_at, updated_at";

pub(super) const RECORD_COLUMNS: &str = "r.seq, r.epoch, r.at, r.kind, r.body::text, r.payload";

impl Statements {
    pub(super) fn new(schema: &str) -> Self {
        let s = format!("\"{schema}\"");
        Self {
            schema: schema.to_owned(),
            create_tables: format!(
                "CREATE SCHEMA IF NOT EXISTS {s};
                 CREATE TABLE {s}.sagas (
                     id text PRIMARY KEY,
                     definition text NOT NULL,
                     version bigint NOT NULL,
                     state text NOT NULL,
                     owner text NOT NULL,
                     epoch bigint NOT NULL,
                     lease_expires_at timestamptz,
                     records bigint NOT NULL,
                     created_at timestamptz NOT NULL,
                     updated_at timestamptz NOT NULL
                 );
                 CREATE INDEX sagas_by_state ON {s}.sagas (state, created_at, id);
                 CREATE INDEX sagas_by_age ON {s}.sagas (created_at, id);
                 CREATE TABLE {s}.saga_records (
                     saga_id text NOT NULL REFERENCES {s}.sagas (id),
                     seq bigint NOT NULL,
                     epoch bigint NOT NULL,
                     at timestamptz NOT NULL,
                     kind text NOT NULL,
                     body jsonb NOT NULL,
                     payload bytea,
                     PRIMARY KEY (saga_id, seq)
                 );
                 CREATE TABLE {s}.saga_schema (version integer NOT NULL);
                 INSERT INTO {s}.saga_schema (version) VALUES ({POSTGRES_SCHEMA_VERSION});"
            ),
            create_saga: format!(
                "INSERT INTO {s}.sagas (id, definition, version, state, owner, epoch,
                     lease_expires_at, records, created_at, updated_at)
                 VALUES ($1, $2, $3, 'running', $4, 1, {}, 1, now(), now())
                 ON CONFLICT (id) DO NOTHING",
                expiry(5)
            ),
            insert_record: format!(
                "INSERT INTO {s}.saga_records (saga_id, seq, epoch, at, kind, body, payload)
                 VALUES ($1, $2, $3, now(), $4, $5::text::jsonb, $6)"
            ),
            lock: format!(
                "SELECT state, owner, epoch, records, COALESCE(lease_expires_at > now(), false)
                 FROM {s}.sagas WHERE id = $1 FOR UPDATE"
            ),
            append: format!(
                "WITH record AS (
                     INSERT INTO {s}.saga_records (saga_id, seq, epoch, at, kind, body, payload)
                     VALUES ($1, $2, $3, now(), $4, $5::text::jsonb, $6)
                 )
                 UPDATE {s}.sagas SET state = $7, records = $2 + 1, updated_at = now()
                 WHERE id = $1"
            ),
            set_expiry: format!(
                "UPDATE {s}.sagas SET lease_expires_at = {} WHERE id = $1",
                expiry(2)
            ),
            release: format!("UPDATE {s}.sagas SET lease_expires_at = NULL WHERE id = $1"),
            take: format!(
                "UPDATE {s}.sagas SET owner = $2, epoch = epoch + 1, lease_expires_at = {}
                 WHERE id = $1 RETURNING epoch",
                expiry(3)
            ),
            unfinished: format!(
                // Every state that is not a known resting one: a row whose
                // state is unknown is claimed and reported as corrupt, not
                // skipped.
                "SELECT id FROM {s}.sagas
                 WHERE state NOT IN ('stuck', 'completed', 'compensated', 'abandoned')
                   AND (lease_expires_at IS NULL OR lease_expires_at <= now() OR owner = $1)
                 ORDER BY created_at, id
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED"
            ),
            take_many: format!(
                "UPDATE {s}.sagas SET owner = $2, epoch = epoch + 1, lease_expires_at = {}
                 WHERE id = ANY($1) RETURNING id, epoch, state, records",
                expiry(3)
            ),
            history: format!(
                "SELECT s.records, {RECORD_COLUMNS}
                 FROM {s}.sagas s LEFT JOIN {s}.saga_records r ON r.saga_id = s.id
                 WHERE s.id = $1 ORDER BY r.seq"
            ),
            history_many: format!(
                "SELECT r.saga_id, {RECORD_COLUMNS} FROM {s}.saga_records r
                 WHERE r.saga_id = ANY($1) ORDER BY r.saga_id, r.seq"
            ),
            summary: format!("SELECT {SUMMARY_COLUMNS} FROM {s}.sagas WHERE id = $1"),
            list: format!(
                "SELECT {SUMMARY_COLUMNS} FROM {s}.sagas
                 WHERE ($1::text IS NULL OR state = $1)
                   AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4::text))
                 ORDER BY created_at, id LIMIT $2"
            ),
            prune: format!(
                "WITH old AS (
                     SELECT id FROM {s}.sagas
                     WHERE state IN ('completed', 'compensated', 'abandoned') AND updated_at < $1
                     ORDER BY updated_at, id LIMIT $2
                     FOR UPDATE SKIP LOCKED
                 ), records AS (
                     DELETE FROM {s}.saga_records WHERE saga_id IN (SELECT id FROM old)
                 )
                 DELETE FROM {s}.sagas WHERE id IN (SELECT id FROM old)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_lease_ttls_are_capped_and_small_ones_exact() {
        assert_eq!(ttl_micros(Duration::from_millis(1500)), 1_500_000);
        assert_eq!(ttl_micros(Duration::MAX), ttl_micros(LONGEST_LEASE));
    }
}
