//! `zos image iso`: the ISO holds the kernel, the initramfs, the overlay (in load order) and the
//! command line in ISOLINUX's configuration, and is El Torito bootable (BIOS; UEFI when GRUB's
//! EFI modules are installed) — checked with xorriso on small stand-in files. Then a real boot
//! under QEMU (TCG): SeaBIOS → ISOLINUX → the Debian kernel → a tiny /init (`common/tiny_boot.rs`:
//! busybox-static, a test fixture only, never in the zos image) that prints the kernel command line and the
//! overlay's file and powers off; the same through OVMF → GRUB when OVMF is installed.
//! Tools missing → a loud SKIP.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::TempDir;
#[path = "common/tiny_boot.rs"]
mod tiny_boot;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

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

/// Boots `iso` with `firmware` args; the console once QEMU exits (or the deadline passes).
fn boot(
    dir: &Path,
    name: &str,
    iso: &Path,
    firmware: &[String],
    within: Duration,
) -> (String, Duration) {
    let mut args = firmware.to_vec();
    args.extend(["-cdrom".to_string(), iso.display().to_string()]);
    tiny_boot::qemu(dir, name, &args, within)
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
    if !tiny_boot::busybox_static("image_iso boot") {
        return;
    }
    let Some(vmlinuz) = tiny_boot::kernel("image_iso boot") else {
        return;
    };
    let dir = TempDir::new();
    let img = tiny_boot::image_dir(&dir.0, &vmlinuz);
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
            .find(|l| l.contains(tiny_boot::CMDLINE_LINE))
            .unwrap_or_else(|| panic!("{name}: /init never ran:\n{console}"));
        assert!(
            cmd.contains("zos.isotest=marker-42") && cmd.contains("console=ttyS0"),
            "{cmd}"
        );
        assert!(
            console.contains(tiny_boot::OVERLAY_LOADED),
            "{name}: the overlay was not loaded:\n{console}"
        );
        assert!(
            console.contains(tiny_boot::POWER_DOWN),
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
