//! `zos image pxe`: the served directory holds the kernel, the initramfs and the overlay byte
//! for byte, `boot.ipxe` and `pxelinux.cfg/default` name them in load order with the command
//! line; bad input is refused before anything is written. Then real network boots under QEMU
//! (TCG), kept inside QEMU's user network (`restrict=on`: the guest reaches only QEMU's own
//! DHCP and TFTP servers): SeaBIOS → the iPXE ROM (Debian's ipxe-qemu) → DHCP (boot file
//! `boot.ipxe`) → TFTP → the Debian kernel → a tiny /init (`common/tiny_boot.rs`) that prints the
//! command line and the overlay's file and powers off; and the same with `pxelinux.0` as the boot
//! file (iPXE as the plain PXE ROM under PXELINUX). Tools missing → a loud SKIP.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::TempDir;
#[path = "common/tiny_boot.rs"]
mod tiny_boot;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// QEMU's virtio-net iPXE ROM (BIOS) from Debian's ipxe-qemu.
const IPXE_ROM: &str = "/usr/lib/ipxe/qemu/pxe-virtio.rom";

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

fn pxelinux_installed() -> bool {
    Path::new("/usr/lib/PXELINUX/pxelinux.0").is_file()
        && Path::new("/usr/lib/syslinux/modules/bios/ldlinux.c32").is_file()
}

fn pxe(out: &Path, img: &Path, overlay: Option<&Path>, extra: &[&str]) -> Output {
    let mut a = vec![
        "image".to_string(),
        "pxe".into(),
        "-o".into(),
        out.display().to_string(),
        "--image".into(),
        img.display().to_string(),
    ];
    if let Some(o) = overlay {
        a.extend(["--overlay".into(), o.display().to_string()]);
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    zos(&a.iter().map(String::as_str).collect::<Vec<_>>())
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
fn pxe_dir_serves_kernel_initrds_in_order_and_the_command_line() {
    let dir = TempDir::new();
    let img = fake_image(&dir.0);
    let site = dir.0.join("site.cpio");
    let srv = dir.0.join("srv");
    let cmdline = "farmer_id=7 runmode=dev ledger=https://10.0.2.2:8900";
    let o = pxe(&srv, &img, Some(&site), &["--cmdline", cmdline]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("DHCP boot file: boot.ipxe"), "{said}");

    let read = |p: &str| std::fs::read(srv.join(p)).unwrap();
    assert_eq!(read("vmlinuz"), std::fs::read(img.join("vmlinuz")).unwrap());
    assert_eq!(
        read("initrd0.img"),
        std::fs::read(img.join("initramfs.cpio")).unwrap()
    );
    assert_eq!(read("initrd1.img"), std::fs::read(&site).unwrap());
    let full = format!("console=ttyS0 panic=-1 quiet {cmdline}");
    assert_eq!(
        String::from_utf8(read("boot.ipxe")).unwrap(),
        format!("#!ipxe\nkernel vmlinuz {full}\ninitrd initrd0.img\ninitrd initrd1.img\nboot\n")
    );
    if pxelinux_installed() {
        assert!(said.contains("pxelinux.0 for plain PXE ROMs"), "{said}");
        assert_eq!(
            read("pxelinux.0"),
            std::fs::read("/usr/lib/PXELINUX/pxelinux.0").unwrap()
        );
        assert!(srv.join("ldlinux.c32").is_file());
        let cfg = String::from_utf8(read("pxelinux.cfg/default")).unwrap();
        assert!(cfg.contains("KERNEL vmlinuz\n"), "{cfg}");
        assert!(
            cfg.contains(&format!("APPEND initrd=initrd0.img,initrd1.img {full}\n")),
            "{cfg}"
        );
    } else {
        eprintln!(
            "SKIP: image_pxe: PXELINUX files not checked (apt-get install pxelinux syslinux-common)"
        );
        assert!(said.contains("no pxelinux"), "{said}");
    }

    // again without the overlay, iPXE only, files over HTTP: the stale overlay is gone
    let o = pxe(
        &srv,
        &img,
        None,
        &["--no-pxelinux", "--http-base", "http://boot.lan/zos"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!srv.join("initrd1.img").exists());
    // nor a PXELINUX config naming the old command line and overlay
    for f in ["pxelinux.0", "ldlinux.c32", "pxelinux.cfg"] {
        assert!(!srv.join(f).exists(), "{f} left from the first run");
    }
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("pxelinux"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(
        String::from_utf8(read("boot.ipxe")).unwrap(),
        "#!ipxe\nkernel http://boot.lan/zos/vmlinuz console=ttyS0 panic=-1 quiet\n\
         initrd http://boot.lan/zos/initrd0.img\nboot\n"
    );

    // refused before anything is written: a line break (it would be a loader command of its
    // own), an iPXE setting, a URL that is not one, a missing kernel
    let fresh = dir.0.join("fresh");
    for (args, why) in [
        (vec!["--cmdline", "a=1\nboot"], "control character"),
        (vec!["--cmdline", "a=${net0/mac}"], "iPXE"),
        (vec!["--http-base", "/srv/tftp"], "--http-base"),
    ] {
        let o = pxe(&fresh, &img, None, &args);
        assert!(!o.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(why), "{args:?}: {err}");
        assert!(!fresh.exists(), "{args:?} wrote {}", fresh.display());
    }
    std::fs::remove_file(img.join("vmlinuz")).unwrap();
    let o = pxe(&fresh, &img, None, &[]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("vmlinuz"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!fresh.exists());
}

/// One network boot: QEMU's DHCP names `bootfile`, its TFTP server serves `srv`.
fn net_boot(dir: &Path, srv: &Path, bootfile: &str) -> (String, Duration) {
    let args = vec![
        "-M".to_string(),
        "pc".into(),
        "-netdev".into(),
        // restrict=on: no packet leaves QEMU; its DHCP and TFTP servers still answer
        format!(
            "user,id=n0,restrict=on,tftp={},bootfile={bootfile}",
            srv.display()
        ),
        "-device".into(),
        // modern-only virtio: the ROM's PCI id is 1af4:1041 and SeaBIOS runs a ROM only on
        // the device it names
        format!("virtio-net-pci,disable-legacy=on,netdev=n0,romfile={IPXE_ROM}"),
        "-boot".into(),
        "n".into(),
    ];
    tiny_boot::qemu(dir, bootfile, &args, Duration::from_secs(90))
}

#[test]
fn pxe_boots_over_qemu_user_network_with_ipxe_and_pxelinux() {
    let test = "image_pxe boot";
    if !have("qemu-system-x86_64") {
        eprintln!("SKIP: {test}: no qemu-system-x86_64 (apt-get install qemu-system-x86)");
        return;
    }
    if !Path::new(IPXE_ROM).is_file() {
        eprintln!("SKIP: {test}: no iPXE ROM at {IPXE_ROM} (apt-get install ipxe-qemu)");
        return;
    }
    if !tiny_boot::busybox_static(test) {
        return;
    }
    let Some(vmlinuz) = tiny_boot::kernel(test) else {
        return;
    };
    let start = Instant::now();
    let dir = TempDir::new();
    let img = tiny_boot::image_dir(&dir.0, &vmlinuz);
    let srv = dir.0.join("srv");
    let marker = format!("zos.pxetest=m{}", std::process::id());
    let o = pxe(
        &srv,
        &img,
        Some(&dir.0.join("site.cpio")),
        &["--cmdline", &marker],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let with_pxelinux = srv.join("pxelinux.0").is_file();
    if !with_pxelinux {
        eprintln!(
            "SKIP: {test} through PXELINUX: not installed (apt-get install pxelinux syslinux-common)"
        );
    }

    // Both boots at once: each is one mostly single-threaded TCG guest.
    let boots: Vec<_> = ["boot.ipxe", "pxelinux.0"]
        .into_iter()
        .filter(|b| *b == "boot.ipxe" || with_pxelinux)
        .map(|b| {
            let (d, s) = (dir.0.clone(), srv.clone());
            (b, std::thread::spawn(move || net_boot(&d, &s, b)))
        })
        .collect();
    for (bootfile, h) in boots {
        let (console, took) = h.join().unwrap();
        let cmd = console
            .lines()
            .find(|l| l.contains(tiny_boot::CMDLINE_LINE))
            .unwrap_or_else(|| panic!("{bootfile}: /init never ran:\n{console}"));
        assert!(
            cmd.contains(&format!("console=ttyS0 panic=-1 quiet {marker}")),
            "{bootfile}: {cmd}"
        );
        if bootfile == "pxelinux.0" {
            assert!(console.contains("PXELINUX"), "{console}");
            assert!(cmd.contains("initrd=initrd0.img,initrd1.img"), "{cmd}");
        }
        assert!(
            console.contains(tiny_boot::OVERLAY_LOADED),
            "{bootfile}: the overlay was not loaded after the initramfs:\n{console}"
        );
        assert!(
            console.contains(tiny_boot::POWER_DOWN),
            "{bootfile}: no clean power-off:\n{console}"
        );
        eprintln!(
            "image_pxe: {bootfile}: DHCP → TFTP → kernel → /init → power off in {:.1} s (TCG)",
            took.as_secs_f64()
        );
    }
    eprintln!(
        "image_pxe: network boots done in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}
