//! `zos image pxe`: the directory a network boot server serves (TFTP root, or an HTTP
//! directory for iPXE): the kernel, the initramfs and a site overlay (loaded in that order),
//! an iPXE script with the node's kernel command line, and, when Debian's `pxelinux` and
//! `syslinux-common` are installed, PXELINUX for plain PXE ROMs.
//!
//! Which file the DHCP server names as the boot file: `boot.ipxe` for iPXE clients (iPXE ROMs
//! such as QEMU's, or iPXE chainloaded), `pxelinux.0` for plain PXE ROMs (docs/image.md).

use std::path::{Path, PathBuf};

use crate::build::BuildError;

/// The iPXE script's name.
pub const IPXE_SCRIPT: &str = "boot.ipxe";
/// PXELINUX's name in the served directory.
pub const PXELINUX: &str = "pxelinux.0";

const PXELINUX_BIN: &[&str] = &[
    "/usr/lib/PXELINUX/pxelinux.0",
    "/usr/share/syslinux/pxelinux.0",
];
const LDLINUX_C32: &[&str] = &[
    "/usr/lib/syslinux/modules/bios/ldlinux.c32",
    "/usr/share/syslinux/ldlinux.c32",
];

/// What to serve.
#[derive(Debug, Clone)]
pub struct PxeOptions {
    /// The directory to write (created when missing).
    pub out: PathBuf,
    /// The kernel (bzImage).
    pub vmlinuz: PathBuf,
    /// Initramfs archives, loaded in order (the image's, then a site overlay).
    pub initrds: Vec<PathBuf>,
    /// The kernel command line.
    pub cmdline: String,
    /// Where iPXE fetches the files from (e.g. `http://boot.lan/zos/`); `None`: next to the
    /// script (its own URL, so TFTP when the script came over TFTP).
    pub http_base: Option<String>,
    /// Add PXELINUX: `Some(true)` requires it, `Some(false)` leaves it out, `None` adds it
    /// when installed.
    pub pxelinux: Option<bool>,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PxeBuilt {
    /// Files written, relative to the directory, in the order a client loads them.
    pub files: Vec<String>,
    /// Whether PXELINUX is there.
    pub pxelinux: bool,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

/// Why `cmdline` cannot go into a boot script, if it cannot. A line break would end the
/// `APPEND`/`kernel` line and start a command of the server's choosing in the loader; iPXE also
/// expands `${…}` settings and treats `||`/`&&` as its own operators.
pub fn check_cmdline(cmdline: &str) -> Result<(), BuildError> {
    if let Some(c) = cmdline.chars().find(|c| c.is_control()) {
        return Err(BuildError::Tool(format!(
            "the kernel command line has a control character {c:?}: refused"
        )));
    }
    for bad in ["${", "||", "&&"] {
        if cmdline.contains(bad) {
            return Err(BuildError::Tool(format!(
                "the kernel command line has {bad:?}, which iPXE's script language would \
                 interpret: refused"
            )));
        }
    }
    Ok(())
}

/// `base` as a prefix for file names: `http(s)://` or `tftp://`, no spaces, ends with `/`.
fn url_base(base: &str) -> Result<String, BuildError> {
    let ok_scheme = ["http://", "https://", "tftp://"]
        .iter()
        .any(|s| base.starts_with(s));
    if !ok_scheme
        || base.chars().any(|c| c.is_control() || c.is_whitespace())
        || base.contains("${")
    {
        return Err(BuildError::Tool(format!(
            "--http-base {base:?}: want an http://, https:// or tftp:// URL without spaces"
        )));
    }
    Ok(if base.ends_with('/') {
        base.to_string()
    } else {
        format!("{base}/")
    })
}

/// The iPXE script: the kernel with the command line, each initrd in order, boot. File names
/// are relative to the script's own URL unless `base` is given.
pub fn ipxe_script(base: &str, initrds: &[String], cmdline: &str) -> String {
    let mut s = format!("#!ipxe\nkernel {base}vmlinuz {}\n", cmdline.trim());
    for i in initrds {
        s.push_str(&format!("initrd {base}{i}\n"));
    }
    s.push_str("boot\n");
    s
}

/// `pxelinux.cfg/default`: boot straight into the kernel, console on the serial port too.
/// PXELINUX loads the initrds in the order named and the kernel sees them concatenated.
pub fn pxelinux_cfg(initrds: &[String], cmdline: &str) -> String {
    format!(
        "SERIAL 0 115200\nDEFAULT zos\nPROMPT 0\nTIMEOUT 0\nLABEL zos\n  KERNEL vmlinuz\n  APPEND initrd={} {}\n",
        initrds.join(","),
        cmdline.trim()
    )
}

fn first_existing(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// A copy (not a hard link: a rebuilt image or an upgraded package must not change what a
/// server is sending), through a temporary name, so a client never fetches half a file.
fn put(src: &Path, dir: &Path, name: &str) -> Result<(), BuildError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::copy(src, &tmp).map_err(io(format!("copying {}", src.display())))?;
    std::fs::rename(&tmp, dir.join(name)).map_err(io(format!("placing {name}")))
}

fn write(dir: &Path, name: &str, text: &str) -> Result<(), BuildError> {
    let tmp = dir.join(format!(".{}.tmp", name.replace('/', "_")));
    std::fs::write(&tmp, text).map_err(io(format!("writing {name}")))?;
    std::fs::rename(&tmp, dir.join(name)).map_err(io(format!("placing {name}")))
}

/// Writes the served directory.
pub fn pxe_dir(o: &PxeOptions) -> Result<PxeBuilt, BuildError> {
    check_cmdline(&o.cmdline)?;
    let base = o.http_base.as_deref().map(url_base).transpose()?;
    // Everything checked before the first write: a failed run leaves the directory as it was.
    for f in std::iter::once(&o.vmlinuz).chain(&o.initrds) {
        if !f.is_file() {
            return Err(BuildError::Tool(format!("{}: not a file", f.display())));
        }
    }
    let loaders = match (
        first_existing(PXELINUX_BIN),
        first_existing(LDLINUX_C32),
        o.pxelinux,
    ) {
        (_, _, Some(false)) => None,
        (Some(p), Some(l), _) => Some((p, l)),
        (_, _, Some(true)) => {
            return Err(BuildError::Tool(
                "pxelinux.0 or ldlinux.c32 not found (apt-get install pxelinux syslinux-common)"
                    .into(),
            ));
        }
        _ => None,
    };

    std::fs::create_dir_all(&o.out).map_err(io(format!("creating {}", o.out.display())))?;
    let mut files = vec![IPXE_SCRIPT.to_string(), "vmlinuz".to_string()];
    put(&o.vmlinuz, &o.out, "vmlinuz")?;
    let mut initrds = Vec::new();
    for (n, i) in o.initrds.iter().enumerate() {
        let name = format!("initrd{n}.img");
        put(i, &o.out, &name)?;
        initrds.push(name);
    }
    // Left from an earlier run with more archives: a stale overlay must not be served.
    for n in o.initrds.len()..16 {
        let _ = std::fs::remove_file(o.out.join(format!("initrd{n}.img")));
    }
    files.extend(initrds.iter().cloned());
    write(
        &o.out,
        IPXE_SCRIPT,
        &ipxe_script(base.as_deref().unwrap_or(""), &initrds, &o.cmdline),
    )?;
    let pxelinux = loaders.is_some();
    if !pxelinux {
        // From an earlier run: PXELINUX's config would boot the old command line.
        for f in [PXELINUX, "ldlinux.c32", "pxelinux.cfg/default"] {
            let _ = std::fs::remove_file(o.out.join(f));
        }
        let _ = std::fs::remove_dir(o.out.join("pxelinux.cfg"));
    }
    if let Some((pxe, ldlinux)) = loaders {
        let cfg_dir = o.out.join("pxelinux.cfg");
        std::fs::create_dir_all(&cfg_dir).map_err(io("creating pxelinux.cfg"))?;
        put(&pxe, &o.out, PXELINUX)?;
        put(&ldlinux, &o.out, "ldlinux.c32")?;
        write(
            &o.out,
            "pxelinux.cfg/default",
            &pxelinux_cfg(&initrds, &o.cmdline),
        )?;
        files.extend([
            PXELINUX.to_string(),
            "ldlinux.c32".into(),
            "pxelinux.cfg/default".into(),
        ]);
    }
    Ok(PxeBuilt { files, pxelinux })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn scripts_name_every_initrd_in_order_and_the_command_line() {
        let i = vec!["initrd0.img".to_string(), "initrd1.img".into()];
        let s = ipxe_script("", &i, " console=ttyS0 farmer_id=1 ");
        assert_eq!(
            s,
            "#!ipxe\nkernel vmlinuz console=ttyS0 farmer_id=1\ninitrd initrd0.img\ninitrd initrd1.img\nboot\n"
        );
        let base = url_base("http://10.0.0.1/zos").unwrap();
        let s = ipxe_script(&base, &i, "x=1");
        assert!(
            s.contains("kernel http://10.0.0.1/zos/vmlinuz x=1\n"),
            "{s}"
        );
        assert!(
            s.contains("initrd http://10.0.0.1/zos/initrd1.img\n"),
            "{s}"
        );
        let c = pxelinux_cfg(&i, "farmer_id=1");
        assert!(c.contains("KERNEL vmlinuz\n"), "{c}");
        assert!(
            c.contains("APPEND initrd=initrd0.img,initrd1.img farmer_id=1\n"),
            "{c}"
        );
    }

    #[test]
    fn every_medium_gets_the_same_prefix() {
        use crate::cmdline::{BOOT_PREFIX, boot_cmdline};
        assert_eq!(boot_cmdline("  "), BOOT_PREFIX);
        assert_eq!(
            boot_cmdline(" farmer_id=1 "),
            "console=ttyS0 panic=-1 quiet farmer_id=1"
        );
    }

    #[test]
    fn what_a_loader_would_interpret_is_refused() {
        assert!(check_cmdline("farmer_id=1 ledger=https://10.0.2.2:8900").is_ok());
        for bad in [
            "a=1\nboot",
            "a=1\rb",
            "a=${net0/ip}",
            "a=1 || shell",
            "a && b",
        ] {
            assert!(check_cmdline(bad).is_err(), "{bad:?}");
        }
        for bad in ["ftp://x/", "http://a b/", "/srv/tftp", "http://x/${y}"] {
            assert!(url_base(bad).is_err(), "{bad:?}");
        }
        assert_eq!(url_base("tftp://10.0.2.2/").unwrap(), "tftp://10.0.2.2/");
    }

    #[test]
    fn a_missing_kernel_writes_nothing() {
        let dir = std::env::temp_dir().join(format!("zos-pxe-unit-{}", std::process::id()));
        let o = PxeOptions {
            out: dir.join("out"),
            vmlinuz: dir.join("no-such-vmlinuz"),
            initrds: vec![],
            cmdline: String::new(),
            http_base: None,
            pxelinux: Some(false),
        };
        let e = pxe_dir(&o).unwrap_err().to_string();
        assert!(e.contains("no-such-vmlinuz"), "{e}");
        assert!(!o.out.exists());
    }
}
