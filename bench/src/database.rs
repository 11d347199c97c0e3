//! The fresh database each run of `load` and `ha` gets: a SQLite file in the work directory,
//! or a new PostgreSQL database `vigil_load_<pid>_<n>` created from the admin URL and
//! dropped afterwards, whatever the run answered.

use anyhow::bail;
use std::path::Path;
use vigil_testkit::postgres::ScratchDatabase;

/// Where the databases of one backend come from.
#[derive(Debug)]
pub enum Backend {
    /// Files in a directory.
    Sqlite,
    /// Fresh databases created from an admin URL.
    Postgres {
        /// The admin URL.
        admin: String,
    },
}

impl Backend {
    /// The backend's name: the first column of its lines.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres { .. } => "postgres",
        }
    }
}

/// A fresh database for one run.
#[derive(Debug)]
pub struct Database {
    /// Its URL.
    pub url: String,
    /// For PostgreSQL: the database, to refuse connections to and to drop afterwards.
    pub scratch: Option<ScratchDatabase>,
}

impl Database {
    /// A fresh database named after `run`: a file in `dir`, or a new PostgreSQL database.
    async fn fresh(backend: &Backend, dir: &Path, run: usize) -> anyhow::Result<Database> {
        match backend {
            Backend::Sqlite => {
                let file = dir.join(format!("load-{run}.db"));
                if file.exists() {
                    bail!("{} already exists", file.display());
                }
                Ok(Database {
                    url: format!("sqlite://{}", file.display()),
                    scratch: None,
                })
            }
            Backend::Postgres { admin } => {
                let name = format!("vigil_load_{}_{run}", std::process::id());
                let scratch = ScratchDatabase::create_named(admin, &name).await?;
                Ok(Database {
                    url: scratch.url.clone(),
                    scratch: Some(scratch),
                })
            }
        }
    }

    /// Runs `measure` on a fresh database, which is removed afterwards whatever `measure`
    /// answered; `measure`'s error comes first.
    pub async fn scoped<T>(
        backend: &Backend,
        dir: &Path,
        run: usize,
        measure: impl AsyncFnOnce(&Database) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let database = Database::fresh(backend, dir, run).await?;
        let measured = measure(&database).await;
        let removed = database.remove().await;
        let measured = measured?;
        removed?;
        Ok(measured)
    }

    /// Drops a PostgreSQL database (`WITH (FORCE)`); SQLite files go with their directory.
    async fn remove(self) -> anyhow::Result<()> {
        match self.scratch {
            Some(scratch) => scratch.drop_now().await,
            None => Ok(()),
        }
    }
}
