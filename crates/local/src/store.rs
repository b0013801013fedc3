//! [`FileAdapterStore`]: adapter records as JSON files of a data directory.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use mcp_gateway_core::{Adapter, AdapterError, AdapterName, AdapterStore};
use tokio::sync::Mutex;

use crate::LocalError;

/// Adapter records kept as `<data_dir>/adapters/<name>.json`, one file per adapter.
///
/// Every record is loaded when the store is opened and served from memory; each change is
/// written to a temporary file, flushed to disk and renamed over the record, so a crash leaves
/// either the old record or the new one, never half a file. Changes are serialised by one
/// lock, so the files always match the memory.
///
/// Each record keeps its revision, a count of its writes (1 when created; a record written
/// before revisions existed reads as 1).
///
/// Records hold `environmentVariables` values, often secrets: the directory is kept mode 0700
/// and each file 0600 (a record or directory others may read is made private again at open,
/// with a warning).
#[derive(Debug)]
pub struct FileAdapterStore {
    dir: PathBuf,
    records: Mutex<BTreeMap<AdapterName, Adapter>>,
}

impl FileAdapterStore {
    /// Opens (creating it if needed) `<data_dir>/adapters` and loads every record in it.
    ///
    /// A record that cannot be read or parsed fails the open, naming the file: the gateway
    /// does not start with an adapter silently missing. Leftover temporary files of an
    /// interrupted write are removed.
    pub async fn open(data_dir: impl AsRef<Path>) -> Result<Self, LocalError> {
        let dir = data_dir.as_ref().join("adapters");
        let load_dir = dir.clone();
        let records = tokio::task::spawn_blocking(move || load(&load_dir))
            .await
            .map_err(|e| LocalError::io("load", &dir, std::io::Error::other(e)))??;
        tracing::debug!(dir = %dir.display(), adapters = records.len(), "adapter records loaded");
        Ok(Self {
            dir,
            records: Mutex::new(records),
        })
    }

    /// The directory holding the records (`<data_dir>/adapters`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, name: &AdapterName) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    async fn write(&self, adapter: &Adapter) -> Result<(), LocalError> {
        let path = self.path_of(&adapter.spec.name);
        let bytes = serde_json::to_vec_pretty(adapter).map_err(|source| LocalError::Record {
            path: path.clone(),
            source,
        })?;
        let tmp = self.dir.join(format!(".{}.json.tmp", adapter.spec.name));
        blocking(path.clone(), move || write_atomically(&tmp, &path, &bytes)).await
    }
}

/// Runs file I/O off the async threads.
async fn blocking(
    path: PathBuf,
    f: impl FnOnce() -> Result<(), LocalError> + Send + 'static,
) -> Result<(), LocalError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LocalError::io("write", path, std::io::Error::other(e)))?
}

fn load(dir: &Path) -> Result<BTreeMap<AdapterName, Adapter>, LocalError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| LocalError::io("create", dir, e))?;
    make_private(dir, 0o700)?;
    let mut records = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| LocalError::io("read", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| LocalError::io("read", dir, e))?;
        let path = entry.path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if file_name.starts_with('.') && file_name.ends_with(".tmp") {
            // An interrupted write: the record it was replacing is still in place.
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let Some(stem) = file_name.strip_suffix(".json") else {
            continue;
        };
        make_private(&path, 0o600)?;
        let bytes = std::fs::read(&path).map_err(|e| LocalError::io("read", &path, e))?;
        let adapter: Adapter =
            serde_json::from_slice(&bytes).map_err(|source| LocalError::Record {
                path: path.clone(),
                source,
            })?;
        if adapter.spec.name.as_str() != stem {
            return Err(LocalError::Misnamed {
                found: adapter.spec.name.to_string(),
                path,
            });
        }
        let mut adapter = adapter;
        adapter.revision.get_or_insert_with(|| "1".into());
        records.insert(adapter.spec.name.clone(), adapter);
    }
    Ok(records)
}

/// Takes group and other permissions off `path` (to `mode`) if it has any: records hold secrets.
fn make_private(path: &Path, mode: u32) -> Result<(), LocalError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|e| LocalError::io("read", path, e))?;
    if meta.permissions().mode() & 0o077 == 0 {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| LocalError::io("make private (chmod)", path, e))?;
    tracing::warn!(path = %path.display(), mode = format!("{mode:o}"),
        "adapter records hold secrets: other users could read this, it is now private");
    Ok(())
}

fn write_atomically(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<(), LocalError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    // A leftover of a failed write may have other permissions: start from a new file.
    match std::fs::remove_file(tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(LocalError::io("remove", tmp, e));
        }
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| LocalError::io("create", tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| LocalError::io("write", tmp, e))?;
    drop(file);
    std::fs::rename(tmp, path).map_err(|e| LocalError::io("rename", tmp, e))?;
    sync_dir(path);
    Ok(())
}

fn remove_file(path: &Path) -> Result<(), LocalError> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            sync_dir(path);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LocalError::io("remove", path, e)),
    }
}

/// Makes a rename or removal durable (best effort: not every file system allows it).
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
}

#[async_trait::async_trait]
impl AdapterStore for FileAdapterStore {
    async fn list(&self) -> Result<Vec<Adapter>, AdapterError> {
        Ok(self.records.lock().await.values().cloned().collect())
    }

    async fn get(&self, name: &AdapterName) -> Result<Option<Adapter>, AdapterError> {
        Ok(self.records.lock().await.get(name).cloned())
    }

    async fn create(&self, adapter: &Adapter) -> Result<String, AdapterError> {
        let mut records = self.records.lock().await;
        if records.contains_key(&adapter.spec.name) {
            return Err(AdapterError::Exists(adapter.spec.name.clone()));
        }
        let mut adapter = adapter.clone();
        adapter.revision = Some("1".into());
        self.write(&adapter).await?;
        records.insert(adapter.spec.name.clone(), adapter);
        Ok("1".into())
    }

    async fn update(&self, adapter: &Adapter) -> Result<String, AdapterError> {
        let mut records = self.records.lock().await;
        let Some(stored) = records.get(&adapter.spec.name) else {
            return Err(AdapterError::NotFound(adapter.spec.name.clone()));
        };
        let current = stored.revision.as_deref().unwrap_or("1");
        if let Some(expected) = &adapter.revision
            && expected != current
        {
            return Err(AdapterError::Conflict(format!(
                "adapter {} is at revision {current}, not {expected}: it was changed meanwhile; \
                 read it again and retry",
                adapter.spec.name
            )));
        }
        let next = current
            .parse::<u64>()
            .unwrap_or(1)
            .saturating_add(1)
            .to_string();
        let mut adapter = adapter.clone();
        adapter.revision = Some(next.clone());
        self.write(&adapter).await?;
        records.insert(adapter.spec.name.clone(), adapter);
        Ok(next)
    }

    async fn delete(&self, name: &AdapterName) -> Result<Option<Adapter>, AdapterError> {
        let mut records = self.records.lock().await;
        if !records.contains_key(name) {
            return Ok(None);
        }
        let path = self.path_of(name);
        blocking(path.clone(), move || remove_file(&path)).await?;
        Ok(records.remove(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_gateway_core::AdapterSpec;

    fn adapter(name: &str, replicas: u32) -> Adapter {
        let spec: AdapterSpec = serde_json::from_value(serde_json::json!({
            "name": name,
            "command": "mcp-example-server",
            "args": ["--port", "{port}"],
            "replicaCount": replicas,
            "environmentVariables": {"A": "b"},
        }))
        .unwrap();
        Adapter {
            spec,
            created_by: "alice".into(),
            created_by_issuer: None,
            created_at: "2026-01-01T00:00:00Z".into(),
            last_updated_at: "2026-01-01T00:00:00Z".into(),
            revision: None,
        }
    }

    fn name(s: &str) -> AdapterName {
        AdapterName::new(s).unwrap()
    }

    /// `adapter` as stored at revision `revision`.
    fn at(mut adapter: Adapter, revision: u32) -> Adapter {
        adapter.revision = Some(revision.to_string());
        adapter
    }

    #[tokio::test]
    async fn records_round_trip_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileAdapterStore::open(dir.path()).await.unwrap();
        store.create(&adapter("zeta", 1)).await.unwrap();
        store.create(&adapter("alpha", 2)).await.unwrap();
        assert_eq!(
            store.get(&name("alpha")).await.unwrap(),
            Some(at(adapter("alpha", 2), 1))
        );
        let mut changed = adapter("zeta", 3);
        changed.last_updated_at = "2026-02-01T00:00:00Z".into();
        store.update(&changed).await.unwrap();
        drop(store);

        let store = FileAdapterStore::open(dir.path()).await.unwrap();
        let names: Vec<_> = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.spec.name.to_string())
            .collect();
        assert_eq!(names, ["alpha", "zeta"], "sorted by name");
        assert_eq!(
            store.get(&name("zeta")).await.unwrap(),
            Some(at(changed, 2))
        );
        assert!(dir.path().join("adapters/alpha.json").is_file());
    }

    #[tokio::test]
    async fn create_refuses_a_taken_name_and_update_an_unknown_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileAdapterStore::open(dir.path()).await.unwrap();
        store.create(&adapter("one", 1)).await.unwrap();
        let err = store.create(&adapter("one", 2)).await.unwrap_err();
        assert!(matches!(err, AdapterError::Exists(_)), "{err}");
        assert_eq!(
            store.get(&name("one")).await.unwrap(),
            Some(at(adapter("one", 1), 1))
        );
        let err = store.update(&adapter("two", 1)).await.unwrap_err();
        assert!(matches!(err, AdapterError::NotFound(_)), "{err}");
        assert!(!dir.path().join("adapters/two.json").exists());
    }

    #[tokio::test]
    async fn delete_removes_the_file_and_returns_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileAdapterStore::open(dir.path()).await.unwrap();
        store.create(&adapter("gone", 1)).await.unwrap();
        assert_eq!(
            store.delete(&name("gone")).await.unwrap(),
            Some(at(adapter("gone", 1), 1))
        );
        assert_eq!(store.delete(&name("gone")).await.unwrap(), None);
        assert!(!dir.path().join("adapters/gone.json").exists());
        let store = FileAdapterStore::open(dir.path()).await.unwrap();
        assert!(store.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_corrupt_or_misnamed_record_fails_the_open_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("adapters")).unwrap();
        std::fs::write(dir.path().join("adapters/bad.json"), b"{not json").unwrap();
        let err = FileAdapterStore::open(dir.path()).await.unwrap_err();
        assert!(err.to_string().contains("bad.json"), "{err}");

        std::fs::write(
            dir.path().join("adapters/bad.json"),
            serde_json::to_vec(&adapter("other", 1)).unwrap(),
        )
        .unwrap();
        let err = FileAdapterStore::open(dir.path()).await.unwrap_err();
        assert!(err.to_string().contains("other.json"), "{err}");
    }

    #[tokio::test]
    async fn leftover_temporary_files_are_ignored_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let adapters = dir.path().join("adapters");
        std::fs::create_dir_all(&adapters).unwrap();
        std::fs::write(adapters.join(".half.json.tmp"), b"{\"na").unwrap();
        let store = FileAdapterStore::open(dir.path()).await.unwrap();
        assert!(store.list().await.unwrap().is_empty());
        assert!(!adapters.join(".half.json.tmp").exists());
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn records_are_private_files_in_a_private_directory_and_are_made_so_at_open() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = FileAdapterStore::open(dir.path()).await.unwrap();
        store.create(&adapter("secret", 1)).await.unwrap();
        let adapters = dir.path().join("adapters");
        let record = adapters.join("secret.json");
        assert_eq!(mode(&adapters), 0o700);
        assert_eq!(mode(&record), 0o600);
        let mut changed = adapter("secret", 2);
        changed.last_updated_at = "2026-02-01T00:00:00Z".into();
        store.update(&changed).await.unwrap();
        assert_eq!(mode(&record), 0o600, "a replaced record too");
        drop(store);

        // Made readable by others (an older version, a careless copy): private again at open.
        std::fs::set_permissions(&adapters, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = FileAdapterStore::open(dir.path()).await.unwrap();
        assert_eq!(mode(&adapters), 0o700);
        assert_eq!(mode(&record), 0o600);
        assert_eq!(
            store.get(&name("secret")).await.unwrap(),
            Some(at(changed, 2))
        );
    }

    #[tokio::test]
    async fn concurrent_creates_of_one_name_let_exactly_one_win() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(FileAdapterStore::open(dir.path()).await.unwrap());
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.create(&adapter("race", i + 1)).await.is_ok() })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            won += u32::from(t.await.unwrap());
        }
        assert_eq!(won, 1);
        let stored = store.get(&name("race")).await.unwrap().unwrap();
        let reopened = FileAdapterStore::open(dir.path()).await.unwrap();
        assert_eq!(reopened.get(&name("race")).await.unwrap(), Some(stored));
    }

    #[tokio::test]
    async fn an_update_based_on_an_old_revision_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileAdapterStore::open(dir.path()).await.unwrap();
        assert_eq!(store.create(&adapter("rev", 1)).await.unwrap(), "1");
        let read = store.get(&name("rev")).await.unwrap().unwrap();
        // Two writers read revision 1; the first wins, the second is refused.
        let mut first = read.clone();
        first.spec.replica_count = 2;
        assert_eq!(store.update(&first).await.unwrap(), "2");
        let mut second = read.clone();
        second.spec.replica_count = 3;
        let err = store.update(&second).await.unwrap_err();
        assert!(matches!(err, AdapterError::Conflict(_)), "{err}");
        assert!(err.to_string().contains("revision 2, not 1"), "{err}");
        let stored = store.get(&name("rev")).await.unwrap().unwrap();
        assert_eq!(stored, at(first.clone(), 2));
        // Without a revision the write is unconditional; the count survives a reopen.
        let mut third = read;
        third.revision = None;
        assert_eq!(store.update(&third).await.unwrap(), "3");
        drop(store);
        let store = FileAdapterStore::open(dir.path()).await.unwrap();
        assert_eq!(
            store
                .get(&name("rev"))
                .await
                .unwrap()
                .unwrap()
                .revision
                .as_deref(),
            Some("3")
        );
    }
}
