//! The bootable image for the QEMU tests, built once per zos binary: `zos image build` into
//! `CARGO_TARGET_TMPDIR/zos-image-<size>-<mtime>` (the kernel package is cached by the build
//! itself in ~/.cache/zos/image-kernel), reused by every test binary that boots it.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

/// The binary that becomes `/init`: `ZOS_IMAGE_ZOS` (a static build) or the test's zos.
pub fn init_binary() -> PathBuf {
    std::env::var_os("ZOS_IMAGE_ZOS")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_zos")), PathBuf::from)
}

/// Why the image cannot be built here, if it cannot (apt-get and dpkg-deb fetch the kernel).
pub fn can_build() -> Result<(), String> {
    for t in ["apt-get", "dpkg-deb"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            .unwrap_or(false);
        if !found {
            return Err(format!(
                "{t} missing (the image's kernel is a Debian package)"
            ));
        }
    }
    Ok(())
}

/// The image directory (`vmlinux`/`vmlinuz`, `initramfs.cpio`, `image.json`), built when the
/// cache has none for this binary. Built into a temporary name and renamed: a test killed
/// mid-build leaves no half image behind.
pub fn build() -> PathBuf {
    let bin = init_binary();
    let meta = std::fs::metadata(&bin).unwrap();
    let mtime = meta
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let out = root.join(format!("zos-image-{}-{mtime}", meta.len()));
    if out.join("image.json").is_file() {
        // In use: not old (see below).
        let _ =
            std::fs::File::open(&out).and_then(|f| f.set_modified(std::time::SystemTime::now()));
        return out;
    }
    // Images of older binaries are 100+ MiB each: removed once unused for half an hour (not at
    // once: another test run may be booting one right now).
    for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(1800));
        if name.starts_with("zos-image-") && e.path() != out && old {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let tmp = root.join(format!("zos-image-tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let st = Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(["image", "build", "-o"])
        .arg(&tmp)
        .arg("--zos")
        .arg(&bin)
        .status()
        .unwrap();
    assert!(st.success(), "zos image build failed");
    if std::fs::rename(&tmp, &out).is_err() {
        // Another test binary built it meanwhile.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    out
}
