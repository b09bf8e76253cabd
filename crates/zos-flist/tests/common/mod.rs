//! Shared fixtures: a source tree with every case the issue lists, and a tree comparison.
#![allow(dead_code, missing_docs)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const CHUNK: usize = 512 * 1024;

/// Deterministic pseudo-random bytes (xorshift), distinct per seed.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn write(path: &Path, data: &[u8], mode: u32) {
    std::fs::write(path, data).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Builds the round-trip tree under `root` (which must exist).
pub fn build_tree(root: &Path, big: usize) {
    let d = |p: &str| {
        let p = root.join(p);
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    };
    write(&root.join("empty"), b"", 0o644);
    write(&root.join("one"), b"x", 0o600);
    write(&root.join("exact"), &bytes(CHUNK, 1), 0o640);
    write(&root.join("exact-plus-one"), &bytes(CHUNK + 1, 2), 0o755);
    write(&root.join("big"), &bytes(big, 3), 0o644);
    // Repeated content: dedup across files; compressible chunks.
    write(&root.join("zeros"), &vec![0u8; 3 * CHUNK + 100], 0o444);
    write(&root.join("setuid"), b"#!/bin/sh\n", 0o4755);
    let sub = d("a/b/c");
    write(&sub.join("deep.txt"), b"deep\n", 0o644);
    d("empty-dir");
    let sticky = d("sticky");
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let ro = d("ro-dir");
    write(&ro.join("inside"), b"inside a read-only dir\n", 0o644);
    std::os::unix::fs::symlink("one", root.join("link-rel")).expect("symlink");
    std::os::unix::fs::symlink("/etc/hostname", root.join("link-abs")).expect("symlink");
    std::os::unix::fs::symlink("does/not/exist", root.join("link-dangling")).expect("symlink");
    std::os::unix::fs::symlink("a/b", root.join("link-dir")).expect("symlink");
    std::fs::hard_link(root.join("exact-plus-one"), root.join("a/hardlink")).expect("hardlink");
    std::fs::hard_link(root.join("exact-plus-one"), root.join("a/b/hardlink2")).expect("hardlink");
    std::fs::write(
        root.join("a/b/c/\u{e9}t\u{e9} \u{1f600}.txt"),
        b"unicode name\n",
    )
    .expect("write");
    if is_root() {
        let owned = root.join("owned");
        write(&owned, b"owned by someone\n", 0o640);
        std::os::unix::fs::lchown(&owned, Some(1234), Some(5678)).expect("chown");
        std::os::unix::fs::lchown(root.join("link-rel"), Some(42), Some(43)).expect("lchown");
        std::os::unix::fs::lchown(&sub, Some(7), Some(8)).expect("chown");
    }
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).expect("chmod");
}

/// What must agree between source and copy, per relative path.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: Option<u64>,
    pub mtime: Option<i64>,
    pub nlink: u64,
    pub target: Option<PathBuf>,
}

/// Walks `root` (not following links) into a map; `owners` false drops uid/gid, `dir_nlink`
/// false drops directory link counts.
pub fn snapshot(root: &Path, owners: bool, dir_mtime: bool) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("readdir") {
            let p = e.expect("entry").path();
            let m = std::fs::symlink_metadata(&p).expect("lstat");
            let ft = m.file_type();
            if ft.is_dir() {
                stack.push(p.clone());
            }
            out.insert(
                p.strip_prefix(root).expect("prefix").to_path_buf(),
                Entry {
                    mode: m.mode(),
                    uid: if owners { m.uid() } else { 0 },
                    gid: if owners { m.gid() } else { 0 },
                    // Directory sizes are the filesystem's business (tmpfs vs FUSE).
                    size: if ft.is_dir() { None } else { Some(m.size()) },
                    mtime: if ft.is_dir() && !dir_mtime || ft.is_symlink() {
                        None
                    } else {
                        Some(m.mtime())
                    },
                    nlink: m.nlink(),
                    target: if ft.is_symlink() {
                        Some(std::fs::read_link(&p).expect("readlink"))
                    } else {
                        None
                    },
                },
            );
        }
    }
    out
}

/// `diff -r --no-dereference a b` succeeds.
pub fn diff_r(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(a)
        .arg(b)
        .output()
        .expect("run diff");
    assert!(
        out.status.success(),
        "diff -r {} {} failed:\n{}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts the two snapshots agree, printing the first differences.
pub fn assert_same(src: &BTreeMap<PathBuf, Entry>, copy: &BTreeMap<PathBuf, Entry>) {
    let mut diffs = Vec::new();
    for (p, e) in src {
        match copy.get(p) {
            None => diffs.push(format!("missing {}", p.display())),
            Some(c) if c != e => diffs.push(format!("{}: source {e:?} copy {c:?}", p.display())),
            _ => {}
        }
    }
    for p in copy.keys() {
        if !src.contains_key(p) {
            diffs.push(format!("extra {}", p.display()));
        }
    }
    assert!(diffs.is_empty(), "trees differ:\n{}", diffs.join("\n"));
}
