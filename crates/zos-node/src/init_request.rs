//! Asking the image's PID 1 to act (docs/image.md, the upgrade contract): the node writes one
//! word (`reboot`, `switch`) to a request file PID 1 watches. The file is written atomically
//! (temporary file, fsync, rename) so PID 1 never reads half a word.
//!
//! Only a node started by zos PID 1 (env [`ENV_INIT`]` = 1`) has someone to ask; a node that
//! runs as a host process has no such file and says so.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Where PID 1 looks for requests.
pub const DEFAULT_PATH: &str = "/run/zos/init-request";
/// Set to `1` by PID 1 in the node's environment.
pub const ENV_INIT: &str = "ZOS_INIT";
/// Overrides [`DEFAULT_PATH`] (tests).
pub const ENV_PATH: &str = "ZOS_INIT_REQUEST";

/// The request file when this process runs under zos PID 1 (`ZOS_INIT=1`), else `None`.
pub fn from_env() -> Option<PathBuf> {
    if std::env::var_os(ENV_INIT).is_none_or(|v| v != "1") {
        return None;
    }
    Some(
        std::env::var_os(ENV_PATH)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH)),
    )
}

/// A request written to its temporary file, not yet visible to PID 1: [`Staged::commit`]
/// renames it into place. Staging first lets the caller report a write error synchronously and
/// still make the request visible later (after the API reply went out, for `reboot`).
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
}

/// Writes `word` to a temporary file next to `path` (same filesystem, so the rename is atomic).
pub fn stage(path: &Path, word: &str) -> std::io::Result<Staged> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "init-request".into());
    // One temporary name per word: a `switch` and a `reboot` staged at once do not clobber
    // each other's half-written file.
    let tmp = path.with_file_name(format!(".{name}.{word}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    // Exactly the word, no newline: the contract says "one word".
    f.write_all(word.as_bytes())?;
    f.sync_all()?;
    Ok(Staged {
        tmp,
        path: path.to_path_buf(),
    })
}

impl Staged {
    /// Makes the request visible to PID 1.
    pub fn commit(self) -> std::io::Result<()> {
        std::fs::rename(&self.tmp, &self.path)
    }
}

/// Writes `word` to `path` atomically, now.
pub fn write(path: &Path, word: &str) -> std::io::Result<()> {
    stage(path, word)?.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_request_appears_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("init-request");
        let s = stage(&p, "reboot").unwrap();
        assert!(!p.exists(), "PID 1 sees nothing before the commit");
        s.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "reboot");
        write(&p, "switch").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "switch");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(stage(&dir.path().join("no/such/init-request"), "reboot").is_err());
    }
}
