//! The PostgreSQL saga log against a real server.
//!
//! Run with `bash scripts/integration-postgres.sh`: it starts a throwaway
//! server that requires TLS on TCP, sets `PALISADE_POSTGRES_URL` and the
//! other variables read here (see the script), and runs
//! `cargo test --features postgres --test saga_postgres -- --include-ignored`.
//! Without it, `cargo test --features postgres --test saga_postgres` runs the
//! tests that need no server. Each test works in its own fresh schema, so
//! they run in parallel and may share one database.
#![cfg(feature = "postgres")]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use palisade::saga::log::{
    PostgresConnectError, PostgresLog, PostgresLogConfig, PostgresLogConfigBuilder, PostgresSslMode,
};
use palisade::saga::{
    FinishedOutcome, LogError, NewSaga, OwnerId, RecordKind, SagaId, SagaLog, SagaState, StepEffect,
};

const LONG: Duration = Duration::from_secs(600);

fn url() -> String {
    std::env::var("PALISADE_POSTGRES_URL")
        .expect("PALISADE_POSTGRES_URL must name a test database (scripts/integration-postgres.sh)")
}

fn fresh_schema() -> String {
    format!("t_{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    SagaId::random().as_u128() as u64
}

async fn connect(schema: &str) -> PostgresLog {
    let config = PostgresLogConfig::builder(url())
        .schema(schema)
        .max_connections(4)
        .build()
        .unwrap();
    PostgresLog::connect(config).await.unwrap()
}

/// A log in a new schema.
async fn fresh() -> PostgresLog {
    connect(&fresh_schema()).await
}

/// A plain connection for looking at and damaging the tables: over the Unix
/// socket (the script's server takes TCP only with TLS).
async fn raw() -> tokio_postgres::Client {
    let conninfo = std::env::var("PALISADE_POSTGRES_SOCKET_URL").unwrap_or_else(|_| url());
    let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

fn owner(name: &str) -> OwnerId {
    OwnerId::new(name).unwrap()
}

fn new_saga(id: SagaId) -> NewSaga {
    NewSaga {
        id,
        definition: "order".into(),
        version: 3,
        input: br#"{"sku":"a-1","qty":2}"#.to_vec(),
    }
}

fn started(step: &str) -> RecordKind {
    RecordKind::StepStarted {
        step: step.into(),
        attempt: 1,
    }
}

fn failed_for_good(step: &str) -> RecordKind {
    RecordKind::StepFailed {
        step: step.into(),
        attempt: 2,
        effect: StepEffect::Unknown,
        error: "timed out".into(),
        will_retry: false,
    }
}

fn finished(outcome: FinishedOutcome) -> RecordKind {
    RecordKind::SagaFinished { outcome }
}

// ---------------------------------------------------------------------------
// Without a server.

#[test]
fn invalid_settings_are_rejected_naming_the_field() {
    let field = |b: palisade::saga::log::PostgresLogConfigBuilder| b.build().unwrap_err().field();
    let url = "postgres://u@127.0.0.1:5432/db";
    assert_eq!(field(PostgresLogConfig::builder("postgres://[")), "url");
    assert_eq!(field(PostgresLogConfig::builder("dbname=x")), "url");
    let unterminated = PostgresLogConfig::builder("host=h password='open")
        .build()
        .unwrap_err();
    assert_eq!(unterminated.field(), "url");
    assert!(
        unterminated
            .to_string()
            .contains("is not a connection string"),
        "{unterminated}"
    );
    assert_eq!(field(PostgresLogConfig::builder(url).schema("")), "schema");
    assert_eq!(
        field(PostgresLogConfig::builder(url).schema("Bad-Name")),
        "schema"
    );
    assert_eq!(
        field(PostgresLogConfig::builder(url).schema("pg_catalog")),
        "schema"
    );
    assert_eq!(
        field(PostgresLogConfig::builder(url).max_connections(0)),
        "max_connections"
    );
    assert_eq!(
        field(PostgresLogConfig::builder(url).max_connections(1025)),
        "max_connections"
    );
    assert_eq!(
        field(PostgresLogConfig::builder(url).connect_timeout(Duration::ZERO)),
        "connect_timeout"
    );
    assert_eq!(
        field(PostgresLogConfig::builder(url).acquire_timeout(Duration::from_secs(7200))),
        "acquire_timeout"
    );
    let config = PostgresLogConfig::builder(url)
        .schema("orders")
        .build()
        .unwrap();
    assert_eq!((config.schema(), config.max_connections()), ("orders", 8));
}

#[tokio::test]
async fn an_unreachable_server_is_reported_as_unavailable() {
    // Port 1 on the loopback: nothing listens there.
    let config = PostgresLogConfig::builder("postgres://u@127.0.0.1:1/db")
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let error = PostgresLog::connect(config).await.unwrap_err();
    assert!(
        matches!(
            &error,
            PostgresConnectError::Unavailable(LogError::Unavailable {
                backend: "postgres",
                ..
            })
        ),
        "{error:?}"
    );
}

#[test]
fn tls_options_are_read_from_the_connection_string_and_checked_naming_the_field() {
    let mode = |url: &str| PostgresLogConfig::builder(url).build().unwrap().ssl_mode();
    let field = |b: PostgresLogConfigBuilder| b.build().unwrap_err().field();
    let url = "postgres://u@127.0.0.1:5432/db";
    assert_eq!(mode(url), PostgresSslMode::Prefer);
    assert_eq!(
        mode(&format!("{url}?sslmode=disable")),
        PostgresSslMode::Disable
    );
    assert_eq!(
        mode(&format!("{url}?sslmode=require")),
        PostgresSslMode::Require
    );
    assert_eq!(
        mode("host=127.0.0.1 user=u sslmode=require"),
        PostgresSslMode::Require
    );
    let pem = test_ca_pem();
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), &pem).unwrap();
    let ca = ca.path().display().to_string();
    for sslmode in ["verify-ca", "verify-full"] {
        let with_file = format!("host=127.0.0.1 user=u sslmode={sslmode} sslrootcert='{ca}'");
        assert_eq!(mode(&with_file).as_sslmode(), sslmode);
        let with_pem = PostgresLogConfig::builder(format!("{url}?sslmode={sslmode}"))
            .root_certificate(&pem)
            .build()
            .unwrap();
        assert_eq!(with_pem.ssl_mode().as_sslmode(), sslmode);
        // A verifying mode without a CA.
        assert_eq!(
            field(PostgresLogConfig::builder(format!(
                "{url}?sslmode={sslmode}"
            ))),
            "sslrootcert"
        );
    }
    assert_eq!(
        field(PostgresLogConfig::builder(format!("{url}?sslmode=allow"))),
        "sslmode"
    );
    assert_eq!(
        field(PostgresLogConfig::builder(format!("{url}?sslmode=strict"))),
        "sslmode"
    );
    assert_eq!(
        field(PostgresLogConfig::builder(format!(
            "{url}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"
        ))),
        "sslrootcert"
    );
    // libpq: sslrootcert=system means verify-full, and refuses weaker modes.
    assert_eq!(
        field(PostgresLogConfig::builder(format!(
            "{url}?sslmode=require&sslrootcert=system"
        ))),
        "sslmode"
    );
    assert_eq!(
        field(PostgresLogConfig::builder(url).root_certificate("not a certificate")),
        "root_certificate"
    );
    // The builder's mode wins over the string's and the parsed config's.
    let overridden = PostgresLogConfig::builder(format!("{url}?sslmode=require"))
        .ssl_mode(PostgresSslMode::Disable)
        .build()
        .unwrap();
    assert_eq!(overridden.ssl_mode(), PostgresSslMode::Disable);
    let mut pg: tokio_postgres::Config = url.parse().unwrap();
    pg.ssl_mode(tokio_postgres::config::SslMode::Require);
    let from_pg = PostgresLogConfig::builder_from(pg).build().unwrap();
    assert_eq!(from_pg.ssl_mode(), PostgresSslMode::Require);
}

/// A CA certificate (PEM), made for the test.
fn test_ca_pem() -> String {
    // Made once with openssl (EC P-256, CN "palisade test fixture CA",
    // valid for 100 years; its key was thrown away): only parsed here.
    "-----BEGIN CERTIFICATE-----
MIIBrTCCAVOgAwIBAgIUCz3aIqJvnf9oKWoyI6bPpW+b3ycwCgYIKoZIzj0EAwIw
IzEhMB8GA1UEAwwYcGFsaXNhZGUgdGVzdCBmaXh0dXJlIENBMCAXDTI2MTIwMjA2
NDQ1NVoYDzIxMjYxMTA4MDY0NDU1WjAjMSEwHwYDVQQDDBhwYWxpc2FkZSB0ZXN0
IGZpeHR1cmUgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASud+9X0hBUDOnz
1oy36ow4SCIs+A8Ii5kDrE9b0hbEfHaw840+v6my/u+n8sRXd4A+zBFha4VJO5Dh
TNJJGJaUo2MwYTAdBgNVHQ4EFgQU6wWOpxYzwOtx91HA/M9yhdH8mLgwHwYDVR0j
BBgwFoAU6wWOpxYzwOtx91HA/M9yhdH8mLgwDwYDVR0TAQH/BAUwAwEB/zAOBgNV
HQ8BAf8EBAMCAQYwCgYIKoZIzj0EAwIDSAAwRQIgPuRdgT5tV5Te1v5ZlOqRfmwn
DyQVjd/dLLXvHq2FENACIQClm5IAhuz869qsqts21WwXMga44b7p2ezScw7y6etH
jQ==
-----END CERTIFICATE-----
"
    .into()
}

// ---------------------------------------------------------------------------
// Beyond the shared SagaLog contract (run below on PostgreSQL too).

#[tokio::test]
#[ignore = "needs postgres: scripts/integration-postgres.sh"]
async fn list_filters_by_state_oldest_first_and_shows_no_owner_for_expired_leases() {
    let log = fresh().await;
    let a = owner("a");
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = SagaId::random();
        let ttl = if i % 2 == 0 { LONG } else { Duration::ZERO };
        let lease = log.create(new_saga(id), &a, ttl).await.unwrap();
        if i == 4 {
            log.append(&lease, failed_for_good("pay")).await.unwrap();
        }
        ids.push(id);
    }
    let all = log.list(None, None, 100).await.unwrap();
    assert_eq!(all.iter().map(|s| s.id).collect::<Vec<_>>(), ids);
    let owners: Vec<Option<OwnerId>> = all.iter().map(|s| s.owner.clone()).collect();
    assert_eq!(
        owners,
        [
            Some(a.clone()),
            None,
            Some(a.clone()),
            None,
            Some(a.clone())
        ]
    );
    let running = log.list(Some(SagaState::Running), None, 100).await.unwrap();
    assert_eq!(running.iter().map(|s| s.id).collect::<Vec<_>>(), ids[..4]);
    let compensating = log
        .list(Some(SagaState::Compensating), None, 100)
        .await
        .unwrap();
    assert_eq!(
        compensating.iter().map(|s| s.id).collect::<Vec<_>>(),
        [ids[4]]
    );
    assert_eq!(log.list(None, None, 2).await.unwrap().len(), 2);
    assert!(
        log.list(Some(SagaState::Stuck), None, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(log.summary(ids[1]).await.unwrap(), all[1]);
}

// ---------------------------------------------------------------------------
// Corrupt records.

async fn damage(log: &PostgresLog, sql: &str, saga: SagaId) {
    let sql = sql.replace("{schema}", log.schema());
    let changed = raw()
        .await
        .execute(&sql, &[&saga.to_string()])
        .await
        .unwrap();
    assert!(changed > 0, "{sql} changed nothing");
}

#[tokio::test]
#[ignore = "needs postgres: scripts/integration-postgres.sh"]
async fn a_corrupt_record_is_reported_with_its_saga_and_seq_and_never_skipped() {
    let log = fresh().await;
    let a = owner("a");
    let (bad, good) = (SagaId::random(), SagaId::random());
    for id in [bad, good] {
        let lease = log.create(new_saga(id), &a, Duration::ZERO).await.unwrap();
        log.append(&lease, started("pay")).await.unwrap();
        log.append(&lease, started("ship")).await.unwrap();
    }
    // The step's name becomes a number: the body no longer reads back.
    damage(
        &log,
        r#"UPDATE "{schema}".saga_records SET body = '{"step": 5, "attempt": 1}' WHERE saga_id = $1 AND seq = 1"#,
        bad,
    )
    .await;
    let history = log.history(bad).await;
    assert!(
        matches!(&history, Err(LogError::Corrupt { saga, seq: Some(1), .. }) if *saga == bad),
        "{history:?}"
    );
    // One corrupt saga does not keep the others from being claimed.
    let claimed = log.claim_unfinished(&owner("b"), LONG, 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let of = |id| claimed.iter().find(|c| c.lease.saga == id).unwrap();
    assert!(
        matches!(&of(bad).records, Err(LogError::Corrupt { saga, seq: Some(1), .. }) if *saga == bad),
        "{:?}",
        of(bad).records
    );
    assert_eq!(of(good).records.as_ref().unwrap().len(), 3);
    // An unknown kind, found by a single claim.
    damage(
        &log,
        r#"UPDATE "{schema}".saga_records SET kind = 'teleported' WHERE saga_id = $1 AND seq = 2"#,
        good,
    )
    .await;
    let claimed = log.claim(good, &owner("b"), LONG).await.unwrap();
    let error = claimed.records.unwrap_err();
    assert!(
        matches!(&error, LogError::Corrupt { seq: Some(2), detail, .. } if detail.contains("teleported")),
        "{error:?}"
    );
}

#[tokio::test]
#[ignore = "needs postgres: scripts/integration-postgres.sh"]
async fn a_saga_row_with_an_unknown_state_or_a_bad_epoch_is_claimed_as_corrupt_never_skipped() {
    let log = fresh().await;
    let a = owner("a");
    let (sleeping, negative, good) = (SagaId::random(), SagaId::random(), SagaId::random());
    for id in [sleeping, negative, good] {
        let lease = log.create(new_saga(id), &a, Duration::ZERO).await.unwrap();
        log.append(&lease, started("pay")).await.unwrap();
    }
    damage(
        &log,
        r#"UPDATE "{schema}".sagas SET state = 'sleeping' WHERE id = $1"#,
        sleeping,
    )
    .await;
    damage(
        &log,
        r#"UPDATE "{schema}".sagas SET epoch = -5 WHERE id = $1"#,
        negative,
    )
    .await;
    let claimed = log.claim_unfinished(&owner("b"), LONG, 10).await.unwrap();
    assert_eq!(claimed.len(), 3, "no saga is skipped: {claimed:?}");
    for id in [sleeping, negative] {
        let of = claimed.iter().find(|c| c.lease.saga == id).unwrap();
        assert!(
            matches!(&of.records, Err(LogError::Corrupt { saga, .. }) if *saga == id),
            "{:?}",
            of.records
        );
    }
    let of_good = claimed.iter().find(|c| c.lease.saga == good).unwrap();
    assert!(of_good.records.is_ok());
}

#[tokio::test]
#[ignore = "needs postgres: scripts/integration-postgres.sh"]
async fn a_missing_record_is_reported_as_corrupt() {
    let log = fresh().await;
    let id = SagaId::random();
    let lease = log.create(new_saga(id), &owner("a"), LONG).await.unwrap();
    for step in ["a", "b", "c"] {
        log.append(&lease, started(step)).await.unwrap();
    }
    damage(
        &log,
        r#"DELETE FROM "{schema}".saga_records WHERE saga_id = $1 AND seq = 2"#,
        id,
    )
    .await;
    let gap = log.history(id).await;
    assert!(
        matches!(gap, Err(LogError::Corrupt { seq: Some(2), .. })),
        "{gap:?}"
    );
    damage(
        &log,
        r#"DELETE FROM "{schema}".saga_records WHERE saga_id = $1 AND seq = 3"#,
        id,
    )
    .await;
    let short = log.history(id).await;
    assert!(
        matches!(short, Err(LogError::Corrupt { seq: Some(2), .. })),
        "{short:?}"
    );
}

// ---------------------------------------------------------------------------
// Several processes.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs postgres: scripts/integration-postgres.sh"]
async fn two_processes_racing_claim_unfinished_over_200_sagas_never_claim_the_same_saga() {
    const SAGAS: usize = 200;
    const WORKERS: usize = 3;
    let schema = fresh_schema();
    let setup = connect(&schema).await;
    let crashed = owner("crashed");
    let mut all = HashSet::new();
    for _ in 0..SAGAS {
        let id = SagaId::random();
        setup
            .create(new_saga(id), &crashed, Duration::ZERO)
            .await
            .unwrap();
        all.insert(id);
    }
    // Two processes, each with its own pool and several executors.
    let processes = [
        Arc::new(connect(&schema).await),
        Arc::new(connect(&schema).await),
    ];
    let mut tasks = Vec::new();
    for (p, log) in processes.iter().enumerate() {
        for w in 0..WORKERS {
            let log = Arc::clone(log);
            let me = owner(&format!("process-{p}-executor-{w}"));
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let batch = log.claim_unfinished(&me, LONG, 5).await?;
                    if batch.is_empty() {
                        return Ok::<_, LogError>(mine);
                    }
                    for claimed in batch {
                        // Driving the saga to its end: the appends succeed
                        // only if nobody else claimed it meanwhile.
                        log.append(&claimed.lease, started("pay")).await?;
                        log.append(&claimed.lease, finished(FinishedOutcome::Completed))
                            .await?;
                        mine.push(claimed.lease);
                    }
                }
            }));
        }
    }
    let mut claims: HashMap<SagaId, Vec<OwnerId>> = HashMap::new();
    let mut per_executor = Vec::new();
    for task in tasks {
        let leases = task.await.unwrap().unwrap();
        per_executor.push(leases.len());
        for lease in leases {
            assert_eq!(lease.epoch, 2);
            claims.entry(lease.saga).or_default().push(lease.owner);
        }
    }
    let twice: Vec<_> = claims
        .iter()
        .filter(|(_, owners)| owners.len() > 1)
        .collect();
    assert!(twice.is_empty(), "claimed more than once: {twice:?}");
    assert_eq!(claims.keys().copied().collect::<HashSet<_>>(), all);
    let completed = setup
        .list(Some(SagaState::Completed), None, 1000)
        .await
        .unwrap();
    assert_eq!(completed.len(), SAGAS);
    for summary in completed {
        assert_eq!((summary.epoch, summary.records), (2, 3));
    }
    eprintln!("sagas claimed per executor: {per_executor:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs postgres: scripts/integration-postgres.sh"]
async fn processes_racing_to_claim_one_expired_saga_get_it_exactly_once() {
    let schema = fresh_schema();
    let setup = connect(&schema).await;
    for _ in 0..20 {
        let id = SagaId::random();
        setup
            .create(new_saga(id), &owner("crashed"), Duration::ZERO)
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for p in 0..4 {
            let log = setup.clone();
            tasks.push(tokio::spawn(async move {
                log.claim(id, &owner(&format!("p{p}")), LONG).await
            }));
        }
        let mut won = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(claimed) => {
                    won += 1;
                    assert_eq!(claimed.lease.epoch, 2);
                }
                Err(LogError::LeaseHeld { .. }) => {}
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(won, 1);
        assert_eq!(setup.summary(id).await.unwrap().epoch, 2);
    }
}

#[tokio::test]
#[ignore = "needs postgres: scripts/integration-postgres.sh"]
async fn records_survive_reconnecting_and_processes_share_one_new_schema() {
    let schema = fresh_schema();
    // Several processes creating the same new schema at once all succeed.
    let (one, two, three) = tokio::join!(connect(&schema), connect(&schema), connect(&schema));
    let id = SagaId::random();
    let lease = one.create(new_saga(id), &owner("a"), LONG).await.unwrap();
    two.append(&lease, started("pay")).await.unwrap();
    assert_eq!(three.history(id).await.unwrap().len(), 2);
    drop((one, two, three));
    let later = connect(&schema).await;
    let history = later.history(id).await.unwrap();
    assert_eq!(history[1].kind, started("pay"));
}

// ---------------------------------------------------------------------------
// Clock, schema and connections.

#[tokio::test]
#[ignore = "needs postgres: scripts/integration-postgres.sh"]
async fn lease_expiry_is_computed_and_compared_with_the_server_clock() {
    let log = fresh().await;
    let a = owner("a");
    let id = SagaId::random();
    let lease = log
        .create(new_saga(id), &a, Duration::from_secs(3600))
        .await
        .unwrap();
    let client = raw().await;
    let left = format!(
        r#"SELECT extract(epoch FROM lease_expires_at - now())::float8 FROM "{}".sagas WHERE id = $1"#,
        log.schema()
    );
    let seconds: f64 = client
        .query_one(&left, &[&id.to_string()])
        .await
        .unwrap()
        .get(0);
    assert!((3590.0..=3600.0).contains(&seconds), "{seconds}");
    // Move the expiry around the server's now(): the log follows it.
    let set = format!(
        r#"UPDATE "{}".sagas SET lease_expires_at = now() + $2::float8 * interval '1 second' WHERE id = $1"#,
        log.schema()
    );
    client
        .execute(&set, &[&id.to_string(), &-1.0_f64])
        .await
        .unwrap();
    assert_eq!(log.summary(id).await.unwrap().owner, None);
    client
        .execute(&set, &[&id.to_string(), &60.0_f64])
        .await
        .unwrap();
    assert_eq!(log.summary(id).await.unwrap().owner, Some(a.clone()));
    assert!(matches!(
        log.claim(id, &owner("b"), LONG).await,
        Err(LogError::LeaseHeld { .. })
    ));
    log.renew(&lease, Duration::from_secs(5)).await.unwrap();
    let seconds: f64 = client
        .query_one(&left, &[&id.to_string()])
        .await
        .unwrap()
        .get(0);
    assert!((0.0..=5.0).contains(&seconds), "{seconds}");
}

#[tokio::test]
#[ignore = "needs postgres: scripts/integration-postgres.sh"]
async fn a_schema_of_another_layout_version_is_refused() {
    let schema = fresh_schema();
    drop(connect(&schema).await);
    raw()
        .await
        .execute(
            &format!(r#"UPDATE "{schema}".saga_schema SET version = 99"#),
            &[],
        )
        .await
        .unwrap();
    let config = PostgresLogConfig::builder(url())
        .schema(&schema)
        .build()
        .unwrap();
    let error = PostgresLog::connect(config).await.unwrap_err();
    assert!(
        matches!(
            &error,
            PostgresConnectError::SchemaVersion {
                found: 99,
                supported: 1,
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
#[ignore = "needs postgres: scripts/integration-postgres.sh"]
async fn a_schema_with_foreign_saga_tables_is_refused() {
    let schema = fresh_schema();
    raw()
        .await
        .batch_execute(&format!(
            r#"CREATE SCHEMA "{schema}"; CREATE TABLE "{schema}".sagas (id int)"#
        ))
        .await
        .unwrap();
    let config = PostgresLogConfig::builder(url())
        .schema(&schema)
        .build()
        .unwrap();
    let error = PostgresLog::connect(config).await.unwrap_err();
    assert!(
        matches!(&error, PostgresConnectError::UnknownSchema { .. }),
        "{error:?}"
    );
}

#[tokio::test]
#[ignore = "needs postgres: scripts/integration-postgres.sh"]
async fn a_closed_log_fails_with_closed() {
    let log = fresh().await;
    log.close();
    let result = log.summary(SagaId::random()).await;
    assert!(
        matches!(
            result,
            Err(LogError::Closed {
                backend: "postgres"
            })
        ),
        "{result:?}"
    );
}

#[tokio::test]
#[ignore = "needs postgres: scripts/integration-postgres.sh"]
async fn killed_connections_fail_as_unavailable_and_the_log_recovers() {
    let app = format!("palisade-test-{:x}", rand_u64());
    let mut pg: tokio_postgres::Config = url().parse().unwrap();
    pg.application_name(&app);
    let config = PostgresLogConfig::builder_from(pg)
        .schema(fresh_schema())
        .max_connections(2)
        .build()
        .unwrap();
    let log = PostgresLog::connect(config).await.unwrap();
    let id = SagaId::random();
    let lease = log.create(new_saga(id), &owner("a"), LONG).await.unwrap();
    assert!(log.pool_status().open >= 1);
    let killed: Vec<tokio_postgres::Row> = raw()
        .await
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap();
    assert!(!killed.is_empty());
    // The next operations either fail as unavailable (the dead connection
    // was used) or succeed on a new one; within a few tries they succeed.
    let mut appended = None;
    for _ in 0..10 {
        match log.append(&lease, started("pay")).await {
            Ok(seq) => {
                appended = Some(seq);
                break;
            }
            Err(LogError::Unavailable {
                backend: "postgres",
                ..
            }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(appended, Some(1));
    assert_eq!(log.history(id).await.unwrap().len(), 2);
}

#[tokio::test]
#[ignore = "needs postgres: scripts/integration-postgres.sh"]
async fn claim_unfinished_skips_a_saga_locked_by_another_transaction_instead_of_waiting() {
    let log = fresh().await;
    let (busy, free) = (SagaId::random(), SagaId::random());
    for id in [busy, free] {
        log.create(new_saga(id), &owner("crashed"), Duration::ZERO)
            .await
            .unwrap();
    }
    // Another executor is in the middle of a transaction on `busy`.
    let mut other = raw().await;
    let tx = other.transaction().await.unwrap();
    tx.execute(
        &format!(
            r#"SELECT 1 FROM "{}".sagas WHERE id = $1 FOR UPDATE"#,
            log.schema()
        ),
        &[&busy.to_string()],
    )
    .await
    .unwrap();
    let claimed = tokio::time::timeout(
        Duration::from_secs(10),
        log.claim_unfinished(&owner("b"), LONG, 10),
    )
    .await
    .expect("claim_unfinished waited for a locked row")
    .unwrap();
    assert_eq!(
        claimed.iter().map(|c| c.lease.saga).collect::<Vec<_>>(),
        [free]
    );
    tx.rollback().await.unwrap();
    let later = log.claim_unfinished(&owner("b"), LONG, 10).await.unwrap();
    let later: HashSet<SagaId> = later.iter().map(|c| c.lease.saga).collect();
    // Now unlocked; `free` comes again because b holds its lease.
    assert_eq!(later, HashSet::from([busy, free]));
}

mod saga_log_contract;

#[tokio::test]
#[ignore = "needs postgres: scripts/integration-postgres.sh"]
async fn postgres_log_keeps_the_saga_log_contract() {
    saga_log_contract::all(&fresh().await).await;
}

/// Executor-level takeover through PostgreSQL: two executors, each with its
/// own connection pool (two processes). The first dies in the middle of a
/// saga (its pool is closed: no renewal, no release); once its lease has
/// expired on the server's clock, the second one's takeover loop adopts the
/// saga and finishes it, and every step's action ran exactly as often as the
/// idempotency keys allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres: scripts/integration-postgres.sh"]
async fn a_second_executor_takes_over_the_saga_of_one_that_died() {
    use palisade::saga::{
        SagaDefinition, SagaEventKind, SagaExecutor, Step, StepContext, StepError,
    };
    use tokio::sync::Notify;

    #[derive(Default)]
    struct Shop {
        calls: parking_lot::Mutex<Vec<(String, String)>>,
        block_first_b: std::sync::atomic::AtomicBool,
        release: Notify,
    }

    fn step(name: &'static str) -> Step<Shop> {
        Step::new(
            name,
            move |shop: Arc<Shop>, cx: StepContext| async move {
                shop.calls
                    .lock()
                    .push((format!("do:{name}"), cx.idempotency_key()));
                if name == "b"
                    && shop
                        .block_first_b
                        .swap(false, std::sync::atomic::Ordering::SeqCst)
                {
                    shop.release.notified().await; // hangs as the process dies
                }
                Ok::<_, StepError>(name.to_owned())
            },
            move |shop: Arc<Shop>, _cx: StepContext| async move {
                shop.calls
                    .lock()
                    .push((format!("undo:{name}"), String::new()));
                Ok::<_, palisade::BoxError>(())
            },
        )
    }

    let schema = fresh_schema();
    let shop = Arc::new(Shop::default());
    shop.block_first_b
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let definition = SagaDefinition::builder("takeover", 1)
        .step(step("a"))
        .step(step("b"))
        .step(step("c"))
        .build()
        .unwrap();

    let log_a = connect(&schema).await;
    let a = SagaExecutor::builder(Arc::clone(&shop), log_a.clone())
        .owner("process-a")
        .lease_ttl(Duration::from_millis(600))
        .build()
        .unwrap();
    a.register(&definition);
    let handle = a.start(&definition, &()).await.unwrap();
    let id = handle.id();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while shop.calls.lock().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "step b never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let b = SagaExecutor::builder(Arc::clone(&shop), connect(&schema).await)
        .owner("process-b")
        .lease_ttl(Duration::from_millis(600))
        .takeover_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    b.register(&definition);
    let mut events = b.subscribe();
    assert!(
        b.recover().await.unwrap().resumed.is_empty(),
        "a's lease is live"
    );

    // Process a dies: its connections go away, its lease is never renewed.
    log_a.close();
    let completed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let event = events.recv().await.unwrap();
            if event.saga == id && event.kind == SagaEventKind::Completed {
                return;
            }
        }
    })
    .await;
    assert!(completed.is_ok(), "b finished the saga");
    let summary = b.status(id).await.unwrap();
    assert_eq!(summary.state, SagaState::Completed);
    assert_eq!(summary.epoch, 2, "one takeover");

    let calls = shop.calls.lock().clone();
    let names: Vec<&str> = calls.iter().map(|(call, _)| call.as_str()).collect();
    assert_eq!(
        names,
        ["do:a", "do:b", "do:b", "do:c"],
        "b re-ran the interrupted step only"
    );
    assert_eq!(calls[1].1, calls[2].1, "with the same idempotency key");
    shop.release.notify_waiters();
    assert!(
        handle.outcome().await.is_err(),
        "a can no longer finish the saga"
    );
}

// ---------------------------------------------------------------------------
// TLS, against the script's server: TCP requires TLS, its certificate names
// localhost and 127.0.0.1 and is signed by PALISADE_POSTGRES_CA.

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is set by scripts/integration-postgres.sh"))
}

/// `url` with more query parameters.
fn with_params(url: &str, params: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{params}")
}

/// Connects with `conninfo` in a fresh schema, tagging the connections with
/// an application name.
async fn connect_tls(conninfo: &str) -> Result<(PostgresLog, String), PostgresConnectError> {
    let app = format!("palisade-tls-{:x}", rand_u64());
    let tagged = if conninfo.contains("://") {
        with_params(conninfo, &format!("application_name={app}"))
    } else {
        format!("{conninfo} application_name={app}")
    };
    let config = PostgresLogConfig::builder(tagged)
        .schema(fresh_schema())
        .max_connections(2)
        .build()
        .unwrap();
    let log = PostgresLog::connect(config).await?;
    Ok((log, app))
}

/// How many of the server's connections from `app` use TLS, and how many
/// there are.
async fn tls_connections(app: &str) -> (i64, i64) {
    let row = raw()
        .await
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name = $1",
            &[&app],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// The connection string's parts as key-value pairs, with `host` replaced
/// by `host` and the address kept in `hostaddr`.
fn key_value_for_host(host: &str) -> String {
    let pg: tokio_postgres::Config = url().parse().unwrap();
    format!(
        "host={host} hostaddr=127.0.0.1 port={} user={} dbname={}",
        pg.get_ports()[0],
        pg.get_user().unwrap(),
        pg.get_dbname().unwrap()
    )
}

#[tokio::test]
#[ignore = "needs postgres: scripts/integration-postgres.sh"]
async fn every_connection_uses_tls_by_default_and_with_require() {
    for conninfo in [url(), with_params(&url(), "sslmode=require")] {
        let (log, app) = connect_tls(&conninfo).await.unwrap();
        assert_eq!(log.list(None, None, 10).await.unwrap().len(), 0);
        let (tls, all) = tls_connections(&app).await;
        assert!(all >= 1 && tls == all, "{tls} of {all} connections use TLS");
    }
}

#[tokio::test]
#[ignore = "needs postgres: scripts/integration-postgres.sh"]
async fn a_plain_connection_is_refused_where_the_server_requires_tls() {
    let error = connect_tls(&with_params(&url(), "sslmode=disable"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("pg_hba.conf"), "{error}");
}

#[tokio::test]
#[ignore = "needs postgres: scripts/integration-postgres.sh"]
async fn verify_full_accepts_the_servers_certificate_signed_by_the_given_ca() {
    let ca = env("PALISADE_POSTGRES_CA");
    let (_log, app) = connect_tls(&with_params(
        &url(),
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await
    .unwrap();
    let (tls, all) = tls_connections(&app).await;
    assert!(all >= 1 && tls == all, "{tls} of {all}");
    // The same CA given to the builder, with the host named as in the
    // certificate.
    let config = PostgresLogConfig::builder(format!(
        "{} sslmode=verify-full",
        key_value_for_host("localhost")
    ))
    .schema(fresh_schema())
    .root_certificate(std::fs::read(&ca).unwrap())
    .build()
    .unwrap();
    PostgresLog::connect(config).await.unwrap();
}

#[tokio::test]
#[ignore = "needs postgres: scripts/integration-postgres.sh"]
async fn a_certificate_from_another_ca_is_refused_with_a_certificate_error() {
    let other = env("PALISADE_POSTGRES_OTHER_CA");
    for sslmode in ["verify-ca", "verify-full", "require"] {
        let error = connect_tls(&with_params(
            &url(),
            &format!("sslmode={sslmode}&sslrootcert={other}"),
        ))
        .await
        .unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("TLS handshake") && text.contains("invalid peer certificate"),
            "{sslmode}: {text}"
        );
    }
}

#[tokio::test]
#[ignore = "needs postgres: scripts/integration-postgres.sh"]
async fn verify_ca_accepts_a_certificate_for_another_name_and_verify_full_does_not() {
    let ca = env("PALISADE_POSTGRES_CA");
    let elsewhere = key_value_for_host("db.elsewhere.invalid");
    connect_tls(&format!("{elsewhere} sslmode=verify-ca sslrootcert={ca}"))
        .await
        .unwrap();
    let error = connect_tls(&format!("{elsewhere} sslmode=verify-full sslrootcert={ca}"))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("invalid peer certificate"),
        "{error}"
    );
}

#[tokio::test]
#[ignore = "needs postgres: scripts/integration-postgres.sh"]
async fn a_password_login_works_over_tls_and_a_wrong_password_is_never_shown() {
    let with_password = env("PALISADE_POSTGRES_PASSWORD_URL");
    let pg: tokio_postgres::Config = with_password.parse().unwrap();
    let password = String::from_utf8(pg.get_password().unwrap().to_vec()).unwrap();
    let ca = env("PALISADE_POSTGRES_CA");
    let verified = with_params(
        &with_password,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let (log, _) = connect_tls(&verified).await.unwrap();
    assert!(!format!("{log:?}").contains(&password));

    let wrong = format!("{password}-wrong");
    let error = connect_tls(&verified.replace(&password, &wrong))
        .await
        .unwrap_err();
    let text = format!("{error} {error:?}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(!text.contains(&password), "{text}");
}
