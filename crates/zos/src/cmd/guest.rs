//! The VM test guest `zos up` offers so a first VM works offline: built once from Debian
//! packages by scripts/build-test-guest.sh (embedded in this binary), cached per version of
//! that script; its kernel and initrd become each node's cloud-container
//! (`NODE_DATA/cloud-container`) and its busybox root an flist on the grid's hub
//! (`/flists/0/test-guest.fl`, the grid's own namespace), which examples/vm.yaml deploys.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The build script, as in the source tree.
const SCRIPT: &str = include_str!("../../../../scripts/build-test-guest.sh");
/// The hub namespace of the grid's own flists.
pub const FLIST_TWIN: u32 = 0;
/// The test guest's flist name on the hub.
pub const FLIST_NAME: &str = "test-guest.fl";

/// Where the guest is cached by default: `$XDG_CACHE_HOME/zos/test-guest/<script hash>`
/// (one build per machine and script version, shared by every grid).
pub fn default_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
        });
    let mut h = std::collections::hash_map::DefaultHasher::new();
    SCRIPT.as_bytes().hash(&mut h);
    cache
        .join("zos/test-guest")
        .join(format!("{:016x}", h.finish()))
}

/// True when `dir` holds a finished build.
pub fn is_built(dir: &Path) -> bool {
    dir.join(".done").exists() && dir.join("rootfs").is_dir()
}

/// Builds the guest into `dir` (apt-get download of the Debian kernel; busybox-static from
/// the host). Concurrent `zos up`s wait on one lock and build once.
pub async fn build(dir: &Path) -> anyhow::Result<()> {
    let parent = dir.parent().context("guest directory has no parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let script = parent.join(format!(".build-{}.sh", std::process::id()));
    std::fs::write(&script, SCRIPT).with_context(|| format!("writing {}", script.display()))?;
    let lock = parent.join(".build.lock");
    // kill_on_drop: a `zos up` stopped during the build does not leave it running.
    let out = tokio::process::Command::new("flock")
        .arg(&lock)
        .arg("bash")
        .arg(&script)
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    let _ = std::fs::remove_file(&script);
    let out = out.context("running the guest build (flock, bash)")?;
    if !out.status.success() {
        anyhow::bail!(
            "scripts/build-test-guest.sh failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Makes the built guest in `guest` available: `cloud-container` links in each node's data
/// directory and the flist on the hub rooted at `hub_root` (packed again only when the guest
/// changed). Returns the flist's path on the hub.
pub async fn install(
    guest: &Path,
    node_dirs: &[PathBuf],
    hub_root: &Path,
) -> anyhow::Result<String> {
    let guest = std::fs::canonicalize(guest)
        .with_context(|| format!("guest directory {}", guest.display()))?;
    for d in node_dirs {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        let link = d.join("cloud-container");
        if std::fs::read_link(&link).ok().as_deref() != Some(guest.as_path()) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&guest, &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
    }
    let dir = hub_root.join("flists").join(FLIST_TWIN.to_string());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let fl = dir.join(FLIST_NAME);
    // The source marker names the guest build the flist was packed from.
    let marker = dir.join(".test-guest.src");
    let src = format!(
        "{}\n{}",
        guest.display(),
        std::fs::read_to_string(guest.join("kernel-package")).unwrap_or_default()
    );
    if !fl.is_file() || std::fs::read_to_string(&marker).ok().as_deref() != Some(src.as_str()) {
        let blocks = hub_root.join("blocks");
        let router = zos_flist::Router::from_specs(&[format!("dir://{}", blocks.display())])
            .context("the hub's block store")?;
        let tmp = dir.join(format!(".{FLIST_NAME}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        zos_flist::pack::pack(
            &guest.join("rootfs"),
            &tmp,
            &router,
            &zos_flist::pack::PackOptions::default(),
        )
        .await
        .context("packing the test guest's flist")?;
        std::fs::rename(&tmp, &fl).context("installing the test guest's flist")?;
        std::fs::write(&marker, src).context("writing the flist marker")?;
    }
    Ok(format!("/flists/{FLIST_TWIN}/{FLIST_NAME}"))
}
