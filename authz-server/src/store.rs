//! The database: the source of truth for revocations and the outbox the relay drains.
//!
//! A revocation is committed here before the API answers 200; `published_at` stays NULL until
//! JetStream has acknowledged the event, so nothing committed is ever lost to a NATS outage or
//! a crash between commit and publish.
//!
//! Revocations are written by group commit: concurrent requests hand their row to one writer
//! task, which inserts everything waiting in one transaction, so one fsync (SQLite) or one
//! WAL flush (PostgreSQL) covers many; each request is answered only once the transaction
//! holding its row has committed. See [`Store::insert`].
//!
//! SQLite (a file path, the default) for one server; PostgreSQL (a `postgres://` URL) for
//! several replicas sharing one database. The SQL is written once for both, with numbered
//! placeholders (`$n`), which both bind by number.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use revocation::{RevocationEvent, Rule};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyConnection, AnyPool, Executor, Row, Transaction};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Most revocations one group-commit transaction holds. Large enough that at thousands of
/// revocations a second a commit covers everything that arrived during the previous one;
/// small enough that a transaction stays short (a few milliseconds of statements).
const MAX_GROUP: usize = 256;

/// Revocations that may wait for the writer before callers wait for room (back-pressure).
const WRITER_QUEUE: usize = 4096;

/// How often the database is probed with a write ([`Store::spawn_probe`]).
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// How long a probe may take before the database counts as unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How a failed statement speaks of the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Out of reach, or taking no writes: no connection, a connection lost, PostgreSQL
    /// shutting down or refusing connections, out of disk, read-only (a standby), failing
    /// I/O; SQLite's file read-only, full, failing I/O or gone.
    OutOfReach,
    /// Busy for now: no pooled connection in time, a lock waited for too long, a statement
    /// cancelled, out of memory; SQLite's file locked past `busy_timeout`. Answered 503, but
    /// it does not by itself say the database is gone (the probe decides).
    Busy,
    /// The statement or the data: a bug or a conflict, answered 500.
    Other,
}

fn failure(err: &sqlx::Error, postgres: bool) -> Failure {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Failure::OutOfReach,
        sqlx::Error::PoolTimedOut => Failure::Busy,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            if postgres {
                // SQLSTATE: connection exception (08), shutting down or not accepting
                // connections (57P01-57P03), disk full (53100), too many connections
                // (53300), system error (58), read-only transaction (25006).
                if code.starts_with("08")
                    || code.starts_with("57P0")
                    || code.starts_with("58")
                    || ["53100", "53300", "25006"].contains(&code.as_ref())
                {
                    Failure::OutOfReach
                } else if code.starts_with("53") || code == "57014" || code == "55P03" {
                    // Out of memory, a cancelled statement, a lock not available in time.
                    Failure::Busy
                } else {
                    Failure::Other
                }
            } else {
                // An SQLite result code, perhaps extended: the primary code is its low byte.
                match code.parse::<i64>().map(|c| c & 0xff) {
                    // READONLY, IOERR, FULL, CANTOPEN.
                    Ok(8 | 10 | 13 | 14) => Failure::OutOfReach,
                    // BUSY, LOCKED.
                    Ok(5 | 6) => Failure::Busy,
                    _ => Failure::Other,
                }
            }
        }
        _ => Failure::Other,
    }
}

/// Every SQLite connection's settings.
const SQLITE_PRAGMAS: &str =
    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;";

/// Consecutive failed probes before the database counts as out of reach.
pub const PROBE_FAILURES: u32 = 2;

/// The store's probe: one write every [`PROBE_INTERVAL`] on a connection of its own.
pub struct Probe {
    store: Store,
    conn: Option<AnyConnection>,
    failures: u32,
}

impl Probe {
    pub fn new(store: Store) -> Probe {
        Probe {
            store,
            conn: None,
            failures: 0,
        }
    }

    /// One write within [`PROBE_TIMEOUT`] (connecting first if needed). A success marks the
    /// database reachable; [`PROBE_FAILURES`] failures in a row mark it out of reach.
    /// Returns whether the write went through.
    pub async fn once(&mut self) -> bool {
        let ok = matches!(
            tokio::time::timeout(PROBE_TIMEOUT, self.write()).await,
            Ok(Ok(()))
        );
        if !ok {
            // A connection that failed or hung is not used again.
            self.conn = None;
            self.failures += 1;
        } else {
            self.failures = 0;
        }
        let reachable = &self.store.reachable;
        if ok && !reachable.swap(true, Ordering::Relaxed) {
            tracing::info!("the database takes writes again");
        } else if self.failures >= PROBE_FAILURES && reachable.swap(false, Ordering::Relaxed) {
            tracing::warn!("the database is unreachable or takes no writes");
        }
        ok
    }

    async fn write(&mut self) -> Result<(), sqlx::Error> {
        use sqlx::Connection;
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let mut conn = AnyConnection::connect(&self.store.url).await?;
                if self.store.postgres {
                    conn.execute("SET lock_timeout = '1s'").await?;
                } else {
                    conn.execute(SQLITE_PRAGMAS).await?;
                }
                self.conn.insert(conn)
            }
        };
        sqlx::query(
            "INSERT INTO meta (name, value) VALUES ('probe', '0')
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// Columns shared by both schemas.
const COLUMNS: &str = "id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    iss TEXT NOT NULL,
    rule_key TEXT NOT NULL,
    not_before BIGINT,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL,
    reason TEXT,
    requested_by TEXT NOT NULL,
    published_at BIGINT,
    committed_at BIGINT,
    stream_epoch BIGINT,
    stream_seq BIGINT";

const INDEXES: &str = "
DROP INDEX IF EXISTS revocations_one_per_token;
CREATE INDEX IF NOT EXISTS revocations_by_token
    ON revocations (iss, rule_key) WHERE kind = 'token';
CREATE INDEX IF NOT EXISTS revocations_by_key
    ON revocations (rule_key, kind);
CREATE INDEX IF NOT EXISTS revocations_unpublished
    ON revocations (seq) WHERE published_at IS NULL;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clients (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    scopes TEXT NOT NULL,
    audiences TEXT NOT NULL,
    admin BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS signing_keys (
    kid TEXT PRIMARY KEY,
    alg TEXT NOT NULL,
    pem TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    signs_from BIGINT NOT NULL,
    retire_after BIGINT
);
CREATE TABLE IF NOT EXISTS signal_jtis (
    iss TEXT NOT NULL,
    jti TEXT NOT NULL,
    remember_until BIGINT NOT NULL,
    PRIMARY KEY (iss, jti)
);
";

/// A client registered in the database. Scopes and audiences are stored space-separated.
#[derive(Debug, Clone)]
pub struct StoredClient {
    pub id: String,
    pub secret_hash: String,
    pub scopes: Vec<String>,
    pub audiences: Vec<String>,
    pub admin: bool,
}

fn client_from_row(row: &AnyRow) -> Result<StoredClient, sqlx::Error> {
    let words = |s: String| {
        s.split(' ')
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect()
    };
    Ok(StoredClient {
        id: row.try_get("id")?,
        secret_hash: row.try_get("secret_hash")?,
        scopes: words(row.try_get("scopes")?),
        audiences: words(row.try_get("audiences")?),
        admin: row.try_get::<i64, _>("admin")? != 0,
    })
}

/// A signing key as stored: the private key's PEM with its schedule.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub kid: String,
    pub alg: String,
    pub pem: String,
    pub signs_from: u64,
    pub retire_after: Option<u64>,
}

/// Which rules [`Store::search`] selects: of one kind and key (`token`, `subject`,
/// `client` or `session`, and the `jti`, subject, client id or session id), of one issuer,
/// or both; nothing: every rule.
#[derive(Debug, Default, Clone, Copy)]
pub struct RuleFilter<'a> {
    pub rule: Option<(&'a str, &'a str)>,
    pub iss: Option<&'a str>,
}

/// A committed revocation waiting in (or drained from) the outbox.
#[derive(Debug, Clone)]
pub struct StoredRevocation {
    pub seq: i64,
    pub event: RevocationEvent,
    pub requested_by: String,
    pub published: bool,
}

/// Handle to the database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// Where the pool connects (for the probe's own connection).
    url: String,
    postgres: bool,
    /// Whether the database takes writes, as last seen ([`Store::reachable`]).
    reachable: Arc<AtomicBool>,
    /// The group-commit writer of revocations; see [`Store::insert`].
    writer: mpsc::Sender<PendingInsert>,
}

/// A revocation waiting for the writer, with where its outcome goes.
struct PendingInsert {
    event: RevocationEvent,
    requested_by: String,
    reply: oneshot::Sender<Result<RevocationEvent, sqlx::Error>>,
}

/// Which database a `database` setting names.
fn url_for(database: &str) -> (String, bool) {
    if database.starts_with("postgres://") || database.starts_with("postgresql://") {
        (database.to_string(), true)
    } else {
        let path = database.strip_prefix("sqlite://").unwrap_or(database);
        (format!("sqlite://{path}?mode=rwc"), false)
    }
}

impl Store {
    /// Opens the database named by `database` (a SQLite path or a PostgreSQL URL) and creates
    /// the schema if needed.
    pub async fn open(database: &str) -> Result<Self, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let (url, postgres) = url_for(database);
        if !postgres {
            let path = std::path::Path::new(database.strip_prefix("sqlite://").unwrap_or(database));
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
        }
        let pool = AnyPoolOptions::new()
            .max_connections(if postgres { 8 } else { 4 })
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if postgres {
                        // A replica cut off in the middle of a transaction holds its locks
                        // until the server notices: bound that, and every wait for a lock.
                        conn.execute(
                            "SET lock_timeout = '5s'; SET idle_in_transaction_session_timeout = '10s';",
                        )
                        .await?;
                    } else {
                        // WAL with FULL sync: a revocation is on disk before the API answers.
                        // (In WAL mode NORMAL skips the fsync at commit and may lose the last
                        // transactions on power loss; FULL syncs the WAL at every commit, which
                        // group commit makes affordable.)
                        conn.execute(SQLITE_PRAGMAS).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let (writer, queue) = mpsc::channel(WRITER_QUEUE);
        let store = Store {
            pool: pool.clone(),
            url: url.clone(),
            postgres,
            reachable: Arc::new(AtomicBool::new(true)),
            writer,
        };
        store.create_schema().await?;
        // The writer ends when the last `Store` handle (the last sender) is dropped.
        tokio::spawn(write_revocations(pool, postgres, queue));
        Ok(store)
    }

    async fn create_schema(&self) -> Result<(), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        if self.postgres {
            // Replicas starting together must not race on CREATE TABLE.
            conn.execute("SELECT pg_advisory_lock(7009)").await?;
            let result = conn
                .execute(
                    format!(
                        "CREATE TABLE IF NOT EXISTS revocations (seq BIGSERIAL PRIMARY KEY, {COLUMNS});
                         ALTER TABLE revocations ADD COLUMN IF NOT EXISTS committed_at BIGINT;
                         ALTER TABLE revocations ADD COLUMN IF NOT EXISTS stream_epoch BIGINT;
                         ALTER TABLE revocations ADD COLUMN IF NOT EXISTS stream_seq BIGINT; {INDEXES}"
                    )
                    .as_str(),
                )
                .await;
            conn.execute("SELECT pg_advisory_unlock(7009)").await?;
            result?;
        } else {
            conn.execute(
                format!(
                    "CREATE TABLE IF NOT EXISTS revocations (seq INTEGER PRIMARY KEY AUTOINCREMENT, {COLUMNS}); {INDEXES}"
                )
                .as_str(),
            )
            .await?;
            // Databases made before a column existed get it (SQLite has no IF NOT EXISTS
            // here); their old rows keep NULL (`committed_at` is then read by `revoked_at`).
            for column in ["committed_at", "stream_epoch", "stream_seq"] {
                let has: i64 = sqlx::query(
                    "SELECT COUNT(*) FROM pragma_table_info('revocations') WHERE name = $1",
                )
                .bind(column)
                .fetch_one(&mut *conn)
                .await?
                .try_get(0)?;
                if has == 0 {
                    conn.execute(
                        format!("ALTER TABLE revocations ADD COLUMN {column} BIGINT").as_str(),
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// Commits a revocation and returns once it is durable. A token that is already revoked
    /// is not stored twice; the existing event is returned instead.
    ///
    /// Group commit: the row goes to the writer task, which takes everything waiting (up to
    /// [`MAX_GROUP`]) into one transaction and answers each caller after the commit. Under
    /// load a commit covers every revocation that arrived while the previous one was being
    /// synced; alone, a revocation costs what it did before (one transaction). Inside the
    /// transaction the rows are inserted one by one exactly as a lone insert would be, so the
    /// deduplication is unchanged, also between two revocations of one token in one group
    /// (the first is stored, the second gets it back). The row's `committed_at` is the
    /// database's clock inside the transaction, never later than the commit: the heartbeat's
    /// lag relies on that.
    pub async fn insert(
        &self,
        event: &RevocationEvent,
        requested_by: &str,
    ) -> Result<RevocationEvent, sqlx::Error> {
        let (reply, outcome) = oneshot::channel();
        let pending = PendingInsert {
            event: event.clone(),
            requested_by: requested_by.to_string(),
            reply,
        };
        self.writer
            .send(pending)
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        // The writer always answers unless it is gone (the pool closed under it).
        outcome.await.map_err(|_| sqlx::Error::PoolClosed)?
    }

    /// The oldest revocations not yet acknowledged by JetStream, in commit order.
    pub async fn unpublished(&self, limit: i64) -> Result<Vec<StoredRevocation>, sqlx::Error> {
        sqlx::query("SELECT * FROM revocations WHERE published_at IS NULL ORDER BY seq LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(from_row)
            .collect()
    }

    /// Whether any committed rule revokes this token: its `jti`, or a subject or client
    /// cut-off later than its `iat`.
    pub async fn is_revoked(
        &self,
        iss: &str,
        jti: &str,
        sub: &str,
        client_id: &str,
        iat: u64,
    ) -> Result<bool, sqlx::Error> {
        let count: i64 = sqlx::query(
            "SELECT COUNT(*) FROM revocations WHERE iss = $1 AND (
                (kind = 'token' AND rule_key = $2)
                OR (kind = 'subject' AND rule_key = $3 AND not_before > $4)
                OR (kind = 'client' AND rule_key = $5 AND not_before > $6))",
        )
        .bind(iss)
        .bind(jti)
        .bind(sub)
        .bind(iat as i64)
        .bind(client_id)
        .bind(iat as i64)
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?;
        Ok(count > 0)
    }

    /// Rules still in force at `now` (kept `leeway` past their expiry), after `after_seq`.
    pub async fn active(
        &self,
        now: u64,
        leeway: u64,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<StoredRevocation>, sqlx::Error> {
        self.search(now, leeway, &RuleFilter::default(), after_seq, limit)
            .await
    }

    /// The rules in force (as [`Store::active`]) that `filter` selects.
    pub async fn search(
        &self,
        now: u64,
        leeway: u64,
        filter: &RuleFilter<'_>,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<StoredRevocation>, sqlx::Error> {
        let mut sql = String::from("SELECT * FROM revocations WHERE expires_at >= $1 AND seq > $2");
        let mut next = 3;
        let mut clause = |column: &str, sql: &mut String| {
            sql.push_str(&format!(" AND {column} = ${next}"));
            next += 1;
        };
        if filter.rule.is_some() {
            clause("kind", &mut sql);
            clause("rule_key", &mut sql);
        }
        if filter.iss.is_some() {
            clause("iss", &mut sql);
        }
        sql.push_str(&format!(" ORDER BY seq LIMIT ${next}"));
        let mut query = sqlx::query(&sql)
            .bind(now.saturating_sub(leeway) as i64)
            .bind(after_seq);
        if let Some((kind, key)) = filter.rule {
            query = query.bind(kind).bind(key);
        }
        if let Some(iss) = filter.iss {
            query = query.bind(iss);
        }
        query
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(from_row)
            .collect()
    }

    /// Number of revocations waiting to be published.
    pub async fn backlog(&self) -> Result<i64, sqlx::Error> {
        sqlx::query("SELECT COUNT(*) FROM revocations WHERE published_at IS NULL")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)
    }

    /// How long, in milliseconds, the oldest revocation not yet published has been
    /// committed; 0 if every one is published. Both ends are read on the database's clock in
    /// one statement, so no replica's clock enters: a replica whose clock runs ahead cannot
    /// make a stuck revocation look recent (the heartbeat turns this into `covers_until_ms`).
    /// Rows written before `committed_at` existed count from their `revoked_at`.
    pub async fn publish_lag_ms(&self) -> Result<u64, sqlx::Error> {
        let sql = format!(
            "SELECT {} - MIN(COALESCE(committed_at, revoked_at * 1000))
             FROM revocations WHERE published_at IS NULL",
            db_now_ms(self.postgres)
        );
        let lag: Option<i64> = sqlx::query(&sql).fetch_one(&self.pool).await?.try_get(0)?;
        Ok(lag.unwrap_or(0).max(0) as u64)
    }

    /// Records that JetStream acknowledged the revocations `seqs` on the stream of identity
    /// `epoch`: one transaction for a whole published batch. Nothing is marked, and `false`
    /// returned, unless `epoch` is still the stream's recorded identity: if the stream was
    /// recreated meanwhile ([`Store::switch_epoch`]), an event acknowledged by the old stream
    /// is not in the new one and must be published again.
    ///
    /// The check is a write on the epoch's row, first in the transaction, so that it and
    /// `switch_epoch` exclude each other (a row lock on PostgreSQL, the write lock on SQLite):
    /// either the mark commits first and the switch then queues those rows again, or the
    /// switch commits first and the mark finds another epoch.
    ///
    /// `rows` are the rows' `seq` with the stream sequence each got (kept for its receipt,
    /// `GET /admin/revocations/{id}`). `last` is the stream sequence and event id of the
    /// batch's last message: recorded, so that the heartbeat can check that the stream still
    /// holds it ([`Store::last_published`]).
    pub async fn mark_published(
        &self,
        rows: &[(i64, u64)],
        at: u64,
        epoch: u64,
        last: Option<(u64, &str)>,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        if !lock_epoch(&mut tx, epoch).await? {
            return Ok(false);
        }
        // Bounded so that the statement stays far below SQLite's limit on parameters.
        for chunk in rows.chunks(400) {
            let whens: Vec<String> = (0..chunk.len())
                .map(|i| format!("WHEN ${} THEN CAST(${} AS BIGINT)", 3 + 2 * i, 4 + 2 * i))
                .collect();
            let ins: Vec<String> = (0..chunk.len())
                .map(|i| format!("${}", 3 + 2 * i))
                .collect();
            let sql = format!(
                "UPDATE revocations SET published_at = $1, stream_epoch = CAST($2 AS BIGINT), stream_seq = CASE seq {} END WHERE seq IN ({})",
                whens.join(" "),
                ins.join(", ")
            );
            let mut query = sqlx::query(&sql).bind(at as i64).bind(epoch as i64);
            for (seq, stream_seq) in chunk {
                query = query.bind(*seq).bind(*stream_seq as i64);
            }
            query.execute(&mut *tx).await?;
        }
        if let Some((seq, id)) = last {
            // Only ever forward: another replica may have recorded a later message.
            let known = last_published_in(&mut tx).await?;
            if known.as_ref().is_none_or(|(s, _)| seq > *s) {
                sqlx::query("DELETE FROM meta WHERE name = 'last_published'")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO meta (name, value) VALUES ('last_published', $1)")
                    .bind(format!("{seq} {id}"))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The stream sequence and event id of the last message the relays saw acknowledged on
    /// the current stream, if any.
    pub async fn last_published(&self) -> Result<Option<(u64, String)>, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        last_published_in(&mut conn).await
    }

    /// The stream `epoch` lost its tail (it no longer holds what was acknowledged): queues
    /// every rule still in force to be published again, and forgets the last published
    /// message. Returns how many were queued; 0 if `epoch` is no longer the current stream.
    pub async fn requeue_after_rollback(
        &self,
        epoch: u64,
        now: u64,
        leeway: u64,
    ) -> Result<u64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        if !lock_epoch(&mut tx, epoch).await? {
            return Ok(0);
        }
        let requeued = requeue_in_force(&mut tx, now, leeway).await?;
        sqlx::query("DELETE FROM meta WHERE name = 'last_published'")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(requeued)
    }

    /// Records that the stream now has identity `epoch`. If it had another one before, the
    /// stream lost its history: every rule still in force is queued to be published again.
    /// Returns how many were queued. One transaction, so that of several replicas noticing
    /// the same new stream only one queues the republication.
    pub async fn switch_epoch(
        &self,
        epoch: u64,
        now: u64,
        leeway: u64,
    ) -> Result<u64, sqlx::Error> {
        // The usual case, the same stream: a plain read, no lock (a replica cut off in the
        // middle of a transaction must not leave a lock every heartbeat waits for).
        let recorded: Option<String> =
            sqlx::query("SELECT value FROM meta WHERE name = 'stream_epoch'")
                .fetch_optional(&self.pool)
                .await?
                .map(|row| row.try_get(0))
                .transpose()?;
        if recorded.as_deref() == Some(epoch.to_string().as_str()) {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await?;
        // A write on the epoch's row first, as `mark_published` does: a mark in progress
        // commits before this goes on, and the requeue below (a statement of its own, so a
        // fresh snapshot on PostgreSQL) then sees its rows as published and queues them again.
        sqlx::query("UPDATE meta SET value = value WHERE name = 'stream_epoch'")
            .execute(&mut *tx)
            .await?;
        let known: Option<String> =
            sqlx::query("SELECT value FROM meta WHERE name = 'stream_epoch'")
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| row.try_get(0))
                .transpose()?;
        if known.as_deref() == Some(epoch.to_string().as_str()) {
            return Ok(0);
        }
        let requeued = requeue_in_force(&mut tx, now, leeway).await?;
        sqlx::query("DELETE FROM meta WHERE name IN ('stream_epoch', 'last_published')")
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO meta (name, value) VALUES ('stream_epoch', $1)")
            .bind(epoch.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(requeued)
    }

    /// Every signing key: (kid, alg, pem, signs_from, retire_after).
    pub async fn signing_keys(&self) -> Result<Vec<StoredKey>, sqlx::Error> {
        sqlx::query(
            "SELECT kid, alg, pem, signs_from, retire_after FROM signing_keys ORDER BY signs_from",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(StoredKey {
                kid: row.try_get("kid")?,
                alg: row.try_get("alg")?,
                pem: row.try_get("pem")?,
                signs_from: row.try_get::<i64, _>("signs_from")?.max(0) as u64,
                retire_after: row
                    .try_get::<Option<i64>, _>("retire_after")?
                    .map(|r| r.max(0) as u64),
            })
        })
        .collect()
    }

    /// The heartbeat key (PKCS#8 PEM): `candidate` if the database has none yet, else the one
    /// it has, so that every replica signs heartbeats with the same key.
    pub async fn heartbeat_key(&self, candidate: &str) -> Result<String, sqlx::Error> {
        sqlx::query(
            "INSERT INTO meta (name, value) VALUES ('heartbeat_key', $1) ON CONFLICT DO NOTHING",
        )
        .bind(candidate)
        .execute(&self.pool)
        .await?;
        sqlx::query("SELECT value FROM meta WHERE name = 'heartbeat_key'")
            .fetch_one(&self.pool)
            .await?
            .try_get("value")
    }

    /// Adds a key that signs from `signs_from`; every other key still in service retires at
    /// `retire_others_after`. One transaction.
    pub async fn add_signing_key(
        &self,
        key: &StoredKey,
        now: u64,
        retire_others_after: Option<u64>,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        if let Some(retire) = retire_others_after {
            sqlx::query("UPDATE signing_keys SET retire_after = $1 WHERE retire_after IS NULL")
                .bind(retire as i64)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, pem, created_at, signs_from) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
        )
        .bind(&key.kid)
        .bind(&key.alg)
        .bind(&key.pem)
        .bind(now as i64)
        .bind(key.signs_from as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// The client with this id, if registered in the database.
    pub async fn client(&self, id: &str) -> Result<Option<StoredClient>, sqlx::Error> {
        sqlx::query("SELECT * FROM clients WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(client_from_row)
            .transpose()
    }

    /// Every client registered in the database.
    pub async fn clients(&self) -> Result<Vec<StoredClient>, sqlx::Error> {
        sqlx::query("SELECT * FROM clients ORDER BY id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(client_from_row)
            .collect()
    }

    /// Registers a client; `false` if the id is taken.
    pub async fn add_client(&self, client: &StoredClient, now: u64) -> Result<bool, sqlx::Error> {
        let inserted = sqlx::query(
            "INSERT INTO clients (id, secret_hash, scopes, audiences, admin, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&client.id)
        .bind(&client.secret_hash)
        .bind(client.scopes.join(" "))
        .bind(client.audiences.join(" "))
        .bind(i64::from(client.admin))
        .bind(now as i64)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Replaces a client's secret hash; `false` if there is no such client.
    pub async fn set_client_secret(
        &self,
        id: &str,
        secret_hash: &str,
    ) -> Result<bool, sqlx::Error> {
        let updated = sqlx::query("UPDATE clients SET secret_hash = $1 WHERE id = $2")
            .bind(secret_hash)
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(updated == 1)
    }

    /// Removes a client; `false` if there is no such client.
    pub async fn remove_client(&self, id: &str) -> Result<bool, sqlx::Error> {
        let removed = sqlx::query("DELETE FROM clients WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(removed == 1)
    }

    /// Whether the database took a write when last tried: by the probe
    /// ([`Store::spawn_probe`], every [`PROBE_INTERVAL`]) or by a statement that failed for
    /// want of a connection or of a writable file ([`Store::note`]). Requests that must
    /// write answer 503 at once while it is false, instead of waiting for a connection.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Takes note of a failed statement: one that says the database is out of reach (or
    /// takes no writes) marks it unreachable until the probe writes again. Returns whether
    /// the failure is the database's state rather than the statement (answered 503, not 500).
    pub fn note(&self, err: &sqlx::Error) -> bool {
        match failure(err, self.postgres) {
            Failure::OutOfReach => {
                if self.reachable.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %err, "the database is unreachable or takes no writes");
                }
                true
            }
            Failure::Busy => true,
            Failure::Other => false,
        }
    }

    /// Probes the database every [`PROBE_INTERVAL`] until `shutdown`, on a connection of
    /// its own (a pool busy with requests says nothing of the database).
    pub fn spawn_probe(&self, shutdown: tokio_util::sync::CancellationToken) -> JoinHandle<()> {
        let mut probe = Probe::new(self.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                probe.once().await;
            }
        })
    }

    /// Whether a signal (logout token, SET) of `iss` with this `jti` was received already.
    pub async fn signal_seen(&self, iss: &str, jti: &str) -> Result<bool, sqlx::Error> {
        let seen: i64 = sqlx::query("SELECT COUNT(*) FROM signal_jtis WHERE iss = $1 AND jti = $2")
            .bind(iss)
            .bind(jti)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(seen > 0)
    }

    /// Remembers a signal's `jti` until `until` (Unix seconds), and forgets those past
    /// theirs at `now`.
    pub async fn remember_signal(
        &self,
        iss: &str,
        jti: &str,
        until: u64,
        now: u64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO signal_jtis (iss, jti, remember_until) VALUES ($1, $2, $3)
             ON CONFLICT (iss, jti) DO NOTHING",
        )
        .bind(iss)
        .bind(jti)
        .bind(until as i64)
        .execute(&self.pool)
        .await?;
        sqlx::query("DELETE FROM signal_jtis WHERE remember_until < $1")
            .bind(now as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The revocation `id`, with where the stream put it and when (epoch, sequence, Unix
    /// seconds) once published. Rows published before this was recorded have no place.
    pub async fn revocation(
        &self,
        id: &str,
    ) -> Result<Option<(StoredRevocation, Option<(u64, u64, u64)>)>, sqlx::Error> {
        let row = sqlx::query("SELECT * FROM revocations WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let stored = from_row(&row)?;
        let epoch = row.try_get::<Option<i64>, _>("stream_epoch")?;
        let seq = row.try_get::<Option<i64>, _>("stream_seq")?;
        let at = row.try_get::<Option<i64>, _>("published_at")?;
        let place = match (epoch, seq, at) {
            (Some(e), Some(s), Some(at)) => {
                Some((e.max(0) as u64, s.max(0) as u64, at.max(0) as u64))
            }
            _ => None,
        };
        Ok(Some((stored, place)))
    }

    /// Whether the revocation `id` is marked published: acknowledged by JetStream on the
    /// stream recorded when it was marked (a stream replaced since queues it again).
    pub async fn is_published(&self, id: &str) -> Result<bool, sqlx::Error> {
        let published: i64 = sqlx::query(
            "SELECT COUNT(*) FROM revocations WHERE id = $1 AND published_at IS NOT NULL",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?;
        Ok(published > 0)
    }

    /// Whether rules queued again after the stream lost them ([`Store::switch_epoch`],
    /// [`Store::requeue_after_rollback`]) still wait to be published: those were
    /// acknowledged once, and gateways may lack them.
    pub async fn requeued_pending(&self) -> Result<bool, sqlx::Error> {
        let pending: i64 = sqlx::query(
            "SELECT COUNT(*) FROM revocations WHERE published_at IS NULL AND seq <=
                 (SELECT CAST(value AS BIGINT) FROM meta WHERE name = 'requeued_through')",
        )
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?;
        Ok(pending > 0)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The group-commit writer: commits what is waiting, one transaction per group, until every
/// `Store` handle is gone.
async fn write_revocations(
    pool: AnyPool,
    postgres: bool,
    mut queue: mpsc::Receiver<PendingInsert>,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while queue.recv_many(&mut group, MAX_GROUP).await > 0 {
        commit_group(&pool, postgres, std::mem::take(&mut group)).await;
        group.reserve(MAX_GROUP);
    }
}

/// Commits `group` in one transaction and answers every caller. If that fails, each row is
/// tried again in a transaction of its own, so one bad row (or a PostgreSQL deadlock with
/// another replica's group) fails only its own request. Every caller is answered only after
/// the commit that holds its row, or with an error.
async fn commit_group(pool: &AnyPool, postgres: bool, mut group: Vec<PendingInsert>) {
    // One lock order for every group: two replicas inserting the same tokens in PostgreSQL
    // then wait for each other instead of deadlocking. The sort is stable, so of two
    // revocations of one token the earlier is still stored.
    group.sort_by(|a, b| rule_order(&a.event).cmp(&rule_order(&b.event)));
    let size = group.len();
    match insert_group(pool, postgres, &group).await {
        Ok(stored) => {
            tracing::debug!(size, "revocations committed as one group");
            for (pending, event) in group.into_iter().zip(stored) {
                // A caller that went away (request cancelled) no longer listens; its
                // revocation is committed all the same.
                let _ = pending.reply.send(Ok(event));
            }
        }
        Err(err) if size == 1 => {
            if let Some(pending) = group.pop() {
                let _ = pending.reply.send(Err(err));
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, size, "group commit failed; committing its revocations one by one");
            for pending in group {
                let outcome = insert_group(pool, postgres, std::slice::from_ref(&pending))
                    .await
                    .and_then(|mut stored| stored.pop().ok_or(sqlx::Error::RowNotFound));
                let _ = pending.reply.send(outcome);
            }
        }
    }
}

fn rule_order(event: &RevocationEvent) -> (&'static str, &str, &str) {
    (
        event.rule.kind(),
        event.iss.as_str(),
        rule_parts(&event.rule).0,
    )
}

/// Inserts every revocation of `group` in one transaction; the stored events, in order.
async fn insert_group(
    pool: &AnyPool,
    postgres: bool,
    group: &[PendingInsert],
) -> Result<Vec<RevocationEvent>, sqlx::Error> {
    let mut tx: Transaction<'_, Any> = pool.begin().await?;
    let mut stored = Vec::with_capacity(group.len());
    for pending in group {
        stored.push(insert_one(&mut tx, postgres, &pending.event, &pending.requested_by).await?);
    }
    tx.commit().await?;
    Ok(stored)
}

/// Inserts one revocation unless it is stored already; the stored event either way.
///
/// A token revoked again is stored again only if the new rule lasts longer (a later
/// `expires_at`): a revocation can only tighten what is held, so a later, longer one wins
/// over an earlier, shorter one, and a shorter one changes nothing. Gateways keep the
/// longest of a token's rules.
///
/// The insert comes first and decides in one statement: a transaction that read first would
/// have to upgrade to a writer, which SQLite refuses outright (not after `busy_timeout`)
/// when another connection wrote in between.
async fn insert_one(
    conn: &mut AnyConnection,
    postgres: bool,
    event: &RevocationEvent,
    requested_by: &str,
) -> Result<RevocationEvent, sqlx::Error> {
    let (key, not_before) = rule_parts(&event.rule);
    let is_token = matches!(event.rule, Rule::Token { .. });
    // `committed_at` on the database's clock, read inside the transaction: never later than
    // the commit, which is never later than the answer.
    let now = db_now_ms(postgres);
    let statement = if is_token {
        format!(
            "INSERT INTO revocations (id, kind, iss, rule_key, not_before, expires_at, revoked_at, reason, requested_by, committed_at)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, {now}
             WHERE NOT EXISTS (SELECT 1 FROM revocations
                 WHERE kind = 'token' AND iss = $3 AND rule_key = $4 AND expires_at >= $6)
             ON CONFLICT DO NOTHING"
        )
    } else {
        format!(
            "INSERT INTO revocations (id, kind, iss, rule_key, not_before, expires_at, revoked_at, reason, requested_by, committed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, {now})
             ON CONFLICT DO NOTHING"
        )
    };
    let inserted = sqlx::query(&statement)
        .bind(&event.id)
        .bind(event.rule.kind())
        .bind(&event.iss)
        .bind(key)
        .bind(not_before)
        .bind(event.expires_at as i64)
        .bind(event.revoked_at as i64)
        .bind(event.reason.clone())
        .bind(requested_by)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if inserted == 1 {
        return Ok(event.clone());
    }
    // This very event, if an earlier attempt whose commit looked failed did commit it (a
    // retried group); otherwise the token's longest rule, which lasts at least as long.
    if let Some(row) = sqlx::query("SELECT * FROM revocations WHERE id = $1")
        .bind(&event.id)
        .fetch_optional(&mut *conn)
        .await?
    {
        return Ok(from_row(&row)?.event);
    }
    let row = sqlx::query(
        "SELECT * FROM revocations WHERE kind = 'token' AND iss = $1 AND rule_key = $2
         ORDER BY expires_at DESC, seq LIMIT 1",
    )
    .bind(&event.iss)
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    Ok(from_row(&row)?.event)
}

/// The database's clock in Unix milliseconds, as an SQL expression. SQLite's is the host's
/// (one file, one machine); PostgreSQL's is the server's, shared by every replica. On
/// PostgreSQL `now()` is the transaction's start: in a statement of its own, before the
/// statement's snapshot, so a row committed after that instant may be missing from what the
/// statement reads but was also committed (and answered) after it.
fn db_now_ms(postgres: bool) -> &'static str {
    if postgres {
        "(floor(extract(epoch FROM now()) * 1000))::bigint"
    } else {
        "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
    }
}

fn rule_parts(rule: &Rule) -> (&str, Option<i64>) {
    (rule.key(), rule.not_before().map(|n| n as i64))
}

fn from_row(row: &AnyRow) -> Result<StoredRevocation, sqlx::Error> {
    let kind: String = row.try_get("kind")?;
    let key: String = row.try_get("rule_key")?;
    let not_before = row
        .try_get::<Option<i64>, _>("not_before")?
        .unwrap_or(0)
        .max(0) as u64;
    let rule = Rule::from_parts(&kind, key, Some(not_before))
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown revocation kind {kind:?}").into()))?;
    Ok(StoredRevocation {
        seq: row.try_get("seq")?,
        requested_by: row.try_get("requested_by")?,
        published: row.try_get::<Option<i64>, _>("published_at")?.is_some(),
        event: RevocationEvent {
            v: revocation::event::EVENT_VERSION,
            id: row.try_get("id")?,
            rule,
            iss: row.try_get("iss")?,
            expires_at: row.try_get::<i64, _>("expires_at")?.max(0) as u64,
            revoked_at: row.try_get::<i64, _>("revoked_at")?.max(0) as u64,
            reason: row.try_get("reason")?,
        },
    })
}

/// Whether `epoch` is the stream's recorded identity, locking that record for the rest of the
/// transaction: a write, first, so that it and [`Store::switch_epoch`] exclude each other (a
/// row lock on PostgreSQL, the write lock on SQLite).
async fn lock_epoch(tx: &mut Transaction<'_, Any>, epoch: u64) -> Result<bool, sqlx::Error> {
    let matched =
        sqlx::query("UPDATE meta SET value = value WHERE name = 'stream_epoch' AND value = $1")
            .bind(epoch.to_string())
            .execute(&mut **tx)
            .await?
            .rows_affected();
    Ok(matched > 0)
}

/// Queues every published rule still in force (its expiry plus the leeway not past) to be
/// published again; returns how many.
async fn requeue_in_force(
    tx: &mut Transaction<'_, Any>,
    now: u64,
    leeway: u64,
) -> Result<u64, sqlx::Error> {
    let requeued = sqlx::query(
        "UPDATE revocations SET published_at = NULL WHERE published_at IS NOT NULL AND expires_at >= $1",
    )
    .bind(now.saturating_sub(leeway) as i64)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    // Everything up to here was acknowledged once: the heartbeat vouches for nothing without
    // the database while any of it waits ([`Store::requeued_pending`]).
    if requeued > 0 {
        sqlx::query("DELETE FROM meta WHERE name = 'requeued_through'")
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "INSERT INTO meta (name, value)
             SELECT 'requeued_through', CAST(COALESCE(MAX(seq), 0) AS TEXT) FROM revocations",
        )
        .execute(&mut **tx)
        .await?;
    }
    Ok(requeued)
}

/// The `last_published` record: "<sequence> <event id>".
async fn last_published_in(
    conn: &mut sqlx::AnyConnection,
) -> Result<Option<(u64, String)>, sqlx::Error> {
    let value: Option<String> = sqlx::query("SELECT value FROM meta WHERE name = 'last_published'")
        .fetch_optional(&mut *conn)
        .await?
        .map(|row| row.try_get(0))
        .transpose()?;
    Ok(value.and_then(|v| {
        let (seq, id) = v.split_once(' ')?;
        Some((seq.parse().ok()?, id.to_string()))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows with made-up stream sequences, for `mark_published`.
    fn places(seqs: &[i64]) -> Vec<(i64, u64)> {
        seqs.iter().map(|s| (*s, *s as u64)).collect()
    }

    /// A SQLite store in a directory of its own, removed with the returned guard.
    async fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("t.db").to_str().unwrap())
            .await
            .unwrap();
        (dir, store)
    }

    /// The publication lag is read on the database's clock: the commit time is the
    /// database's, whatever `revoked_at` the replica wrote; rows from before the column
    /// existed count from `revoked_at`; nothing waiting is no lag.
    #[tokio::test]
    async fn the_publication_lag_is_on_the_database_clock() {
        let (_dir, store) = temp_store().await;
        assert_eq!(store.publish_lag_ms().await.unwrap(), 0);
        // Written by a replica whose clock is an hour ahead.
        let mut ahead = token_event("ahead");
        ahead.revoked_at = crate::clock::unix_now() + 3600;
        store.insert(&ahead, "test").await.unwrap();
        assert!(store.publish_lag_ms().await.unwrap() < 60_000);
        // Ten minutes waiting, on the database's clock.
        sqlx::query("UPDATE revocations SET committed_at = committed_at - 600000")
            .execute(&store.pool)
            .await
            .unwrap();
        let lag = store.publish_lag_ms().await.unwrap();
        assert!((600_000..660_000).contains(&lag), "lag {lag}");
        // An older row without the column, revoked twenty minutes ago.
        let mut old = token_event("old");
        old.revoked_at = crate::clock::unix_now() - 1200;
        store.insert(&old, "test").await.unwrap();
        sqlx::query("UPDATE revocations SET committed_at = NULL WHERE id = $1")
            .bind(&old.id)
            .execute(&store.pool)
            .await
            .unwrap();
        let lag = store.publish_lag_ms().await.unwrap();
        assert!((1_200_000..1_260_000).contains(&lag), "lag {lag}");
        store.switch_epoch(1, 1, 0).await.unwrap();
        let seqs = unpublished_seqs(&store).await;
        assert!(store
            .mark_published(&places(&seqs), 1, 1, None)
            .await
            .unwrap());
        assert_eq!(store.publish_lag_ms().await.unwrap(), 0);
        // Each published row knows where the stream put it (its receipt reads it).
        let (stored, place) = store.revocation(&old.id).await.unwrap().unwrap();
        assert!(stored.published);
        let seq = seqs.iter().copied().max().unwrap();
        assert_eq!(place, Some((1, seq as u64, 1)));
        assert!(store.revocation("no-such-id").await.unwrap().is_none());
    }

    /// A database made before `committed_at` existed gets the column when opened; its rows
    /// keep NULL there and count from `revoked_at`.
    #[tokio::test]
    async fn an_older_database_gets_the_commit_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let store = Store::open(path.to_str().unwrap()).await.unwrap();
        let mut old = token_event("old");
        old.revoked_at = crate::clock::unix_now() - 300;
        store.insert(&old, "test").await.unwrap();
        sqlx::query("ALTER TABLE revocations DROP COLUMN committed_at")
            .execute(&store.pool)
            .await
            .unwrap();
        store.close().await;
        let store = Store::open(path.to_str().unwrap()).await.unwrap();
        let lag = store.publish_lag_ms().await.unwrap();
        assert!((300_000..360_000).contains(&lag), "lag {lag}");
        store.insert(&token_event("new"), "test").await.unwrap();
        let with_time: i64 =
            sqlx::query("SELECT COUNT(*) FROM revocations WHERE committed_at IS NOT NULL")
                .fetch_one(&store.pool)
                .await
                .unwrap()
                .try_get(0)
                .unwrap();
        assert_eq!(with_time, 1);
    }

    /// A SQLite file that takes no writes (read-only) counts as the database out of reach; a
    /// statement that is wrong does not, nor a pool busy for a moment. The probe, on a
    /// connection of its own, says the database takes writes again.
    #[tokio::test]
    async fn a_file_that_takes_no_writes_is_out_of_reach() {
        use sqlx::Connection;
        let (dir, store) = temp_store().await;
        let url = format!("sqlite://{}?mode=ro", dir.path().join("t.db").display());
        let mut read_only = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let err = sqlx::query("INSERT INTO meta (name, value) VALUES ('x', 'y')")
            .execute(&mut read_only)
            .await
            .unwrap_err();
        assert_eq!(failure(&err, false), Failure::OutOfReach, "{err}");
        let wrong = sqlx::query("INSERT INTO nowhere VALUES (1)")
            .execute(&mut read_only)
            .await
            .unwrap_err();
        assert_eq!(failure(&wrong, false), Failure::Other, "{wrong}");
        assert!(!store.note(&wrong));
        assert!(
            store.reachable(),
            "a wrong statement says nothing of the database"
        );
        assert!(store.note(&sqlx::Error::PoolTimedOut), "busy: answered 503");
        assert!(store.reachable(), "but a busy pool is not a database gone");
        assert!(store.note(&err));
        assert!(!store.reachable());
        let mut probe = Probe::new(store.clone());
        assert!(probe.once().await, "the file takes writes");
        assert!(store.reachable());
    }

    /// The stored revocations' sequence numbers, waiting to be published.
    async fn unpublished_seqs(store: &Store) -> Vec<i64> {
        store
            .unpublished(1000)
            .await
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect()
    }

    fn token_event(jti: &str) -> RevocationEvent {
        RevocationEvent {
            v: revocation::event::EVENT_VERSION,
            id: uuid::Uuid::now_v7().to_string(),
            rule: Rule::Token { jti: jti.into() },
            iss: "http://127.0.0.1".into(),
            expires_at: 2_000_000_000,
            revoked_at: 1_700_000_000,
            reason: None,
        }
    }

    /// A search selects by kind and key, by issuer, or both; a key of another kind, an
    /// expired rule and SQL in a value select nothing; paging goes on after a sequence.
    #[tokio::test]
    async fn search_selects_by_rule_and_issuer() {
        let (_dir, store) = temp_store().await;
        let event = |rule: Rule, iss: &str, expires_at: u64| RevocationEvent {
            rule,
            iss: iss.into(),
            expires_at,
            ..token_event("x")
        };
        let alice = |not_before| Rule::Subject {
            sub: "alice".into(),
            not_before,
        };
        for e in [
            event(alice(1), "https://a", 2_000_000_000),
            event(alice(2), "https://b", 2_000_000_000),
            event(alice(3), "https://a", 1_000),
            event(
                Rule::Token {
                    jti: "alice".into(),
                },
                "https://a",
                2_000_000_000,
            ),
            event(
                Rule::Session {
                    sid: "s1".into(),
                    not_before: 1,
                },
                "https://b",
                2_000_000_000,
            ),
        ] {
            store.insert(&e, "test").await.unwrap();
        }
        let now = 1_800_000_000;
        let found =
            |rule: Option<(&'static str, &'static str)>, iss: Option<&'static str>, after| {
                let store = store.clone();
                async move {
                    store
                        .search(now, 30, &RuleFilter { rule, iss }, after, 100)
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|r| (r.event.rule.kind(), r.event.iss, r.seq))
                        .collect::<Vec<_>>()
                }
            };
        let subject = found(Some(("subject", "alice")), None, 0).await;
        assert_eq!(subject.len(), 2, "{subject:?}");
        assert!(subject.iter().all(|(kind, _, _)| *kind == "subject"));
        let of_a = found(Some(("subject", "alice")), Some("https://a"), 0).await;
        assert_eq!(of_a.len(), 1);
        assert_eq!(of_a[0].1, "https://a");
        assert_eq!(found(None, Some("https://b"), 0).await.len(), 2);
        assert_eq!(found(Some(("token", "alice")), None, 0).await.len(), 1);
        assert_eq!(found(None, None, 0).await.len(), 4);
        let first = subject[0].2;
        assert_eq!(
            found(Some(("subject", "alice")), None, first).await.len(),
            1
        );
        for hostile in ["alice' OR '1'='1", "%", "alice%", "ALICE", "alice "] {
            let hostile: &'static str = Box::leak(hostile.to_string().into_boxed_str());
            assert!(
                found(Some(("subject", hostile)), None, 0).await.is_empty(),
                "{hostile}"
            );
        }
    }

    /// Every SQLite connection runs in WAL mode with `synchronous = FULL` (2): in WAL mode
    /// NORMAL would not sync at commit, and a revocation answered 200 could be lost.
    #[tokio::test]
    async fn sqlite_commits_are_durable() {
        let (_dir, store) = temp_store().await;
        let mut conns = Vec::new();
        for _ in 0..4 {
            let mut conn = store.pool.acquire().await.unwrap();
            let sync: i64 = sqlx::query("PRAGMA synchronous")
                .fetch_one(&mut *conn)
                .await
                .unwrap()
                .try_get(0)
                .unwrap();
            let mode: String = sqlx::query("PRAGMA journal_mode")
                .fetch_one(&mut *conn)
                .await
                .unwrap()
                .try_get(0)
                .unwrap();
            assert_eq!((sync, mode.as_str()), (2, "wal"));
            conns.push(conn);
        }
    }

    /// The relay's ack and a stream recreation, in either order, never leave a revocation
    /// marked published without being in the current stream: a mark for the old stream after
    /// the switch is refused (the rows stay queued); a mark before the switch is undone by it.
    #[tokio::test]
    async fn a_mark_for_a_replaced_stream_is_refused() {
        let (_dir, store) = temp_store().await;
        for jti in ["a", "b", "c"] {
            store.insert(&token_event(jti), "test").await.unwrap();
        }
        let seqs = unpublished_seqs(&store).await;
        // No stream recorded yet: nothing can be marked.
        assert!(!store
            .mark_published(&places(&seqs), 1, 100, None)
            .await
            .unwrap());
        store.switch_epoch(100, 1, 0).await.unwrap();
        // Acked by stream 100, which is then replaced by 200 before the mark.
        store.switch_epoch(200, 1, 0).await.unwrap();
        assert!(!store
            .mark_published(&places(&seqs), 1, 100, None)
            .await
            .unwrap());
        assert_eq!(
            store.backlog().await.unwrap(),
            3,
            "marked for a stream that is gone"
        );
        // Published again, to 200.
        assert!(store
            .mark_published(&places(&seqs), 1, 200, None)
            .await
            .unwrap());
        assert_eq!(store.backlog().await.unwrap(), 0);
        // Marked first, then the stream is replaced: queued again.
        assert_eq!(store.switch_epoch(300, 1, 0).await.unwrap(), 3);
        assert_eq!(store.backlog().await.unwrap(), 3);
    }

    /// The last acknowledged message only moves forward; a rollback of the current stream
    /// queues every rule in force again and forgets it; one of a replaced stream does nothing.
    #[tokio::test]
    async fn a_rollback_queues_the_rules_again() {
        let (_dir, store) = temp_store().await;
        for jti in ["a", "b"] {
            store.insert(&token_event(jti), "test").await.unwrap();
        }
        let seqs = unpublished_seqs(&store).await;
        store.switch_epoch(100, 1, 0).await.unwrap();
        assert!(store
            .mark_published(&places(&seqs[1..]), 1, 100, Some((5, "e5")))
            .await
            .unwrap());
        assert!(store
            .mark_published(&places(&seqs[..1]), 1, 100, Some((3, "e3")))
            .await
            .unwrap());
        assert_eq!(
            store.last_published().await.unwrap(),
            Some((5, "e5".to_string()))
        );
        assert_eq!(store.backlog().await.unwrap(), 0);
        assert_eq!(store.requeue_after_rollback(99, 1, 0).await.unwrap(), 0);
        assert_eq!(store.backlog().await.unwrap(), 0);
        assert_eq!(store.requeue_after_rollback(100, 1, 0).await.unwrap(), 2);
        assert_eq!(store.backlog().await.unwrap(), 2);
        assert_eq!(store.last_published().await.unwrap(), None);
    }

    /// Concurrent inserts, grouped into shared transactions, all commit; revocations of one
    /// token, even in one group, store it once and all get the stored event back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_keeps_deduplication() {
        let (_dir, store) = temp_store().await;
        let mut tasks = Vec::new();
        for i in 0..600 {
            let store = store.clone();
            // Every third request revokes the shared token "dup".
            let jti = if i % 3 == 0 {
                "dup".to_string()
            } else {
                format!("t{i}")
            };
            tasks.push(tokio::spawn(async move {
                let event = token_event(&jti);
                let stored = store.insert(&event, "test").await.unwrap();
                (jti, event.id, stored.id)
            }));
        }
        let mut dup_ids = std::collections::HashSet::new();
        for task in tasks {
            let (jti, sent, stored) = task.await.unwrap();
            if jti == "dup" {
                dup_ids.insert(stored);
            } else {
                assert_eq!(sent, stored);
            }
        }
        assert_eq!(dup_ids.len(), 1, "one token stored twice");
        assert_eq!(store.backlog().await.unwrap(), 400 + 1);
        let rows = store.unpublished(1000).await.unwrap();
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        store.switch_epoch(7, 1, 0).await.unwrap();
        assert!(store
            .mark_published(&places(&seqs[..300]), 1, 7, None)
            .await
            .unwrap());
        assert_eq!(store.backlog().await.unwrap(), 101);
        assert_eq!(store.unpublished(1000).await.unwrap()[0].seq, seqs[300]);
    }
}
