//! A fresh store of each backend per test: SQLite in a temporary directory, MongoDB in
//! a database of its own (random name) on `SWITCHBOARD_TEST_MONGODB_URI`.

use std::sync::Arc;
use std::time::Duration;

use actors::store::Store;
use switchboard::store::mongo::{MongoSettings, MongoStore};
use switchboard::store::sqlite::SqliteStore;

/// The variable naming the MongoDB server of the tests.
pub const MONGODB_URI_VAR: &str = "SWITCHBOARD_TEST_MONGODB_URI";

/// One store under test, and what to clean up after it.
pub struct Backend {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    mongo: Option<(mongodb::Client, String)>,
}

impl Backend {
    /// The store, as the server uses it.
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// Drops the test's MongoDB database (the SQLite directory goes with `self`).
    pub async fn finish(self) {
        if let Some((client, db)) = self.mongo {
            // Best effort: the services' data directory is removed at the end anyway.
            let _ = client.database(&db).drop().await;
        }
    }
}

/// A fresh SQLite store.
pub fn sqlite() -> Backend {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(&dir.path().join("db.sqlite"), false).expect("open SQLite");
    Backend {
        store: Arc::new(store),
        _dir: Some(dir),
        mongo: None,
    }
}

/// The MongoDB server of the tests; fails (never skips) when none is configured.
pub fn mongodb_uri() -> String {
    match std::env::var(MONGODB_URI_VAR) {
        Ok(uri) if !uri.trim().is_empty() => uri,
        _ => panic!(
            "{MONGODB_URI_VAR} is not set: run ./scripts/test (it starts a MongoDB test \
             server), or `source scripts/services` before cargo nextest, or set it to a \
             MongoDB server's URI"
        ),
    }
}

/// A database name no other test uses.
pub fn fresh_database() -> String {
    format!("sbtest_{}", mongodb::bson::oid::ObjectId::new().to_hex())
}

/// Settings for a test database.
pub fn mongodb_settings(database: &str) -> MongoSettings {
    MongoSettings {
        uri: mongodb_uri(),
        database: Some(database.to_owned()),
        server_selection_timeout: Duration::from_secs(10),
        ..MongoSettings::default()
    }
}

/// A fresh MongoDB store (its own database, indexes ensured).
pub async fn mongodb() -> Backend {
    let (store, backend) = mongodb_store().await;
    let _ = store;
    backend
}

/// A fresh MongoDB store, also as its concrete type (statistics, explain).
pub async fn mongodb_store() -> (MongoStore, Backend) {
    let database = fresh_database();
    let store = MongoStore::connect(mongodb_settings(&database))
        .await
        .unwrap_or_else(|e| panic!("connecting to {MONGODB_URI_VAR}: {e}"));
    let client = mongodb::Client::with_uri_str(mongodb_uri())
        .await
        .expect("a client for cleaning up");
    let backend = Backend {
        store: Arc::new(store.clone()),
        _dir: None,
        mongo: Some((client, database)),
    };
    (store, backend)
}
