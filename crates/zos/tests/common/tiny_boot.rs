//! A fast boot fixture for the boot-medium tests (`image_iso`, `image_pxe`): the real Debian
//! kernel `zos image build` uses (its cache) with a tiny initramfs whose `/init` (busybox-static,
//! a test fixture only, never in the zos image) prints the kernel command line and a site
//! overlay's file, then powers off. It proves the loader passed the kernel, the initrds in
//! order and the command line, without the zos image's 145 MiB initramfs (slow under TCG).
//! Include it with `#[path = "common/tiny_boot.rs"] mod tiny_boot;`.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The console line prefix of the fixture's `/init` printing `/proc/cmdline`.
pub const CMDLINE_LINE: &str = "TINY-INIT cmdline:";
/// What the console says when the overlay (the second initrd) reached `/init`.
pub const OVERLAY_LOADED: &str = "TINY-INIT overlay: site-overlay-loaded";
/// The kernel's line for a clean power-off.
pub const POWER_DOWN: &str = "reboot: Power down";

/// Whether `/bin/busybox` is the static one (`busybox-static`); says SKIP for `test` when not.
pub fn busybox_static(test: &str) -> bool {
    let bb = std::fs::read("/bin/busybox").unwrap_or_default();
    // a static busybox has no PT_INTERP: "/lib64/ld-linux" would be in a dynamic one
    let ok = !bb.is_empty() && !bb.windows(15).any(|w| w == b"/lib64/ld-linux");
    if !ok {
        eprintln!("SKIP: {test}: needs busybox-static at /bin/busybox");
    }
    ok
}

/// The Debian kernel `zos image build` uses (its cache, or `apt-get download` once); says
/// SKIP for `test` when there is none.
pub fn kernel(test: &str) -> Option<PathBuf> {
    let cache = std::env::var_os("ZOS_IMAGE_CACHE").map_or_else(
        || {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from("/tmp"))
                .join("zos/image-kernel")
        },
        PathBuf::from,
    );
    let pkg = match zos_image::build::default_kernel_package() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("SKIP: {test}: no kernel package: {e}");
            return None;
        }
    };
    let tree = match zos_image::build::fetch_kernel(&cache, &pkg) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("SKIP: {test}: kernel {pkg}: {e}");
            return None;
        }
    };
    let v = std::fs::read_dir(tree.join("boot"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        });
    if v.is_none() {
        eprintln!("SKIP: {test}: no vmlinuz in {}", tree.display());
    }
    v
}

/// A stand-in `zos image build` directory in `dir/image`: the Debian kernel as `vmlinuz` and
/// the tiny initramfs; and `dir/site.cpio`, the overlay. Returns the image directory.
pub fn image_dir(dir: &Path, vmlinuz: &Path) -> PathBuf {
    let img = dir.join("image");
    std::fs::create_dir_all(&img).unwrap();
    std::fs::copy(vmlinuz, img.join("vmlinuz")).unwrap();
    tiny_initramfs(&img.join("initramfs.cpio"));
    overlay(&dir.join("site.cpio"));
    img
}

/// A tiny initramfs: busybox-static and an /init that prints the command line and the
/// overlay's file, then powers off.
pub fn tiny_initramfs(out: &Path) {
    let mut w = zos_image::cpio::Writer::new(std::fs::File::create(out).unwrap());
    for d in ["bin", "dev", "proc", "etc"] {
        w.dir(d, 0o755).unwrap();
    }
    w.char_dev("dev/console", 0o600, 5, 1).unwrap();
    // The overlay replaces this file: only the initrds loaded in order (initramfs, then the
    // overlay: later files win) make /init print the overlay's text.
    w.file("etc/tiny-overlay", 0o644, b"initramfs-only")
        .unwrap();
    w.file(
        "bin/busybox",
        0o755,
        &std::fs::read("/bin/busybox").unwrap(),
    )
    .unwrap();
    let init = format!(
        "#!/bin/busybox sh\n\
        /bin/busybox mount -t proc proc /proc\n\
        /bin/busybox echo \"{CMDLINE_LINE} $(/bin/busybox cat /proc/cmdline)\"\n\
        /bin/busybox echo \"TINY-INIT overlay: $(/bin/busybox cat /etc/tiny-overlay)\"\n\
        /bin/busybox poweroff -f\n"
    );
    w.file("init", 0o755, init.as_bytes()).unwrap();
    w.finish().unwrap();
}

/// The site overlay: the file the fixture's /init prints, replacing the initramfs's own (so
/// its text shows only when the overlay was loaded, and after the initramfs).
pub fn overlay(out: &Path) {
    let mut w = zos_image::cpio::Writer::new(std::fs::File::create(out).unwrap());
    w.dir("etc", 0o755).unwrap();
    w.file("etc/tiny-overlay", 0o644, b"site-overlay-loaded")
        .unwrap();
    w.finish().unwrap();
}

/// QEMU, SIGKILLed and reaped on drop (also when the test fails).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `qemu-system-x86_64` under TCG with `args` (firmware, boot device) and the serial
/// console to `dir/<name>.log`; the console once QEMU exits (or `within` passes: then it is
/// killed) and how long it ran.
pub fn qemu(dir: &Path, name: &str, args: &[String], within: Duration) -> (String, Duration) {
    let console = dir.join(format!("{name}.log"));
    let start = Instant::now();
    let mut child = Killed(
        Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-cpu", "max", "-m", "512"])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .args(args)
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    while start.elapsed() < within {
        if child.0.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = start.elapsed();
    drop(child); // killed if still running
    let text = String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).into_owned();
    (text, took)
}
