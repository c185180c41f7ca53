//! Versioned schema migrations, applied at start by whichever planner comes
//! first; the others wait on the advisory lock and find nothing to do.

use std::collections::HashMap;

use super::PgError;

/// The schema's versions, oldest first: (version, name, SQL). Applied ones
/// are recorded with a checksum; editing an applied file is refused.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "tasks",
        include_str!("../../../migrations/0001_tasks.sql"),
    ),
    (
        2,
        "replicas",
        include_str!("../../../migrations/0002_replicas.sql"),
    ),
    (
        4,
        "task controls",
        include_str!("../../../migrations/0004_task_controls.sql"),
    ),
    (
        5,
        "batches",
        include_str!("../../../migrations/0005_batches.sql"),
    ),
    (
        6,
        "cancel requests",
        include_str!("../../../migrations/0006_cancel_requests.sql"),
    ),
];

/// The advisory lock key serialising migrations ("planner" in ASCII).
const MIGRATION_LOCK: i64 = 0x0070_6c61_6e6e_6572;

/// Applies the migrations this database lacks, one planner at a time.
pub async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), PgError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT PRIMARY KEY,
            name TEXT NOT NULL,
            checksum TEXT NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let applied: HashMap<i64, String> = tx
        .query("SELECT version, checksum FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    for &(version, name, sql) in MIGRATIONS {
        let checksum = wire::digest_hex(sql.as_bytes());
        match applied.get(&version) {
            Some(seen) if *seen == checksum => continue,
            Some(_) => {
                return Err(PgError::Migration(format!(
                    "migration {version} ({name}) differs from the one applied to this database"
                )));
            }
            None => {}
        }
        tx.batch_execute(sql)
            .await
            .map_err(|e| PgError::Migration(format!("migration {version} ({name}): {e}")))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&version, &name, &checksum],
        )
        .await?;
        tracing::info!(version, name, "applied schema migration");
    }
    if let Some(newest) = applied.keys().max()
        && *newest > MIGRATIONS.iter().map(|m| m.0).max().unwrap_or(0)
    {
        tracing::warn!(
            newest,
            "the database has migrations this planner does not know (a newer planner ran here)"
        );
    }
    tx.commit().await?;
    Ok(())
}
