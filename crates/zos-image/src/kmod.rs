//! Kernel modules: the dependency order from each module's own `.modinfo` (`depends=`), since
//! Debian's package carries no `modules.dep` (depmod runs at install time), and loading them
//! with `finit_module` at boot.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// Module errors.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    /// Walking or reading the module tree.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A module the image needs is not in the kernel package.
    #[error("module {0} is not in the kernel package")]
    Missing(String),
}

/// The name the kernel uses (`-` and `_` are the same in module names).
pub fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// The `depends=` list of a module file's `.modinfo` strings (NUL-separated `key=value`).
/// Scans the bytes rather than parsing ELF: the strings are NUL-terminated and the key is
/// unique; a file without one has no dependencies.
pub fn depends(ko: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = ko.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &ko[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(canonical)
        .collect()
}

/// Every `*.ko` under `dir`, by canonical name.
pub fn index(dir: &Path) -> Result<BTreeMap<String, PathBuf>, KmodError> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let rd = std::fs::read_dir(&d).map_err(|source| KmodError::Io {
            path: d.clone(),
            source,
        })?;
        for e in rd {
            let e = e.map_err(|source| KmodError::Io {
                path: d.clone(),
                source,
            })?;
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if let Some(n) = p.file_name().and_then(|n| n.to_str()) {
                if let Some(stem) = n.strip_suffix(".ko") {
                    out.insert(canonical(stem), p);
                }
            }
        }
    }
    Ok(out)
}

/// Modules in load order (name, file), and the optional ones the package lacks.
pub type Resolved = (Vec<(String, PathBuf)>, Vec<String>);

/// `wanted` and all their dependencies, dependencies first (the order to load them in).
/// Missing `required` modules are an error; missing optional ones are skipped and returned.
pub fn resolve(
    idx: &BTreeMap<String, PathBuf>,
    required: &[&str],
    optional: &[&str],
) -> Result<Resolved, KmodError> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    let mut skipped = Vec::new();
    fn visit(
        idx: &BTreeMap<String, PathBuf>,
        name: &str,
        seen: &mut HashSet<String>,
        order: &mut Vec<(String, PathBuf)>,
    ) -> Result<(), KmodError> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let path = idx
            .get(name)
            .ok_or_else(|| KmodError::Missing(name.to_string()))?;
        let bytes = std::fs::read(path).map_err(|source| KmodError::Io {
            path: path.clone(),
            source,
        })?;
        for d in depends(&bytes) {
            visit(idx, &d, seen, order)?;
        }
        order.push((name.to_string(), path.clone()));
        Ok(())
    }
    for m in required {
        visit(idx, &canonical(m), &mut seen, &mut order)?;
    }
    for m in optional {
        let m = canonical(m);
        if idx.contains_key(&m) {
            visit(idx, &m, &mut seen, &mut order)?;
        } else {
            skipped.push(m);
        }
    }
    Ok((order, skipped))
}

/// Loads the modules listed (one file name per line, in order) from `dir` with
/// `finit_module`. A module the kernel already has (built in, or loaded) counts as loaded.
/// Returns the failures (name, reason): the boot goes on and says which ones failed.
pub fn load_all(dir: &Path, order: &str) -> Vec<(String, String)> {
    let mut todo: Vec<&str> = order
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    // Soft dependencies (a crypto algorithm another module asks for by name) are not in
    // `depends=`: what failed is tried again after the rest has loaded, while that helps.
    loop {
        let failed = load_pass(dir, &todo);
        if failed.is_empty() || failed.len() == todo.len() {
            return failed;
        }
        todo.retain(|t| failed.iter().any(|(n, _)| n == t));
    }
}

fn load_pass(dir: &Path, names: &[&str]) -> Vec<(String, String)> {
    let mut failed = Vec::new();
    for &name in names {
        let path = dir.join(format!("{name}.ko"));
        let r = std::fs::File::open(&path)
            .map_err(|e| e.to_string())
            .and_then(|f| {
                nix::kmod::finit_module(&f, c"", nix::kmod::ModuleInitFlags::empty()).or_else(|e| {
                    if e == nix::errno::Errno::EEXIST {
                        Ok(())
                    } else {
                        Err(e.to_string())
                    }
                })
            });
        if let Err(e) = r {
            failed.push((name.to_string(), e));
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ko(dir: &Path, name: &str, deps: &str) {
        let mut b = b"\x7fELF junk\0license=GPL\0".to_vec();
        b.extend_from_slice(format!("depends={deps}\0vermagic=6.1\0").as_bytes());
        std::fs::write(dir.join(format!("{name}.ko")), b).unwrap();
    }

    #[test]
    fn dependencies_come_first() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("fs/btrfs")).unwrap();
        ko(
            &d.path().join("fs/btrfs"),
            "btrfs",
            "xor,raid6_pq,libcrc32c",
        );
        ko(d.path(), "xor", "");
        ko(d.path(), "raid6_pq", "");
        ko(d.path(), "libcrc32c", "");
        ko(d.path(), "crc32c-intel", "");
        let idx = index(d.path()).unwrap();
        let (order, skipped) = resolve(&idx, &["btrfs"], &["crc32c-intel", "nope"]).unwrap();
        let names: Vec<_> = order.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["xor", "raid6_pq", "libcrc32c", "btrfs", "crc32c_intel"]
        );
        assert_eq!(skipped, ["nope"]);
        assert!(matches!(
            resolve(&idx, &["nope"], &[]),
            Err(KmodError::Missing(_))
        ));
    }
}
