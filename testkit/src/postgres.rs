//! Scratch PostgreSQL databases: created fresh on a server from its admin URL, dropped
//! afterwards with every connection still open to them cut, and made to refuse connections
//! meanwhile when a test or benchmark needs the database gone while the server stays up.

use anyhow::Context;
use std::sync::atomic::{AtomicUsize, Ordering};
use vigil::store::redact;

/// Makes every name [`ScratchDatabase::create`] picks unique within the process.
static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// A fresh PostgreSQL database, dropped by [`ScratchDatabase::drop_now`].
#[derive(Debug, Clone)]
pub struct ScratchDatabase {
    /// The server's admin URL: where the database is created, dropped and fenced from.
    pub admin: String,
    /// The database's name, for the statements about it.
    pub name: String,
    /// Its URL, for whatever uses it.
    pub url: String,
}

impl ScratchDatabase {
    /// Creates `vigil_{prefix}_{pid}_{n}`, with `n` unique in the process, on the server at
    /// `admin`.
    pub async fn create(admin: &str, prefix: &str) -> anyhow::Result<ScratchDatabase> {
        let name = format!(
            "vigil_{prefix}_{}_{}",
            std::process::id(),
            UNIQUE.fetch_add(1, Ordering::Relaxed)
        );
        ScratchDatabase::create_named(admin, &name).await
    }

    /// Creates the database `name` on the server at `admin`.
    pub async fn create_named(admin: &str, name: &str) -> anyhow::Result<ScratchDatabase> {
        let url = database_url(admin, name)?;
        execute(admin, &[format!("CREATE DATABASE {name}")])
            .await
            .with_context(|| format!("cannot create the database {name}"))?;
        Ok(ScratchDatabase {
            admin: admin.to_string(),
            name: name.to_string(),
            url,
        })
    }

    /// Drops the database, cutting any connection still open.
    pub async fn drop_now(&self) -> anyhow::Result<()> {
        execute(
            &self.admin,
            &[format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )],
        )
        .await
        .with_context(|| format!("cannot drop the database {}", self.name))
    }

    /// Makes the database refuse new connections and ends its sessions (`refuse`), or lets
    /// connections in again: to a client, the database is down while the server is up.
    pub async fn refuse_connections(&self, refuse: bool) -> anyhow::Result<()> {
        let name = &self.name;
        let mut statements = vec![format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS {}",
            !refuse
        )];
        if refuse {
            statements.push(format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
            ));
        }
        execute(&self.admin, &statements).await
    }
}

/// Runs `statements`, in order, on one connection to the server at `admin`; stops at the
/// first that fails.
pub async fn execute(admin: &str, statements: &[String]) -> anyhow::Result<()> {
    let pool = sqlx::PgPool::connect(admin)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(admin)))?;
    let mut outcome = Ok(());
    for statement in statements {
        if let Err(error) = sqlx::query(sqlx::AssertSqlSafe(statement.clone()))
            .execute(&pool)
            .await
        {
            outcome = Err(error).with_context(|| format!("{statement} failed"));
            break;
        }
    }
    pool.close().await;
    outcome
}

/// `admin` with its database replaced by `name`, keeping any `?parameters`.
pub fn database_url(admin: &str, name: &str) -> anyhow::Result<String> {
    let (address, parameters) = match admin.split_once('?') {
        Some((address, parameters)) => (address, Some(parameters)),
        None => (admin, None),
    };
    let host_start = address
        .find("://")
        .map(|at| at + 3)
        .with_context(|| format!("`{}` is not a PostgreSQL URL", redact(admin)))?;
    let server = match address[host_start..].find('/') {
        Some(slash) => &address[..host_start + slash],
        None => address,
    };
    Ok(match parameters {
        Some(parameters) => format!("{server}/{name}?{parameters}"),
        None => format!("{server}/{name}"),
    })
}

#[cfg(test)]
mod tests {
    use super::database_url;

    #[test]
    fn the_database_is_replaced_and_parameters_kept() -> anyhow::Result<()> {
        for (admin, url) in [
            (
                "postgres://u:p@127.0.0.1:5432/test",
                "postgres://u:p@127.0.0.1:5432/scratch",
            ),
            ("postgres://db:5432", "postgres://db:5432/scratch"),
            (
                "postgres://db/test?sslmode=disable",
                "postgres://db/scratch?sslmode=disable",
            ),
        ] {
            assert_eq!(database_url(admin, "scratch")?, url, "{admin}");
        }
        assert!(database_url("not a url", "scratch").is_err());
        Ok(())
    }
}
