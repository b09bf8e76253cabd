//! `zos image build|ls|overlay` and zos as PID 1 (`/init` of the image): thin wrappers over
//! `zos-image`; the node itself runs as `zos node run` in a child process.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use zos_image::{bootstrap, cmdline, init};

/// Image commands.
#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Build the bootable image: DIR/vmlinuz, DIR/vmlinux, DIR/initramfs.cpio (its /init is
    /// zos), DIR/image.json.
    Build(BuildArgs),
    /// List the files of an initramfs (concatenated archives too).
    Ls {
        /// The cpio file.
        file: PathBuf,
    },
    /// Write a bootable USB/disk image (FAT labelled ZOSBOOT, syslinux): the image's kernel and
    /// initramfs, a site overlay, and this node's kernel command line. It is also the boot medium
    /// the node keeps its key root on.
    Usb {
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// The `zos image build` directory.
        #[arg(long)]
        image: PathBuf,
        /// A site overlay (`zos image overlay`) loaded after the initramfs.
        #[arg(long)]
        overlay: Option<PathBuf>,
        /// Kernel command line, e.g. `farmer_id=1 runmode=dev ledger=… relay=…`.
        #[arg(long, default_value = "")]
        cmdline: String,
    },
    /// Write a bootable ISO (isohybrid: also for a USB stick): ISOLINUX for BIOS and, when
    /// GRUB's EFI modules are installed, GRUB for UEFI; the image's kernel and initramfs, a
    /// site overlay, and this node's kernel command line.
    Iso {
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// The `zos image build` directory.
        #[arg(long)]
        image: PathBuf,
        /// A site overlay (`zos image overlay`) loaded after the initramfs.
        #[arg(long)]
        overlay: Option<PathBuf>,
        /// Kernel command line, e.g. `farmer_id=1 runmode=dev ledger=… relay=…`.
        #[arg(long, default_value = "")]
        cmdline: String,
        /// Require the UEFI boot entry (default: added when the tools are installed).
        #[arg(long, conflicts_with = "no_efi")]
        efi: bool,
        /// BIOS boot only.
        #[arg(long)]
        no_efi: bool,
    },
    /// Write what a network boot server serves (TFTP root or HTTP directory): the image's
    /// kernel and initramfs, a site overlay, `boot.ipxe` (the DHCP boot file for iPXE clients)
    /// and, when Debian's pxelinux is installed, `pxelinux.0` (the boot file for plain PXE ROMs).
    Pxe {
        /// Output directory.
        #[arg(short, long)]
        output: PathBuf,
        /// The `zos image build` directory.
        #[arg(long)]
        image: PathBuf,
        /// A site overlay (`zos image overlay`) loaded after the initramfs.
        #[arg(long)]
        overlay: Option<PathBuf>,
        /// Kernel command line, e.g. `farmer_id=1 runmode=dev ledger=… relay=…`.
        #[arg(long, default_value = "")]
        cmdline: String,
        /// Where iPXE fetches the kernel and initrds (e.g. `http://boot.lan/zos/`); default:
        /// next to `boot.ipxe`, over the protocol that fetched it.
        #[arg(long)]
        http_base: Option<String>,
        /// Require PXELINUX (default: added when installed).
        #[arg(long, conflicts_with = "no_pxelinux")]
        pxelinux: bool,
        /// iPXE only.
        #[arg(long)]
        no_pxelinux: bool,
    },
    /// Make a release signing key: FILE gets the seed (hex, owner-only); prints the public key
    /// to pin for a network.
    Keygen {
        /// The key file to write (refuses to overwrite).
        file: PathBuf,
    },
    /// Sign a release bundle (a directory holding the zos binary): writes DIR/release.json.
    Sign {
        /// The bundle directory.
        dir: PathBuf,
        /// Release version, e.g. v2 (`--version` is the binary's own).
        #[arg(long = "release")]
        release: String,
        /// Network: dev, qa, test or main.
        #[arg(long)]
        network: String,
        /// The key file from `zos image keygen`.
        #[arg(long)]
        key: PathBuf,
    },
    /// Verify a release bundle as a node of NETWORK would: signed by a pinned key, every file
    /// as hashed. Exit 1 when refused.
    Verify {
        /// The bundle directory.
        dir: PathBuf,
        /// The node's network.
        #[arg(long)]
        network: String,
        /// Public key (hex) pinned for the network (repeatable).
        #[arg(long = "pin", required = true)]
        pins: Vec<String>,
    },
    /// Publish a signed release bundle on a hub as `zos-<version>.fl` (checked first: its
    /// release.json parses, a signature it carries is valid, every file hashes as listed).
    Publish(super::upgrade::PublishArgs),
    /// Write a small archive to append to the initramfs (`cat initramfs.cpio site.cpio`):
    /// a site's files such as the pinned ledger and relay certificates.
    Overlay {
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// `PATH_IN_IMAGE=HOST_FILE` (repeatable), e.g. `/etc/zos/ledger-cert.pem=cert.pem`.
        #[arg(long = "file", required = true)]
        files: Vec<String>,
    },
}

/// `zos image build` options.
#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Output directory.
    #[arg(short, long)]
    pub output: PathBuf,
    /// The zos binary to put in as /init (build it static:
    /// `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target
    /// x86_64-unknown-linux-gnu`); default: this binary.
    #[arg(long)]
    pub zos: Option<PathBuf>,
    /// Debian kernel package; default: what `linux-image-amd64` depends on.
    #[arg(long)]
    pub kernel_package: Option<String>,
    /// Where the extracted kernel package is cached; default: the user's cache.
    #[arg(long, env = "ZOS_IMAGE_CACHE")]
    pub cache: Option<PathBuf>,
}

fn default_cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("zos")
        .join("image-kernel")
}

/// Runs an image subcommand.
pub fn run(cmd: ImageCmd) -> anyhow::Result<()> {
    match cmd {
        ImageCmd::Build(a) => {
            let zos = match a.zos {
                Some(z) => z,
                None => std::env::current_exe().context("locating this binary")?,
            };
            let opts = zos_image::build::BuildOptions {
                out: a.output.clone(),
                zos,
                cache: a.cache.unwrap_or_else(default_cache),
                kernel_package: a.kernel_package,
            };
            let built = zos_image::build::build(&opts)?;
            let m = &built.manifest;
            println!("zos image in {}", a.output.display());
            println!(
                "  kernel     {} ({})",
                m.kernel_package,
                built.vmlinuz.display()
            );
            if let Some(v) = &built.vmlinux {
                println!("  vmlinux    {} (QEMU PVH boot)", v.display());
            }
            println!(
                "  initramfs  {} ({} MiB, /init {})",
                built.initramfs.display(),
                m.initramfs_bytes >> 20,
                if m.init_static {
                    "static"
                } else {
                    "dynamic: its libraries are copied in"
                }
            );
            println!("  modules    {}", m.modules.join(" "));
            println!("  tools      {}", m.tools.join(" "));
            Ok(())
        }
        ImageCmd::Ls { file } => {
            let b = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            for e in zos_image::cpio::list(&b)? {
                match e.link {
                    Some(l) => println!("{:06o} {:>10} {} -> {l}", e.mode, e.size, e.name),
                    None => println!("{:06o} {:>10} {}", e.mode, e.size, e.name),
                }
            }
            Ok(())
        }
        ImageCmd::Usb {
            output,
            image,
            overlay,
            cmdline,
        } => {
            let mut initrds = vec![image.join("initramfs.cpio")];
            initrds.extend(overlay);
            let cmdline = cmdline::boot_cmdline(&cmdline);
            zos_image::build::usb_image(&output, &image.join("vmlinuz"), &initrds, &cmdline)?;
            println!(
                "{}: boot it from BIOS (syslinux); label ZOSBOOT",
                output.display()
            );
            Ok(())
        }
        ImageCmd::Iso {
            output,
            image,
            overlay,
            cmdline,
            efi,
            no_efi,
        } => {
            let mut initrds = vec![image.join("initramfs.cpio")];
            initrds.extend(overlay);
            let built = zos_image::iso::iso_image(&zos_image::iso::IsoOptions {
                out: output.clone(),
                vmlinuz: image.join("vmlinuz"),
                initrds,
                cmdline: cmdline::boot_cmdline(&cmdline),
                efi: match (efi, no_efi) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                },
            })?;
            println!(
                "{}: {} MiB, boots from BIOS (ISOLINUX){}",
                output.display(),
                built.bytes.div_ceil(1 << 20),
                if built.efi { " and UEFI (GRUB)" } else { "" }
            );
            Ok(())
        }
        ImageCmd::Pxe {
            output,
            image,
            overlay,
            cmdline,
            http_base,
            pxelinux,
            no_pxelinux,
        } => {
            let mut initrds = vec![image.join("initramfs.cpio")];
            initrds.extend(overlay);
            let built = zos_image::pxe::pxe_dir(&zos_image::pxe::PxeOptions {
                out: output.clone(),
                vmlinuz: image.join("vmlinuz"),
                initrds,
                cmdline: cmdline::boot_cmdline(&cmdline),
                http_base,
                pxelinux: match (pxelinux, no_pxelinux) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                },
            })?;
            println!("{}: {}", output.display(), built.files.join(" "));
            println!(
                "  DHCP boot file: {} for iPXE clients{}",
                zos_image::pxe::IPXE_SCRIPT,
                if built.pxelinux {
                    format!(", {} for plain PXE ROMs", zos_image::pxe::PXELINUX)
                } else if no_pxelinux {
                    String::new()
                } else {
                    " (no pxelinux: apt-get install pxelinux syslinux-common)".to_string()
                }
            );
            Ok(())
        }
        ImageCmd::Keygen { file } => {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let seed = zos_image::release::generate_seed();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
                .with_context(|| format!("creating {}", file.display()))?;
            writeln!(f, "{}", hex::encode(seed))?;
            println!("{}", zos_image::release::public_key_hex(&seed));
            Ok(())
        }
        ImageCmd::Sign {
            dir,
            release,
            network,
            key,
        } => {
            let text = std::fs::read_to_string(&key)
                .with_context(|| format!("reading {}", key.display()))?;
            let seed = zos_types::crypto::decode_hex32("--key", text.trim())?;
            let key = zos_image::release::signing_key(&seed);
            let m = zos_image::release::sign_bundle(&dir, &release, &network, &key)?;
            println!(
                "signed {} for {}: content {}",
                m.version, m.network, m.content_hash
            );
            Ok(())
        }
        ImageCmd::Verify { dir, network, pins } => {
            let mut keys = zos_image::release::PinnedKeys::default();
            for p in &pins {
                keys.pin_hex(&network, p)?;
            }
            let m = zos_image::release::verify_bundle(&dir, &network, &keys)?;
            println!(
                "ok: {} for {} ({} files)",
                m.version,
                m.network,
                m.files.len()
            );
            Ok(())
        }
        ImageCmd::Publish(a) => super::upgrade::publish(a),
        ImageCmd::Overlay { output, files } => {
            let mut list = Vec::new();
            for f in files {
                let (dest, src) = f
                    .split_once('=')
                    .with_context(|| format!("--file {f}: want PATH_IN_IMAGE=HOST_FILE"))?;
                let data = std::fs::read(src).with_context(|| format!("reading {src}"))?;
                list.push((dest.to_string(), data));
            }
            let bytes = zos_image::build::overlay(&list)?;
            std::fs::write(&output, bytes)
                .with_context(|| format!("writing {}", output.display()))?;
            Ok(())
        }
    }
}

/// Site files the node's arguments point at when the overlay put them in.
const LEDGER_CERT: &str = "/etc/zos/ledger-cert.pem";
const RELAY_CERT: &str = "/etc/zos/relay-cert.pem";

/// The arguments of `zos node run` for this boot.
fn node_args(
    cfg: &cmdline::BootConfig,
    key_root: &Path,
    version: &str,
    pins: &[String],
    addr: Option<std::net::Ipv4Addr>,
) -> Vec<String> {
    let mut a = vec!["node".to_string(), "run".to_string()];
    // The version this binary runs as: the release's, which the node reports on the ledger.
    a.push(format!("--release-version={version}"));
    if let Some(u) = &cfg.upgrade {
        a.push(format!("--upgrade-hub={}", u.hub));
        a.push(format!("--upgrade-twin={}", u.twin));
        a.push(format!("--release-network={}", cfg.runmode.network()));
        for p in pins {
            a.push(format!("--release-pin={p}"));
        }
        if let Some(s) = u.interval_secs {
            a.push(format!("--upgrade-interval-secs={s}"));
        }
        if let Some(s) = u.deadline_secs {
            a.push(format!("--upgrade-deadline-secs={s}"));
        }
    }
    for l in cfg.ledgers.iter().take(1) {
        a.push(format!("--ledger={l}"));
    }
    if Path::new(LEDGER_CERT).is_file() {
        a.push(format!("--ledger-cert={LEDGER_CERT}"));
    }
    if let Some(p) = &cfg.ledger_producer {
        a.push(format!("--ledger-producer={p}"));
    }
    for r in &cfg.relays {
        a.push(format!("--relay={r}"));
    }
    if Path::new(RELAY_CERT).is_file() {
        a.push(format!("--relay-cert={RELAY_CERT}"));
    }
    for d in &cfg.relay_domains {
        a.push(format!("--relay-domain={d}"));
    }
    if let Some(f) = cfg.farm {
        a.push(format!("--farm={f}"));
    }
    a.push(format!("--data={}", init::DATA_DIR));
    a.push(format!("--key-root={}", key_root.display()));
    a.push("--discover-disks".into());
    // Workloads are reached from outside the machine: ZeroDB listens on the node's own address,
    // which its results name (0.0.0.0 would be named 127.0.0.1, useless to a user).
    a.push(format!(
        "--zdb-listen={}",
        addr.map_or("0.0.0.0".to_string(), |a| a.to_string())
    ));
    for t in &cfg.admin_twins {
        a.push(format!("--admin-twin={t}"));
    }
    // PID 1 restarts the node for a release switch: ZeroDB keeps serving meanwhile.
    a.push("--keep-zdb-running".into());
    a
}

/// Why the node cannot start yet, if it cannot.
fn preflight(cfg: &cmdline::BootConfig) -> Result<(), String> {
    if cfg.farm.is_none() {
        return Err(
            "no farmer_id on the kernel command line: this node belongs to no farm (add \
             farmer_id=ID)"
                .into(),
        );
    }
    if cfg.ledgers.is_empty() || cfg.relays.is_empty() {
        return Err("no ledger= or relay= on the kernel command line".into());
    }
    let out = std::process::Command::new(init::tool("lsblk"))
        .args([
            "-J",
            "-b",
            "-o",
            "NAME,PATH,SIZE,ROTA,TYPE,FSTYPE,LABEL,MOUNTPOINT,RO",
        ])
        .output()
        .map_err(|e| format!("lsblk: {e}"))?;
    // The node (`--data=DATA_DIR`, runtime dir DATA_DIR/run) mounts its pools there; one still
    // mounted (a VM or ZeroDB kept it busy through the node's restart) is the node's own.
    let own = zos_storage::pool::mount_root(&Path::new(init::DATA_DIR).join("run"));
    let disks = zos_storage::disks::usable_disks(&String::from_utf8_lossy(&out.stdout), &own)
        .map_err(|e| e.to_string())?;
    if disks.is_empty() {
        return Err(
            "no usable disk (blank, or a zos-* btrfs pool): disks holding other data \
                    are never touched"
                .into(),
        );
    }
    Ok(())
}

/// The key root kept on the boot medium (FAT: no hard links, no modes, so PID 1 writes it
/// there itself, atomically by rename, and hands the node an owner-only copy in /run).
fn key_root_from_boot_medium(boot: &Path) -> anyhow::Result<PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let dir = boot.join("zos");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let src = dir.join("key-root");
    let text = match std::fs::read(&src) {
        Ok(b) => {
            zos_node::identity::decode_key_root(&src, &b)?;
            b
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut root = [0u8; 32];
            getrandom_fill(&mut root)?;
            let text = zos_node::identity::encode_key_root(&root).into_bytes();
            let tmp = dir.join("key-root.tmp");
            let mut f = std::fs::File::create(&tmp).context("writing the key root")?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &src).context("writing the key root")?;
            init::say("generated a new key root on the boot medium");
            text
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", src.display())),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create("/run/zos")?;
    let copy = PathBuf::from("/run/zos/key-root");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&copy)?;
    f.write_all(&text)?;
    Ok(copy)
}

/// 32 random bytes from the kernel.
fn getrandom_fill(buf: &mut [u8]) -> anyhow::Result<()> {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .context("reading /dev/urandom")
}

/// PID 1: the whole boot. Never returns.
pub fn pid1() -> ! {
    init::say(&format!("zos {} starting", env!("CARGO_PKG_VERSION")));
    // SAFETY-free environment setup: this process is single-threaded here.
    let failed = init::system_setup();
    for (m, e) in &failed {
        init::say(&format!("module {m} did not load: {e}"));
    }
    let cmd = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let cfg = cmdline::parse(&cmd);
    for w in &cfg.warnings {
        init::say(&format!("kernel command line: {w}"));
    }
    init::say(&format!(
        "runmode {:?} (network {}), version {}, farm {:?}",
        cfg.runmode,
        cfg.runmode.network(),
        cfg.version,
        cfg.farm
    ));
    let boot = init::mount_boot_medium();
    let key_root = match boot.as_deref().map(key_root_from_boot_medium) {
        Some(Ok(p)) => {
            init::say(&format!(
                "boot medium at {}: the key root lives there",
                init::BOOT_MOUNT
            ));
            p
        }
        Some(Err(e)) => {
            init::say(&format!(
                "boot medium: {e:#}: the key root is kept in memory"
            ));
            PathBuf::from("/run/zos/key-root")
        }
        None => {
            init::say(
                "no boot medium (a FAT filesystem labelled ZOSBOOT): the key root is kept in \
                 memory, so encrypted disks and ZeroDB admin secrets change at every boot",
            );
            PathBuf::from("/run/zos/key-root")
        }
    };
    let network = cfg.runmode.network();
    let (keys, pins, warnings) = bootstrap::parse_pins(
        &std::fs::read_to_string(bootstrap::RELEASE_KEYS).unwrap_or_default(),
        network,
    );
    for w in &warnings {
        init::say(w);
    }
    if cfg.upgrade.is_some() && pins.is_empty() {
        init::say(&format!(
            "no release key pinned for network {network} ({}): every release will be refused",
            bootstrap::RELEASE_KEYS
        ));
    }
    let builtin = ("/init", env!("CARGO_PKG_VERSION"));
    let staged = std::rc::Rc::new(std::cell::RefCell::new(None::<bootstrap::Choice>));
    let (staged2, keys2) = (staged.clone(), keys.clone());
    // The node's address, once the network is up (the preflight brings it up).
    let addr = std::rc::Rc::new(std::cell::Cell::new(None));
    let addr2 = addr.clone();
    let c2 = cfg.clone();
    init::supervise(
        move || {
            if addr2.get().is_none() {
                let (s, a) = init::network_up(&c2, std::time::Duration::from_secs(20))
                    .map_err(|e| format!("network: {e}"))?;
                init::say(&format!("network up: {s}"));
                addr2.set(Some(a));
            }
            preflight(&c2)
        },
        move || {
            // Only a release slot is worth keeping: a fall-back to the image's own binary is
            // decided again at the start (the pool may just have been busy).
            let c = bootstrap::choose(&keys2, network, (Path::new(builtin.0), builtin.1));
            if c.exe != Path::new(builtin.0) {
                init::say(&format!("release {} staged", c.version));
                *staged2.borrow_mut() = Some(c);
            }
        },
        move || {
            // The release to run: staged at a switch, else the slot state on the pools, else
            // the image's own binary.
            let choice = staged.borrow_mut().take().unwrap_or_else(|| {
                bootstrap::choose(&keys, network, (Path::new(builtin.0), builtin.1))
            });
            for n in &choice.notes {
                init::say(n);
            }
            init::say(&format!(
                "running release {} ({})",
                choice.version,
                choice.exe.display()
            ));
            let pid = init::spawn_clean(
                &choice.exe,
                &node_args(&cfg, &key_root, &choice.version, &pins, addr.get()),
                &[
                    ("PATH", "/usr/sbin:/usr/bin"),
                    ("RUST_LOG", "info"),
                    ("NO_COLOR", "1"),
                    // Tells the node a supervisor acts on its requests (switch, reboot).
                    ("ZOS_INIT", "1"),
                ],
            )?;
            Ok(init::Started {
                pid,
                trial: choice.trial,
            })
        },
        |why| match bootstrap::record_rollback(why) {
            Ok(()) => init::say("rollback recorded: the previous release runs next"),
            Err(e) => init::say(&format!("recording the rollback failed: {e}")),
        },
    )
}
