//! `zos image iso`: a bootable ISO 9660 image (CD, virtual media of a BMC, or written to a USB
//! stick: it is isohybrid) with the kernel, the initramfs, a site overlay and the node's kernel
//! command line. BIOS boots it through ISOLINUX (El Torito, no emulation); when GRUB's EFI
//! modules are installed, a second El Torito entry holds a FAT image with a standalone GRUB
//! for UEFI firmware.
//!
//! Needs `xorriso` and ISOLINUX (`apt-get install xorriso isolinux syslinux-common`); EFI
//! also `grub-mkstandalone` (`grub-common`, `grub-efi-amd64-bin`), `mkfs.vfat` and `mtools`.
//! The ISO is read-only, so it cannot keep the node's key root: boot it with a FAT stick
//! labelled `ZOSBOOT` (`zos image usb`) or accept a key root in memory (docs/image.md).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::build::BuildError;

/// The ISO's volume id.
pub const VOLUME_ID: &str = "ZOS";
/// Where the boot files live in the ISO.
pub const ZOS_DIR: &str = "zos";

const ISOLINUX_BIN: &[&str] = &[
    "/usr/lib/ISOLINUX/isolinux.bin",
    "/usr/lib/syslinux/isolinux.bin",
    "/usr/share/syslinux/isolinux.bin",
];
const LDLINUX_C32: &[&str] = &[
    "/usr/lib/syslinux/modules/bios/ldlinux.c32",
    "/usr/share/syslinux/ldlinux.c32",
];
const ISOHYBRID_MBR: &[&str] = &[
    "/usr/lib/ISOLINUX/isohdpfx.bin",
    "/usr/lib/syslinux/mbr/isohdpfx.bin",
    "/usr/share/syslinux/isohdpfx.bin",
];
const GRUB_EFI_MODULES: &str = "/usr/lib/grub/x86_64-efi";

/// What to put on the ISO.
#[derive(Debug, Clone)]
pub struct IsoOptions {
    /// The ISO file to write.
    pub out: PathBuf,
    /// The kernel (bzImage).
    pub vmlinuz: PathBuf,
    /// Initramfs archives, loaded in order (the image's, then a site overlay).
    pub initrds: Vec<PathBuf>,
    /// The kernel command line.
    pub cmdline: String,
    /// Add the UEFI boot entry: `Some(true)` requires it, `Some(false)` leaves it out, `None`
    /// adds it when GRUB's EFI modules are installed.
    pub efi: Option<bool>,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoBuilt {
    /// Size of the ISO in bytes.
    pub bytes: u64,
    /// Whether it has the UEFI boot entry.
    pub efi: bool,
    /// The initrd paths inside the ISO, in load order.
    pub initrds: Vec<String>,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

fn run(cmd: &mut Command) -> Result<(), BuildError> {
    let out = cmd
        .output()
        .map_err(|e| BuildError::Tool(format!("{:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(BuildError::Tool(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn first_existing(candidates: &[&str], what: &str) -> Result<PathBuf, BuildError> {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            BuildError::Tool(format!(
                "{what} not found in {candidates:?} (apt-get install xorriso isolinux syslinux-common)"
            ))
        })
}

fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
}

/// The ISOLINUX configuration: boot straight into the kernel, console on the serial port too.
pub fn isolinux_cfg(initrds: &[String], cmdline: &str) -> String {
    format!(
        "SERIAL 0 115200\nDEFAULT zos\nPROMPT 0\nTIMEOUT 0\nLABEL zos\n  KERNEL /{ZOS_DIR}/vmlinuz\n  APPEND initrd={} {}\n",
        initrds.join(","),
        cmdline.trim()
    )
}

/// The GRUB configuration built into the EFI loader: it finds the ISO by its kernel's path.
pub fn grub_cfg(initrds: &[String], cmdline: &str) -> String {
    format!(
        "set timeout=0\ninsmod all_video\nserial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\n\
         search --no-floppy --set=root --file /{ZOS_DIR}/vmlinuz\n\
         linux /{ZOS_DIR}/vmlinuz {}\ninitrd {}\nboot\n",
        cmdline.trim(),
        initrds.join(" ")
    )
}

/// A temporary directory next to the output, removed on drop (also on errors).
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the ISO.
pub fn iso_image(o: &IsoOptions) -> Result<IsoBuilt, BuildError> {
    if !have("xorriso") {
        return Err(BuildError::Tool(
            "xorriso not found (apt-get install xorriso isolinux syslinux-common)".into(),
        ));
    }
    let isolinux = first_existing(ISOLINUX_BIN, "isolinux.bin")?;
    let ldlinux = first_existing(LDLINUX_C32, "ldlinux.c32")?;
    let mbr = first_existing(ISOHYBRID_MBR, "isohdpfx.bin")?;
    let efi_tools = Path::new(GRUB_EFI_MODULES).is_dir()
        && ["grub-mkstandalone", "mkfs.vfat", "mmd", "mcopy"]
            .iter()
            .all(|t| have(t));
    let efi = match o.efi {
        Some(true) if !efi_tools => {
            return Err(BuildError::Tool(
                "EFI boot needs grub-mkstandalone, GRUB's x86_64-efi modules, mkfs.vfat and mtools \
                 (apt-get install grub-common grub-efi-amd64-bin dosfstools mtools)"
                    .into(),
            ));
        }
        Some(e) => e,
        None => efi_tools,
    };

    let name = o
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "zos.iso".into());
    let stage = Staging(o.out.with_file_name(format!(".{name}.staging")));
    let _ = std::fs::remove_dir_all(&stage.0);
    let root = stage.0.join("root");
    let zos = root.join(ZOS_DIR);
    let boot = root.join("isolinux");
    for d in [&zos, &boot] {
        std::fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
    }
    // Hard links where the filesystem allows (the initramfs can be 150 MiB), copies otherwise.
    let put = |src: &Path, dst: &Path| -> Result<(), BuildError> {
        if std::fs::hard_link(src, dst).is_err() {
            std::fs::copy(src, dst).map_err(io(format!("copying {}", src.display())))?;
        }
        Ok(())
    };
    put(&o.vmlinuz, &zos.join("vmlinuz"))?;
    let mut initrds = Vec::new();
    for (n, i) in o.initrds.iter().enumerate() {
        let file = format!("initrd{n}.img");
        put(i, &zos.join(&file))?;
        initrds.push(format!("/{ZOS_DIR}/{file}"));
    }
    // isolinux.bin is patched in place by -boot-info-table: always a private copy.
    std::fs::copy(&isolinux, boot.join("isolinux.bin")).map_err(io("copying isolinux.bin"))?;
    std::fs::copy(&ldlinux, boot.join("ldlinux.c32")).map_err(io("copying ldlinux.c32"))?;
    std::fs::write(
        boot.join("isolinux.cfg"),
        isolinux_cfg(&initrds, &o.cmdline),
    )
    .map_err(io("writing isolinux.cfg"))?;

    let mut x = Command::new("xorriso");
    x.args(["-as", "mkisofs", "-quiet", "-iso-level", "3", "-R", "-J"])
        .args(["-V", VOLUME_ID])
        .arg("-isohybrid-mbr")
        .arg(&mbr)
        .args(["-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat"])
        .args(["-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"]);
    if efi {
        let img = efi_image(&stage.0, &initrds, &o.cmdline)?;
        let dst = boot.join("efiboot.img");
        std::fs::rename(&img, &dst).map_err(io("placing efiboot.img"))?;
        x.args(["-eltorito-alt-boot", "-e", "isolinux/efiboot.img"])
            .args(["-no-emul-boot", "-isohybrid-gpt-basdat"]);
    }
    let _ = std::fs::remove_file(&o.out);
    x.arg("-o").arg(&o.out).arg(&root);
    run(&mut x)?;
    let bytes = std::fs::metadata(&o.out)
        .map_err(io(format!("{}", o.out.display())))?
        .len();
    Ok(IsoBuilt {
        bytes,
        efi,
        initrds,
    })
}

/// A FAT image with `EFI/BOOT/BOOTX64.EFI`: GRUB with its configuration built in.
fn efi_image(stage: &Path, initrds: &[String], cmdline: &str) -> Result<PathBuf, BuildError> {
    let cfg = stage.join("grub.cfg");
    std::fs::write(&cfg, grub_cfg(initrds, cmdline)).map_err(io("writing grub.cfg"))?;
    let efi = stage.join("BOOTX64.EFI");
    run(Command::new("grub-mkstandalone")
        .args(["-O", "x86_64-efi", "--locales=", "--fonts=", "--themes="])
        .args([
            "--install-modules=linux normal search search_fs_file iso9660 part_msdos part_gpt fat \
             serial terminal configfile echo all_video",
        ])
        .arg("--modules=iso9660 search_fs_file serial")
        .arg("-o")
        .arg(&efi)
        .arg(format!("boot/grub/grub.cfg={}", cfg.display())))?;
    let size = std::fs::metadata(&efi).map_err(io("BOOTX64.EFI"))?.len();
    let img = stage.join("efiboot.img");
    // FAT12/16 overhead and a margin; mkfs.vfat wants whole KiB blocks.
    let kib = (size + (512 << 10)).div_ceil(1024);
    let f = std::fs::File::create(&img).map_err(io("creating efiboot.img"))?;
    f.set_len(kib * 1024).map_err(io("sizing efiboot.img"))?;
    drop(f);
    run(Command::new("mkfs.vfat").args(["-n", "ZOSEFI"]).arg(&img))?;
    run(Command::new("mmd")
        .arg("-i")
        .arg(&img)
        .args(["::EFI", "::EFI/BOOT"]))?;
    run(Command::new("mcopy")
        .arg("-i")
        .arg(&img)
        .arg(&efi)
        .arg("::EFI/BOOT/BOOTX64.EFI"))?;
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_name_every_initrd_in_order_and_the_command_line() {
        let i = vec!["/zos/initrd0.img".to_string(), "/zos/initrd1.img".into()];
        let c = isolinux_cfg(&i, " farmer_id=1 runmode=dev ");
        assert!(c.contains("KERNEL /zos/vmlinuz\n"), "{c}");
        assert!(
            c.contains("APPEND initrd=/zos/initrd0.img,/zos/initrd1.img farmer_id=1 runmode=dev\n"),
            "{c}"
        );
        let g = grub_cfg(&i, "farmer_id=1");
        assert!(g.contains("linux /zos/vmlinuz farmer_id=1\n"), "{g}");
        assert!(
            g.contains("initrd /zos/initrd0.img /zos/initrd1.img\n"),
            "{g}"
        );
    }
}
