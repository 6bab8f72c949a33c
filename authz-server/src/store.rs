//! The database: the source of truth for revocations and the outbox the relay drains.
//!
//! A revocation is committed here before the API answers 200; `published_at` stays NULL until
//! JetStream has acknowledged the event, so nothing committed is ever lost to a NATS outage or
//! a crash between commit and publish.

use std::path::Path;
use std::str::FromStr;

use revocation::{RevocationEvent, Rule};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS revocations (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL UNIQUE,
    kind         TEXT    NOT NULL,
    iss          TEXT    NOT NULL,
    rule_key     TEXT    NOT NULL,
    not_before   INTEGER,
    expires_at   INTEGER NOT NULL,
    revoked_at   INTEGER NOT NULL,
    reason       TEXT,
    requested_by TEXT    NOT NULL,
    published_at INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS revocations_one_per_token
    ON revocations (iss, rule_key) WHERE kind = 'token';
CREATE INDEX IF NOT EXISTS revocations_unpublished
    ON revocations (seq) WHERE published_at IS NULL;
"#;

/// A committed revocation waiting in (or drained from) the outbox.
#[derive(Debug, Clone)]
pub struct StoredRevocation {
    pub seq: i64,
    pub event: RevocationEvent,
}

/// Handle to the database.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the SQLite database and its schema.
    pub async fn open(path: &Path) -> Result<Self, sqlx::Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a revocation is on disk before the API acknowledges it.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        Ok(Store { pool })
    }

    /// Commits a revocation. A token that is already revoked is not stored twice; the
    /// existing event is returned instead.
    pub async fn insert(
        &self,
        event: &RevocationEvent,
        requested_by: &str,
    ) -> Result<RevocationEvent, sqlx::Error> {
        let (key, not_before) = match &event.rule {
            Rule::Token { jti } => (jti.as_str(), None),
            Rule::Subject { sub, not_before } => (sub.as_str(), Some(*not_before as i64)),
            Rule::Client {
                client_id,
                not_before,
            } => (client_id.as_str(), Some(*not_before as i64)),
        };
        let inserted = sqlx::query(
            "INSERT INTO revocations (id, kind, iss, rule_key, not_before, expires_at, revoked_at, reason, requested_by)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT DO NOTHING",
        )
        .bind(&event.id)
        .bind(event.rule.kind())
        .bind(&event.iss)
        .bind(key)
        .bind(not_before)
        .bind(event.expires_at as i64)
        .bind(event.revoked_at as i64)
        .bind(&event.reason)
        .bind(requested_by)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(event.clone());
        }
        let row =
            sqlx::query("SELECT * FROM revocations WHERE kind = ? AND iss = ? AND rule_key = ?")
                .bind(event.rule.kind())
                .bind(&event.iss)
                .bind(key)
                .fetch_one(&self.pool)
                .await?;
        Ok(from_row(&row)?.event)
    }

    /// The oldest revocations not yet acknowledged by JetStream, in commit order.
    pub async fn unpublished(&self, limit: i64) -> Result<Vec<StoredRevocation>, sqlx::Error> {
        sqlx::query("SELECT * FROM revocations WHERE published_at IS NULL ORDER BY seq LIMIT ?")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(from_row)
            .collect()
    }

    /// Number of revocations waiting to be published.
    pub async fn backlog(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM revocations WHERE published_at IS NULL")
            .fetch_one(&self.pool)
            .await
    }

    /// Records that JetStream acknowledged the revocation.
    pub async fn mark_published(&self, seq: i64, at: u64) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE revocations SET published_at = ? WHERE seq = ?")
            .bind(at as i64)
            .bind(seq)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Closes the pool, flushing the WAL.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn from_row(row: &sqlx::sqlite::SqliteRow) -> Result<StoredRevocation, sqlx::Error> {
    let kind: String = row.try_get("kind")?;
    let key: String = row.try_get("rule_key")?;
    let not_before = row.try_get::<Option<i64>, _>("not_before")?.unwrap_or(0) as u64;
    let rule = match kind.as_str() {
        "token" => Rule::Token { jti: key },
        "subject" => Rule::Subject {
            sub: key,
            not_before,
        },
        "client" => Rule::Client {
            client_id: key,
            not_before,
        },
        other => {
            return Err(sqlx::Error::Decode(
                format!("unknown revocation kind {other:?}").into(),
            ))
        }
    };
    Ok(StoredRevocation {
        seq: row.try_get("seq")?,
        event: RevocationEvent {
            v: revocation::event::EVENT_VERSION,
            id: row.try_get("id")?,
            rule,
            iss: row.try_get("iss")?,
            expires_at: row.try_get::<i64, _>("expires_at")? as u64,
            revoked_at: row.try_get::<i64, _>("revoked_at")? as u64,
            reason: row.try_get("reason")?,
        },
    })
}
