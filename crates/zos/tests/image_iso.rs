//! `zos image iso`: the ISO holds the kernel, the initramfs, the overlay (in load order) and the
//! command line in ISOLINUX's configuration, and is El Torito bootable (BIOS; UEFI when GRUB's
//! EFI modules are installed) — checked with xorriso on small stand-in files. Then a real boot
//! under QEMU (TCG): SeaBIOS → ISOLINUX → the Debian kernel → a tiny /init (busybox-static, a
//! test fixture only, never in the zos image) that prints the kernel command line and the
//! overlay's file and powers off; the same through OVMF → GRUB when OVMF is installed.
//! Tools missing → a loud SKIP.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::TempDir;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn zos(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

fn iso_tools() -> bool {
    let ok = have("xorriso")
        && (Path::new("/usr/lib/ISOLINUX/isolinux.bin").is_file()
            || Path::new("/usr/share/syslinux/isolinux.bin").is_file());
    if !ok {
        eprintln!(
            "SKIP: image_iso: needs xorriso and ISOLINUX (apt-get install xorriso isolinux syslinux-common)"
        );
    }
    ok
}

/// `xorriso` reading `iso`, its stdout.
fn xorriso(iso: &Path, cmds: &[&str]) -> String {
    let o = Command::new("xorriso")
        .arg("-indev")
        .arg(iso)
        .args(cmds)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "xorriso {cmds:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn extract(iso: &Path, path: &str, to: &Path) -> Vec<u8> {
    let _ = std::fs::remove_file(to);
    xorriso(
        iso,
        &["-osirrox", "on", "-extract", path, to.to_str().unwrap()],
    );
    std::fs::read(to).unwrap()
}

fn fake_image(dir: &Path) -> PathBuf {
    let img = dir.join("image");
    std::fs::create_dir_all(&img).unwrap();
    // Distinct bytes per file: a swapped file would not compare equal.
    let bytes = |seed: u8, n: usize| {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect::<Vec<u8>>()
    };
    std::fs::write(img.join("vmlinuz"), bytes(1, 70_001)).unwrap();
    std::fs::write(img.join("initramfs.cpio"), bytes(2, 90_003)).unwrap();
    std::fs::write(dir.join("site.cpio"), bytes(3, 5_005)).unwrap();
    img
}

#[test]
fn iso_holds_kernel_initramfs_overlay_and_cmdline_and_is_el_torito_bootable() {
    if !iso_tools() {
        return;
    }
    let dir = TempDir::new();
    let img = fake_image(&dir.0);
    let iso = dir.0.join("zos.iso");
    let cmdline = "farmer_id=7 runmode=dev ledger=https://10.0.2.2:8900";
    let o = zos(&[
        "image",
        "iso",
        "-o",
        iso.to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
        "--overlay",
        dir.0.join("site.cpio").to_str().unwrap(),
        "--cmdline",
        cmdline,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("boots from BIOS (ISOLINUX)"), "{said}");

    let files = xorriso(&iso, &["-find", "/", "-type", "f"]);
    for f in [
        "/zos/vmlinuz",
        "/zos/initrd0.img",
        "/zos/initrd1.img",
        "/isolinux/isolinux.bin",
        "/isolinux/ldlinux.c32",
        "/isolinux/isolinux.cfg",
    ] {
        assert!(
            files.contains(&format!("'{f}'")),
            "{f} missing in:\n{files}"
        );
    }
    // byte for byte, in load order: the image's initramfs, then the overlay
    let x = dir.0.join("x");
    assert_eq!(
        extract(&iso, "/zos/vmlinuz", &x),
        std::fs::read(img.join("vmlinuz")).unwrap()
    );
    assert_eq!(
        extract(&iso, "/zos/initrd0.img", &x),
        std::fs::read(img.join("initramfs.cpio")).unwrap()
    );
    assert_eq!(
        extract(&iso, "/zos/initrd1.img", &x),
        std::fs::read(dir.0.join("site.cpio")).unwrap()
    );
    let cfg = String::from_utf8(extract(&iso, "/isolinux/isolinux.cfg", &x)).unwrap();
    assert!(cfg.contains("KERNEL /zos/vmlinuz"), "{cfg}");
    assert!(
        cfg.contains(&format!(
            "APPEND initrd=/zos/initrd0.img,/zos/initrd1.img console=ttyS0 panic=-1 quiet {cmdline}"
        )),
        "{cfg}"
    );

    let torito = xorriso(&iso, &["-report_el_torito", "plain"]);
    let boot_lines: Vec<&str> = torito
        .lines()
        .filter(|l| l.starts_with("El Torito boot img"))
        .collect();
    assert!(
        boot_lines
            .iter()
            .any(|l| l.contains("BIOS") && l.contains(" y ") && l.contains("none")),
        "no bootable BIOS no-emulation entry:\n{torito}"
    );
    assert!(torito.contains("/isolinux/isolinux.bin"), "{torito}");
    assert!(
        torito.contains("isohybrid"),
        "not isohybrid (USB):\n{torito}"
    );
    let efi = said.contains("UEFI (GRUB)");
    assert_eq!(
        boot_lines.iter().any(|l| l.contains("UEFI")),
        efi,
        "UEFI entry and the command's word disagree:\n{torito}"
    );

    // --no-efi: BIOS only
    let bios = dir.0.join("bios.iso");
    let o = zos(&[
        "image",
        "iso",
        "-o",
        bios.to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
        "--no-efi",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let torito = xorriso(&bios, &["-report_el_torito", "plain"]);
    assert!(!torito.contains("UEFI"), "{torito}");
    let cfg = String::from_utf8(extract(&bios, "/isolinux/isolinux.cfg", &x)).unwrap();
    assert!(
        cfg.contains("APPEND initrd=/zos/initrd0.img console=ttyS0"),
        "{cfg}"
    );

    // a missing kernel: an error naming it, no ISO, no staging directory left behind
    std::fs::remove_file(img.join("vmlinuz")).unwrap();
    let bad = dir.0.join("bad.iso");
    let o = zos(&[
        "image",
        "iso",
        "-o",
        bad.to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("vmlinuz"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!bad.exists());
    let left: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("staging"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The Debian kernel `zos image build` uses (its cache, or `apt-get download` once).
fn kernel() -> Option<PathBuf> {
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
            eprintln!("SKIP: image_iso boot: no kernel package: {e}");
            return None;
        }
    };
    let tree = match zos_image::build::fetch_kernel(&cache, &pkg) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("SKIP: image_iso boot: kernel {pkg}: {e}");
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
        eprintln!("SKIP: image_iso boot: no vmlinuz in {}", tree.display());
    }
    v
}

/// A tiny initramfs: busybox-static and an /init that prints the command line and the
/// overlay's file, then powers off.
fn tiny_initramfs(out: &Path) {
    let mut w = zos_image::cpio::Writer::new(std::fs::File::create(out).unwrap());
    for d in ["bin", "dev", "proc", "etc"] {
        w.dir(d, 0o755).unwrap();
    }
    w.char_dev("dev/console", 0o600, 5, 1).unwrap();
    w.file(
        "bin/busybox",
        0o755,
        &std::fs::read("/bin/busybox").unwrap(),
    )
    .unwrap();
    let init = "#!/bin/busybox sh\n\
        /bin/busybox mount -t proc proc /proc\n\
        /bin/busybox echo \"ISO-INIT cmdline: $(/bin/busybox cat /proc/cmdline)\"\n\
        /bin/busybox echo \"ISO-INIT overlay: $(/bin/busybox cat /etc/iso-overlay)\"\n\
        /bin/busybox poweroff -f\n";
    w.file("init", 0o755, init.as_bytes()).unwrap();
    w.finish().unwrap();
}

fn overlay(out: &Path) {
    let mut w = zos_image::cpio::Writer::new(std::fs::File::create(out).unwrap());
    w.dir("etc", 0o755).unwrap();
    w.file("etc/iso-overlay", 0o644, b"site-overlay-loaded")
        .unwrap();
    w.finish().unwrap();
}

/// Boots `iso` with `firmware` args; the console once QEMU exits (or the deadline passes).
fn boot(
    dir: &Path,
    name: &str,
    iso: &Path,
    firmware: &[String],
    within: Duration,
) -> (String, Duration) {
    let console = dir.join(format!("{name}.log"));
    let start = Instant::now();
    let mut child = common::Proc(
        Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-cpu", "max", "-m", "512"])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .args(firmware)
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-cdrom")
            .arg(iso)
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

#[test]
fn iso_boots_bios_isolinux_and_uefi_grub_under_qemu() {
    if !iso_tools() {
        return;
    }
    if !have("qemu-system-x86_64") {
        eprintln!("SKIP: image_iso boot: no qemu-system-x86_64");
        return;
    }
    let bb = std::fs::read("/bin/busybox").unwrap_or_default();
    // a static busybox has no PT_INTERP: "/lib64/ld-linux" would be in a dynamic one
    if bb.is_empty() || bb.windows(15).any(|w| w == b"/lib64/ld-linux") {
        eprintln!("SKIP: image_iso boot: needs busybox-static at /bin/busybox");
        return;
    }
    let Some(vmlinuz) = kernel() else { return };
    let dir = TempDir::new();
    let img = dir.0.join("image");
    std::fs::create_dir_all(&img).unwrap();
    std::fs::copy(&vmlinuz, img.join("vmlinuz")).unwrap();
    tiny_initramfs(&img.join("initramfs.cpio"));
    overlay(&dir.0.join("site.cpio"));
    let iso = dir.0.join("zos.iso");
    let o = zos(&[
        "image",
        "iso",
        "-o",
        iso.to_str().unwrap(),
        "--image",
        img.to_str().unwrap(),
        "--overlay",
        dir.0.join("site.cpio").to_str().unwrap(),
        "--cmdline",
        "zos.isotest=marker-42",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let efi = String::from_utf8_lossy(&o.stdout).contains("UEFI (GRUB)");

    let check = |name: &str, console: &str, loader: &str, took: Duration| {
        assert!(
            console.contains(loader),
            "{name}: no {loader} on the console:\n{console}"
        );
        let cmd = console
            .lines()
            .find(|l| l.contains("ISO-INIT cmdline:"))
            .unwrap_or_else(|| panic!("{name}: /init never ran:\n{console}"));
        assert!(
            cmd.contains("zos.isotest=marker-42") && cmd.contains("console=ttyS0"),
            "{cmd}"
        );
        assert!(
            console.contains("ISO-INIT overlay: site-overlay-loaded"),
            "{name}: the overlay was not loaded:\n{console}"
        );
        assert!(
            console.contains("reboot: Power down"),
            "{name}: no clean power-off:\n{console}"
        );
        eprintln!(
            "image_iso: {name} boot → /init → power off in {:.1} s (TCG)",
            took.as_secs_f64()
        );
    };
    let (console, took) = boot(
        &dir.0,
        "bios",
        &iso,
        &["-M".into(), "pc".into()],
        Duration::from_secs(120),
    );
    check("BIOS", &console, "ISOLINUX", took);

    let code = Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd");
    let vars = Path::new("/usr/share/OVMF/OVMF_VARS_4M.fd");
    if !efi {
        eprintln!(
            "SKIP: image_iso UEFI boot: the ISO has no UEFI entry (apt-get install grub-common grub-efi-amd64-bin)"
        );
        return;
    }
    if !code.is_file() || !vars.is_file() {
        eprintln!("SKIP: image_iso UEFI boot: no OVMF (apt-get install ovmf)");
        return;
    }
    let my_vars = dir.0.join("vars.fd");
    std::fs::copy(vars, &my_vars).unwrap();
    let fw = vec![
        "-M".to_string(),
        "q35".into(),
        "-drive".into(),
        format!("if=pflash,format=raw,readonly=on,file={}", code.display()),
        "-drive".into(),
        format!("if=pflash,format=raw,file={}", my_vars.display()),
    ];
    let (console, took) = boot(&dir.0, "uefi", &iso, &fw, Duration::from_secs(120));
    check("UEFI", &console, "GRUB", took);
}
