//! `zos image build`: the Debian kernel and an initramfs whose `/init` is zos itself, with the
//! kernel modules and the few programs the node executes (btrfs-progs, util-linux's mount and
//! lsblk, iproute2, nftables) and their shared libraries. No shell, no busybox, no users, no
//! ssh: [`forbidden`] names what must never be in it, and the build refuses to finish if a
//! tool's libraries drag one in.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::cpio;
use crate::kmod;

/// Modules the node cannot run without: disks, NIC, pools, the power button, the boot medium.
pub const REQUIRED_MODULES: &[&str] = &[
    // first: libcrc32c (btrfs, nf_tables) asks the crypto API for crc32c when it loads
    "crc32c_generic",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_scsi",
    "sd_mod",
    "btrfs",
    "fuse",
    "tun",
    "button",
    // the power button's key events reach user space through an event device
    "evdev",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "nls_ascii",
];

/// Modules for workloads and real hardware: loaded when the package has them.
pub const OPTIONAL_MODULES: &[&str] = &[
    "crc32c_intel",
    "blake2b_generic",
    "xxhash_generic",
    "virtio_rng",
    "virtio_console",
    "veth",
    "bridge",
    "macvlan",
    "vxlan",
    "nf_tables",
    "nft_chain_nat",
    "nft_masq",
    "nf_nat",
    "nf_conntrack",
    "overlay",
    "erofs",
    "squashfs",
    "loop",
    "ahci",
    "nvme",
    "e1000",
    "e1000e",
    "9pnet_virtio",
    "9p",
    "virtiofs",
];

/// Programs the node executes (by name, through PATH): storage (pools and volumes) and
/// network (namespaces, nftables). None of them is a shell.
pub const TOOLS: &[&str] = &[
    "mkfs.btrfs",
    "btrfs",
    "lsblk",
    "blkid",
    "mount",
    "umount",
    "chattr",
    "ip",
    "nft",
];

/// Build errors.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A file operation.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// An external tool (apt-get, dpkg-deb, ldd, xz) failed.
    #[error("{0}")]
    Tool(String),
    /// Modules.
    #[error(transparent)]
    Kmod(#[from] kmod::KmodError),
    /// The image would contain something it must not.
    #[error("refusing to build: {0} would be in the image")]
    Forbidden(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Output directory.
    pub out: PathBuf,
    /// The zos binary that becomes `/init` (ideally static: glibc crt-static).
    pub zos: PathBuf,
    /// Where the extracted kernel package is kept between builds.
    pub cache: PathBuf,
    /// Debian kernel package, e.g. `linux-image-6.1.0-57-amd64`; default: what
    /// `linux-image-amd64` depends on.
    pub kernel_package: Option<String>,
}

/// What was built: written next to the image as `image.json` and into it as
/// `/etc/zos/image.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageManifest {
    /// The Debian kernel package.
    pub kernel_package: String,
    /// `uname -r` of that kernel.
    pub kernel_release: String,
    /// Modules in load order.
    pub modules: Vec<String>,
    /// Optional modules the package lacks.
    pub modules_missing: Vec<String>,
    /// Tools copied in, with their libraries.
    pub tools: Vec<String>,
    /// Shared libraries copied in (for the tools, and for zos when it is not static).
    pub libraries: Vec<String>,
    /// Whether `/init` is a static executable.
    pub init_static: bool,
    /// Size of `initramfs.cpio`.
    pub initramfs_bytes: u64,
    /// sha256 of `/init`.
    pub init_sha256: String,
}

/// The files of a build in `out`.
pub struct Built {
    /// The manifest.
    pub manifest: ImageManifest,
    /// `vmlinuz` (the bzImage, for bootloaders).
    pub vmlinuz: PathBuf,
    /// `vmlinux` (the ELF, booted by QEMU through its PVH note: faster under TCG), when xz
    /// could extract it.
    pub vmlinux: Option<PathBuf>,
    /// `initramfs.cpio` (uncompressed: nothing to inflate under TCG).
    pub initramfs: PathBuf,
}

/// Names that must never be in the image: shells, busybox, remote logins, user databases.
pub fn forbidden(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    const SHELLS: &[&str] = &[
        "sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish", "busybox",
        "toybox", "sshd", "ssh", "dropbear", "login", "getty", "agetty", "su", "sudo", "telnetd",
        "passwd", "shadow", "group",
    ];
    SHELLS.contains(&base) || name.starts_with("etc/ssh") || base.ends_with("sh") && base.len() <= 5
}

fn run(cmd: &mut Command) -> Result<String, BuildError> {
    let out = cmd
        .output()
        .map_err(|e| BuildError::Tool(format!("{cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(BuildError::Tool(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The default kernel package: what Debian's `linux-image-amd64` depends on.
pub fn default_kernel_package() -> Result<String, BuildError> {
    let out = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| {
            p.starts_with("linux-image-") && p.as_bytes().get(12).is_some_and(u8::is_ascii_digit)
        })
        .map(str::to_string)
        .ok_or_else(|| BuildError::Tool("no linux-image-amd64 dependency (apt-get update?)".into()))
}

/// Downloads and extracts `pkg` into `cache/pkg` once (`.done` marks a finished extraction).
pub fn fetch_kernel(cache: &Path, pkg: &str) -> Result<PathBuf, BuildError> {
    let dir = cache.join(pkg);
    if dir.join(".done").exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(cache).map_err(io(format!("creating {}", cache.display())))?;
    let work = cache.join(format!(".{pkg}.work"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io("work dir"))?;
    run(Command::new("apt-get")
        .arg("download")
        .arg(pkg)
        .current_dir(&work))?;
    let deb = std::fs::read_dir(&work)
        .map_err(io("work dir"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| BuildError::Tool(format!("apt-get download {pkg} left no .deb")))?;
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(work.join("x")))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(work.join("x"), &dir).map_err(io("moving the kernel tree"))?;
    let _ = std::fs::remove_dir_all(&work);
    std::fs::write(dir.join(".done"), pkg).map_err(io("marking the kernel tree"))?;
    Ok(dir)
}

/// The ELF inside a bzImage (XZ payload), through `xz --single-stream` (trailing bytes after
/// the stream are ignored).
fn extract_vmlinux(vmlinuz: &Path, out: &Path) -> Result<(), BuildError> {
    let d = std::fs::read(vmlinuz).map_err(io("reading vmlinuz"))?;
    let magic = b"\xfd7zXZ\x00";
    let at = d
        .windows(magic.len())
        .position(|w| w == magic)
        .ok_or_else(|| BuildError::Tool("no XZ payload in vmlinuz".into()))?;
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| BuildError::Tool(format!("xz: {e}")))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| BuildError::Tool("xz stdin".into()))?;
    let payload = d[at..].to_vec();
    let writer = std::thread::spawn(move || {
        // xz stops reading after the stream: a broken pipe here is expected.
        let _ = stdin.write_all(&payload);
    });
    let out_bytes = child
        .wait_with_output()
        .map_err(|e| BuildError::Tool(format!("xz: {e}")))?;
    let _ = writer.join();
    if out_bytes.stdout.get(..4) != Some(b"\x7fELF") {
        return Err(BuildError::Tool("xz did not yield an ELF kernel".into()));
    }
    std::fs::write(out, out_bytes.stdout).map_err(io("writing vmlinux"))
}

/// Shared libraries of an executable per `ldd` (empty for a static one).
pub fn shared_libs(exe: &Path) -> Result<Vec<PathBuf>, BuildError> {
    let out = Command::new("ldd")
        .arg(exe)
        .output()
        .map_err(|e| BuildError::Tool(format!("ldd: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success()
        || text.contains("not a dynamic executable")
        || text.contains("statically linked")
    {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for l in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let p = match l.split_once("=>") {
            Some((_, r)) => r.trim(),
            None => l.trim(),
        };
        let p = p.split(" (").next().unwrap_or("").trim();
        if p.starts_with('/') {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn sha256_file(p: &Path) -> Result<String, BuildError> {
    use sha2::Digest as _;
    let b = std::fs::read(p).map_err(io(format!("reading {}", p.display())))?;
    Ok(hex::encode(sha2::Sha256::digest(&b)))
}

struct Tree {
    w: cpio::Writer<std::io::BufWriter<std::fs::File>>,
    dirs: BTreeSet<String>,
    names: Vec<String>,
}

impl Tree {
    fn dir(&mut self, name: &str) -> Result<(), BuildError> {
        let mut acc = String::new();
        for part in name.split('/').filter(|p| !p.is_empty()) {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            if self.dirs.insert(acc.clone()) {
                self.w.dir(&acc, 0o755).map_err(io("initramfs"))?;
                self.names.push(acc.clone());
            }
        }
        Ok(())
    }
    fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<(), BuildError> {
        if forbidden(name) {
            return Err(BuildError::Forbidden(name.to_string()));
        }
        if let Some((parent, _)) = name.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.w.file(name, perm, data).map_err(io("initramfs"))?;
        self.names.push(name.to_string());
        Ok(())
    }
    fn host_file(&mut self, host: &Path) -> Result<(), BuildError> {
        let name = host.to_string_lossy().trim_start_matches('/').to_string();
        if self.names.contains(&name) {
            return Ok(());
        }
        // Follow symlinks: the image gets the real bytes under the linked name.
        let data = std::fs::read(host).map_err(io(format!("reading {}", host.display())))?;
        self.file(&name, 0o755, &data)
    }
}

/// Builds the image into `opts.out`: `vmlinuz`, `vmlinux` (when xz is here),
/// `initramfs.cpio`, `image.json`.
pub fn build(opts: &BuildOptions) -> Result<Built, BuildError> {
    let pkg = match &opts.kernel_package {
        Some(p) => p.clone(),
        None => default_kernel_package()?,
    };
    let tree = fetch_kernel(&opts.cache, &pkg)?;
    let release = pkg.trim_start_matches("linux-image-").to_string();
    let mod_dir = tree.join("lib/modules").join(&release);
    let idx = kmod::index(&mod_dir.join("kernel"))?;
    let (modules, missing) = kmod::resolve(&idx, REQUIRED_MODULES, OPTIONAL_MODULES)?;
    std::fs::create_dir_all(&opts.out).map_err(io(format!("creating {}", opts.out.display())))?;

    let vmlinuz_src = tree.join("boot").join(format!("vmlinuz-{release}"));
    let vmlinuz = opts.out.join("vmlinuz");
    std::fs::copy(&vmlinuz_src, &vmlinuz).map_err(io("copying vmlinuz"))?;
    let vmlinux = opts.out.join("vmlinux");
    let vmlinux = match extract_vmlinux(&vmlinuz_src, &vmlinux) {
        Ok(()) => Some(vmlinux),
        Err(e) => {
            tracing::warn!("no vmlinux (QEMU will boot the slower bzImage): {e}");
            None
        }
    };

    let initramfs = opts.out.join("initramfs.cpio");
    let tmp = opts.out.join("initramfs.cpio.tmp");
    let f = std::fs::File::create(&tmp).map_err(io("creating initramfs"))?;
    let mut t = Tree {
        w: cpio::Writer::new(std::io::BufWriter::new(f)),
        dirs: BTreeSet::new(),
        names: Vec::new(),
    };
    for d in [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "mnt",
        "var",
        "etc/zos",
        "lib/modules",
        "usr/bin",
        "usr/sbin",
        "root",
    ] {
        t.dir(d)?;
    }
    t.w.symlink("bin", "usr/bin").map_err(io("initramfs"))?;
    t.w.symlink("sbin", "usr/sbin").map_err(io("initramfs"))?;
    t.names.extend(["bin".to_string(), "sbin".to_string()]);
    // The kernel opens /dev/console for init before anything is mounted.
    t.w.char_dev("dev/console", 0o600, 5, 1)
        .map_err(io("initramfs"))?;
    t.names.push("dev/console".into());
    let zos = std::fs::read(&opts.zos).map_err(io(format!("reading {}", opts.zos.display())))?;
    t.file("init", 0o755, &zos)?;
    let zos_libs = shared_libs(&opts.zos)?;
    let init_static = zos_libs.is_empty();
    if !init_static {
        tracing::warn!(
            "{} is dynamically linked: copying its libraries into the image",
            opts.zos.display()
        );
    }
    let mut order = String::new();
    for (name, path) in &modules {
        let b = std::fs::read(path).map_err(io(format!("reading {}", path.display())))?;
        t.file(&format!("lib/modules/{name}.ko"), 0o644, &b)?;
        order.push_str(name);
        order.push('\n');
    }
    t.file("etc/zos/modules", 0o644, order.as_bytes())?;
    let mut libs: BTreeSet<PathBuf> = zos_libs.into_iter().collect();
    let mut tools = Vec::new();
    for tool in TOOLS {
        let p = which(tool).ok_or_else(|| {
            BuildError::Tool(format!(
                "{tool} not found (apt-get install btrfs-progs util-linux e2fsprogs iproute2 nftables)"
            ))
        })?;
        // Installed under /usr/sbin whatever the host's layout: PATH in the image is fixed.
        let data = std::fs::read(&p).map_err(io(format!("reading {}", p.display())))?;
        t.file(&format!("usr/sbin/{tool}"), 0o755, &data)?;
        libs.extend(shared_libs(&p)?);
        tools.push(tool.to_string());
    }
    for l in &libs {
        t.host_file(l)?;
    }
    let mut manifest = ImageManifest {
        kernel_package: pkg.clone(),
        kernel_release: release,
        modules: modules.iter().map(|(n, _)| n.clone()).collect(),
        modules_missing: missing,
        tools,
        libraries: libs.iter().map(|l| l.display().to_string()).collect(),
        init_static,
        initramfs_bytes: 0,
        init_sha256: sha256_file(&opts.zos)?,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| BuildError::Tool(e.to_string()))?;
    t.file("etc/zos/image.json", 0o644, &json)?;
    t.w.finish().map_err(io("initramfs"))?;
    std::fs::rename(&tmp, &initramfs).map_err(io("initramfs"))?;
    manifest.initramfs_bytes = std::fs::metadata(&initramfs)
        .map_err(io("initramfs"))?
        .len();
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| BuildError::Tool(e.to_string()))?;
    std::fs::write(opts.out.join("image.json"), json).map_err(io("image.json"))?;
    Ok(Built {
        manifest,
        vmlinuz,
        vmlinux,
        initramfs,
    })
}

/// A small archive to append to the initramfs (`cat initramfs.cpio site.cpio`): a site's
/// files (pinned certificates) without rebuilding the image. `files`: (path in the image,
/// contents).
pub fn overlay(files: &[(String, Vec<u8>)]) -> Result<Vec<u8>, BuildError> {
    let mut w = cpio::Writer::new(Vec::new());
    let mut dirs = BTreeSet::new();
    for (name, data) in files {
        let name = name.trim_start_matches('/');
        if forbidden(name) {
            return Err(BuildError::Forbidden(name.to_string()));
        }
        let mut acc = String::new();
        if let Some((parent, _)) = name.rsplit_once('/') {
            for part in parent.split('/') {
                if !acc.is_empty() {
                    acc.push('/');
                }
                acc.push_str(part);
                if dirs.insert(acc.clone()) {
                    w.dir(&acc, 0o755).map_err(io("overlay"))?;
                }
            }
        }
        w.file(name, 0o644, data).map_err(io("overlay"))?;
    }
    w.finish().map_err(io("overlay"))
}

/// A bootable USB/disk image: one FAT filesystem (no partition table) labelled `ZOSBOOT`,
/// booted by BIOS firmware through syslinux into `vmlinuz` with `initrds` (loaded in order,
/// so a site overlay follows the image) and `cmdline`. It is also the boot medium PID 1 keeps
/// the key root on. Needs mkfs.vfat, syslinux and mcopy on the build host.
pub fn usb_image(
    out: &Path,
    vmlinuz: &Path,
    initrds: &[PathBuf],
    cmdline: &str,
) -> Result<(), BuildError> {
    let mut payload = std::fs::metadata(vmlinuz).map_err(io("vmlinuz"))?.len();
    for i in initrds {
        payload += std::fs::metadata(i)
            .map_err(io(format!("{}", i.display())))?
            .len();
    }
    // Room for the key root and a second release's files later.
    let size = (payload + (32 << 20)).div_ceil(1 << 20) << 20;
    let _ = std::fs::remove_file(out);
    let f = std::fs::File::create(out).map_err(io(format!("creating {}", out.display())))?;
    f.set_len(size).map_err(io("sizing the image"))?;
    drop(f);
    run(Command::new("mkfs.vfat")
        .args(["-n", crate::init::BOOT_LABEL])
        .arg(out))?;
    run(Command::new("syslinux").arg("--install").arg(out))?;
    let mut names = Vec::new();
    for (n, i) in initrds.iter().enumerate() {
        let name = format!("initrd{n}.img");
        run(Command::new("mcopy")
            .arg("-i")
            .arg(out)
            .arg(i)
            .arg(format!("::{name}")))?;
        names.push(name);
    }
    run(Command::new("mcopy")
        .arg("-i")
        .arg(out)
        .arg(vmlinuz)
        .arg("::vmlinuz"))?;
    let cfg = format!(
        "SERIAL 0 115200\nDEFAULT zos\nPROMPT 0\nTIMEOUT 0\nLABEL zos\n  KERNEL vmlinuz\n  APPEND initrd={} {}\n",
        names.join(","),
        cmdline.trim()
    );
    let cfg_file = out.with_extension("syslinux.cfg");
    std::fs::write(&cfg_file, cfg).map_err(io("syslinux.cfg"))?;
    let r = run(Command::new("mcopy")
        .arg("-i")
        .arg(out)
        .arg(&cfg_file)
        .arg("::syslinux.cfg"));
    let _ = std::fs::remove_file(&cfg_file);
    r.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shells_are_forbidden_tools_are_not() {
        for bad in [
            "bin/sh",
            "usr/bin/bash",
            "bin/busybox",
            "usr/sbin/sshd",
            "etc/passwd",
            "etc/ssh/sshd_config",
            "bin/dash",
        ] {
            assert!(forbidden(bad), "{bad}");
        }
        for ok in [
            "init",
            "usr/sbin/mkfs.btrfs",
            "usr/sbin/btrfs",
            "lib/modules/fuse.ko",
            "usr/sbin/ip",
            "etc/zos/modules",
            "lib/x86_64-linux-gnu/libc.so.6",
        ] {
            assert!(!forbidden(ok), "{ok}");
        }
    }
}
