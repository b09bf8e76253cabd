//! The test guest: built once from Debian packages by scripts/build-test-guest.sh into
//! target/zos-test-guest/<hash of the script>/, and its busybox root packed into an flist.
#![allow(dead_code)]

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

/// Workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The guest directory (vmlinux, initrd.img, rootfs/, test.fl), or None (with a loud SKIP)
/// when it cannot be built here.
pub async fn guest(test: &str) -> Option<PathBuf> {
    // The test command (scripts/test, as root) installs everything a guest needs and sets
    // ZOS_REQUIRE_VM_GUEST: there a missing guest is a failure, never a skip.
    let required = std::env::var_os("ZOS_REQUIRE_VM_GUEST").is_some();
    if !zos_storage::exec::have("qemu-system-x86_64") {
        assert!(!required, "{test}: qemu-system-x86_64 missing");
        eprintln!("SKIP: {test}: qemu-system-x86_64 missing (apt-get install qemu-system-x86)");
        return None;
    }
    let script = workspace().join("scripts/build-test-guest.sh");
    let body = std::fs::read(&script).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    let out = workspace().join(format!("target/zos-test-guest/{:016x}", h.finish()));
    let st = std::process::Command::new("bash")
        .arg(&script)
        .arg(&out)
        .status();
    if !matches!(st, Ok(s) if s.success()) {
        assert!(!required, "{test}: build-test-guest.sh failed ({st:?})");
        eprintln!(
            "SKIP: {test}: build-test-guest.sh failed ({st:?}): needs apt-get, busybox-static, cpio, python3"
        );
        return None;
    }
    let fl = out.join("test.fl");
    if !fl.is_file() {
        let store = out.join("store");
        std::fs::create_dir_all(&store).ok()?;
        let router = zos_flist::Router::from_specs(&[format!("dir://{}", store.display())]).ok()?;
        let tmp = out.join("test.fl.tmp");
        let _ = std::fs::remove_file(&tmp);
        zos_flist::pack::pack(
            &out.join("rootfs"),
            &tmp,
            &router,
            &zos_flist::pack::PackOptions::default(),
        )
        .await
        .map_err(|e| eprintln!("SKIP: {test}: packing the guest flist: {e}"))
        .ok()?;
        std::fs::rename(&tmp, &fl).ok()?;
    }
    Some(out)
}
