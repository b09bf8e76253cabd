//! `dir:///path`: one file per block at `<path>/<hex[0..2]>/<hex>` (reads fall back to the
//! flat legacy `<path>/<hex>`). Writes go through a temporary file and a rename, so a reader
//! never sees a partial block and concurrent writers of the same (content-addressed) block
//! are harmless.

use std::path::{Path, PathBuf};

use super::StoreError;
use crate::block::BlockId;

/// A directory of blocks.
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> DirStore {
        DirStore { root: root.into() }
    }

    /// From `dir:///abs/path`.
    pub fn from_url(url: &str) -> Result<DirStore, StoreError> {
        let path = url
            .strip_prefix("dir://")
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| {
                StoreError::BadSpec(url.into(), "expected dir:///absolute/path".into())
            })?;
        Ok(DirStore::new(path))
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where block `id` is (or would be) stored.
    pub fn path_of(&self, id: &BlockId) -> PathBuf {
        let hex = id.hex();
        self.root.join(&hex[..2]).join(hex)
    }

    fn err(&self, e: std::io::Error) -> StoreError {
        StoreError::Backend {
            url: self.url_str(),
            reason: e.to_string(),
        }
    }

    fn url_str(&self) -> String {
        format!("dir://{}", self.root.display())
    }
}

#[async_trait::async_trait]
impl super::Store for DirStore {
    async fn get(&self, id: &BlockId) -> Result<Vec<u8>, StoreError> {
        match tokio::fs::read(self.path_of(id)).await {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match tokio::fs::read(self.root.join(id.hex())).await {
                    Ok(b) => Ok(b),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        Err(StoreError::NotFound(*id))
                    }
                    Err(e) => Err(self.err(e)),
                }
            }
            Err(e) => Err(self.err(e)),
        }
    }

    async fn set(&self, id: &BlockId, blob: &[u8]) -> Result<(), StoreError> {
        let path = self.path_of(id);
        if tokio::fs::metadata(&path)
            .await
            .is_ok_and(|m| m.len() == blob.len() as u64)
        {
            return Ok(());
        }
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| self.err(e))?;
        let tmp = dir.join(format!(".{}.{}.tmp", id.hex(), rand::random::<u64>()));
        tokio::fs::write(&tmp, blob)
            .await
            .map_err(|e| self.err(e))?;
        if let Err(e) = tokio::fs::rename(&tmp, &path).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(self.err(e));
        }
        Ok(())
    }

    async fn exists(&self, id: &BlockId) -> Result<bool, StoreError> {
        Ok(tokio::fs::metadata(self.path_of(id)).await.is_ok()
            || tokio::fs::metadata(self.root.join(id.hex())).await.is_ok())
    }

    fn url(&self) -> String {
        self.url_str()
    }
}
