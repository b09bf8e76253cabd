//! `zos flist …` (pack, inspect, mount, unpack, verify, push) and `zos hub serve`: flists,
//! upstream-compatible `.fl` images, see docs/flist.md.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use zos_flist::fs::{FlistFs, MountOptions};
use zos_flist::meta::{Kind, ROOT_INO, Reader};
use zos_flist::{BlockCache, Flist, Router};

/// Flist commands.
#[derive(Subcommand, Debug)]
pub enum FlistCmd {
    /// Pack a directory, or a container image (an OCI image layout directory or tar, or a
    /// `docker save` tarball), into an `.fl`, uploading its blocks to the stores.
    Pack {
        /// The directory tree (or image) to pack.
        dir: PathBuf,
        /// Treat DIR as an image even without an `oci-layout` file (an extracted
        /// `docker save`); files and OCI layouts are detected.
        #[arg(long)]
        image: bool,
        /// Which image of a multi-image archive (a RepoTag or OCI ref name).
        #[arg(long)]
        image_ref: Option<String>,
        /// The `.fl` to write (replaced if it exists).
        #[arg(short, long)]
        output: PathBuf,
        /// Store spec `[xx-xx=]URL` (dir:///path, zdb://host:port/ns, …); repeat to shard or
        /// replicate by id-prefix range.
        #[arg(short, long = "store", required = true)]
        stores: Vec<String>,
        /// Keep store passwords in the route table (stripped by default, as upstream).
        #[arg(long)]
        no_strip_password: bool,
        /// Tag `key=value` (version, description, author, …).
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Show an flist: totals, routes, tags, and with --tree every entry.
    Inspect {
        /// The `.fl`.
        flist: PathBuf,
        /// List every entry with mode, owner and size.
        #[arg(long)]
        tree: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Mount an flist read-only (FUSE) until SIGINT/SIGTERM.
    Mount {
        /// The `.fl`.
        flist: PathBuf,
        /// Mount point (an existing directory).
        target: PathBuf,
        #[command(flatten)]
        read: ReadArgs,
        /// Let other users see the mount (allow_other).
        #[arg(long)]
        allow_other: bool,
        /// Chunks fetched ahead of reads, in parallel.
        #[arg(long, default_value_t = 8)]
        readahead: usize,
        /// After mounting, fetch every block of the flist into the cache in the background,
        /// N at once (reads do not wait for it; they share its downloads).
        #[arg(long, value_name = "N")]
        prefetch: Option<usize>,
    },
    /// Extract an flist into a directory (no FUSE needed); a legacy `.flist` (tar.gz +
    /// capnp) too, its blocks from -s or its backend tag.
    Unpack {
        /// The `.fl`.
        flist: PathBuf,
        /// Target directory (created; existing files are not overwritten).
        target: PathBuf,
        #[command(flatten)]
        read: ReadArgs,
        /// Apply owners (needs root).
        #[arg(short, long)]
        preserve_ownership: bool,
    },
    /// Check every block is present in the stores (--deep: fetch and decode each one).
    /// Exit status 1 when a block is missing or bad.
    Verify {
        /// The `.fl`.
        flist: PathBuf,
        /// Fetch and fully verify every block.
        #[arg(long)]
        deep: bool,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Publish an flist on a hub: upload the blocks it lacks, then the `.fl` (routed to the
    /// hub's block endpoint) under your twin.
    Push {
        /// The `.fl`.
        flist: PathBuf,
        /// Hub base URL, e.g. http://127.0.0.1:8080.
        #[arg(long, env = "ZOS_HUB")]
        hub: String,
        /// Your twin id.
        #[arg(long, env = "ZOS_TWIN")]
        twin: u32,
        /// Name on the hub (default: the file name).
        #[arg(long)]
        name: Option<String>,
        /// Key file (default: the config directory's key.json).
        #[arg(long, env = "ZOS_KEY")]
        key: Option<PathBuf>,
        /// Hex seed instead of a key file.
        #[arg(long, env = "ZOS_SEED", hide_env_values = true)]
        seed: Option<String>,
        /// The seed is sr25519.
        #[arg(long)]
        sr25519: bool,
        #[command(flatten)]
        read: ReadArgs,
    },
}

/// Where blocks come from and go.
#[derive(Args, Debug)]
pub struct ReadArgs {
    /// Block cache directory (shared by every mount).
    #[arg(long, env = "ZOS_FLIST_CACHE", default_value = "/var/cache/zos/flist")]
    cache: PathBuf,
    /// Read blocks from these stores instead of the flist's routes (`[xx-xx=]URL`).
    #[arg(short, long = "store")]
    stores: Vec<String>,
}

impl ReadArgs {
    fn open(&self, fl: &Path) -> anyhow::Result<Flist> {
        if self.stores.is_empty() {
            Flist::open(fl).with_context(|| format!("open {}", fl.display()))
        } else {
            let router = Router::from_specs(&self.stores)?;
            Flist::open_with(fl, router).with_context(|| format!("open {}", fl.display()))
        }
    }
}

/// Hub commands.
#[derive(Subcommand, Debug)]
pub enum HubCmd {
    /// Serve flists and blocks over HTTP until SIGINT/SIGTERM.
    Serve {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Data directory (flists/<twin>/*.fl, blocks/).
        #[arg(long, default_value = "./hub-data")]
        data: PathBuf,
        /// A twin allowed to upload: `ID=ed25519:HEX` or `ID=sr25519:HEX`; repeat.
        #[arg(long = "twin")]
        twins: Vec<String>,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Runs a `zos flist` command.
pub fn run(cmd: FlistCmd) -> anyhow::Result<()> {
    match cmd {
        FlistCmd::Pack {
            dir,
            image,
            image_ref,
            output,
            stores,
            no_strip_password,
            tags,
        } => {
            let tags = tags
                .iter()
                .map(|t| {
                    t.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect::<Option<Vec<_>>>()
                .context("--tag must be key=value")?;
            let router = Router::from_specs(&stores)?;
            let opts = zos_flist::pack::PackOptions {
                keep_password: no_strip_password,
                tags,
                ..Default::default()
            };
            if image || image_ref.is_some() || zos_flist::image::is_image(&dir) {
                let iopts = zos_flist::image::ImageOptions {
                    reference: image_ref,
                    staging: None,
                    pack: opts,
                };
                let r = runtime()?
                    .block_on(zos_flist::image::pack_image(&dir, &output, &router, &iopts))?;
                println!(
                    "{}: image of {} layers ({} whiteouts, {} opaque dirs): {} entries, {} files, {} bytes, {} blocks in {:.2}s",
                    output.display(),
                    r.layers.layers,
                    r.layers.whiteouts,
                    r.layers.opaque_dirs,
                    r.pack.inodes,
                    r.pack.files,
                    r.pack.bytes,
                    r.pack.blocks,
                    r.pack.seconds
                );
                return Ok(());
            }
            let r = runtime()?.block_on(zos_flist::pack::pack(&dir, &output, &router, &opts))?;
            println!(
                "{}: {} entries, {} files, {} bytes, {} blocks in {:.2}s",
                output.display(),
                r.inodes,
                r.files,
                r.bytes,
                r.blocks,
                r.seconds
            );
            Ok(())
        }
        FlistCmd::Inspect { flist, tree, json } => inspect(&flist, tree, json),
        FlistCmd::Mount {
            flist,
            target,
            read,
            allow_other,
            readahead,
            prefetch,
        } => {
            let rt = runtime()?;
            let fl = read.open(&flist)?;
            let cache = Arc::new(BlockCache::new(&read.cache));
            let warm_with = (fl.clone(), cache.clone());
            let opts = MountOptions {
                allow_other,
                readahead,
            };
            let fs = FlistFs::new(
                fl.reader.clone(),
                fl.router.clone(),
                cache,
                rt.handle().clone(),
                &opts,
            );
            let handle = zos_flist::fs::mount(fs, &target, &opts).with_context(|| {
                format!(
                    "mount {} (needs /dev/fuse and fusermount3)",
                    target.display()
                )
            })?;
            tracing::info!(flist = %flist.display(), target = %target.display(), "mounted");
            if let Some(n) = prefetch {
                // Cold reads are per-file round trips (docs/benchmarks.md, Flists); filling the
                // cache in parallel takes them off the read path. Its own thread: the warm
                // future borrows across awaits and need not be Send.
                let h = rt.handle().clone();
                std::thread::spawn(move || {
                    let (f, c) = warm_with;
                    let t = std::time::Instant::now();
                    match h.block_on(zos_flist::warm(&f, &c, n)) {
                        Ok(blocks) => tracing::info!(
                            blocks,
                            secs = t.elapsed().as_secs_f64(),
                            "prefetch done"
                        ),
                        Err(e) => tracing::warn!(error = %e, "prefetch failed"),
                    }
                });
            }
            rt.block_on(super::shutdown_signal());
            handle.unmount();
            Ok(())
        }
        FlistCmd::Unpack {
            flist,
            target,
            read,
            preserve_ownership,
        } => {
            if zos_flist::legacy::is_legacy(&flist) {
                // An old tar.gz + capnp `.flist`: blocks from -s, else its backend tag.
                use zos_flist::legacy;
                let fl = legacy::LegacyFlist::open(&flist, &read.cache.join("legacy-db"))
                    .with_context(|| format!("open {}", flist.display()))?;
                let url = match read.stores.first() {
                    Some(s) => s.clone(),
                    None => fl
                        .backend()?
                        .unwrap_or_else(|| legacy::DEFAULT_STORAGE.to_string()),
                };
                let store = legacy::LegacyStore::from_url(&url)?;
                let r = runtime()?.block_on(legacy::unpack(
                    &fl,
                    &store,
                    Some(&read.cache),
                    &target,
                    preserve_ownership,
                ))?;
                println!(
                    "{}: {} entries, {} bytes ({} special files skipped)",
                    target.display(),
                    r.entries,
                    r.bytes,
                    r.skipped
                );
                return Ok(());
            }
            let fl = read.open(&flist)?;
            let cache = BlockCache::new(&read.cache);
            let opts = zos_flist::unpack::UnpackOptions {
                preserve_ownership,
                ..Default::default()
            };
            runtime()?.block_on(zos_flist::unpack::unpack(
                &fl.reader, &cache, &fl.router, &target, &opts,
            ))?;
            Ok(())
        }
        FlistCmd::Verify { flist, deep, read } => {
            let fl = read.open(&flist)?;
            let r = runtime()?.block_on(zos_flist::verify(&fl, deep, 16))?;
            for m in &r.missing {
                println!("missing {m}");
            }
            for b in &r.bad {
                println!("bad {b}");
            }
            println!(
                "{} blocks, {} missing, {} bad",
                r.blocks,
                r.missing.len(),
                r.bad.len()
            );
            if !r.missing.is_empty() || !r.bad.is_empty() {
                bail!("flist {} is not complete", flist.display());
            }
            Ok(())
        }
        FlistCmd::Push {
            flist,
            hub,
            twin,
            name,
            key,
            seed,
            sr25519,
            read,
        } => {
            let kt = if sr25519 {
                zos_types::KeyType::Sr25519
            } else {
                zos_types::KeyType::Ed25519
            };
            let pair = match seed {
                Some(s) => zos_types::KeyPair::from_hex_seed(kt, &s).context("--seed")?,
                None => {
                    let path = key.unwrap_or_else(super::key::default_key_path);
                    zos_client::KeyFile::load(&path)?
                        .key_pair()
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                }
            };
            let name = match name {
                Some(n) => n,
                None => flist
                    .file_name()
                    .and_then(|n| n.to_str())
                    .context("flist file name")?
                    .to_string(),
            };
            let fl = read.open(&flist)?;
            let client = zos_flist::hub::HubClient::new(&hub, twin, pair);
            let (uploaded, path) = runtime()?
                .block_on(zos_flist::hub::push(&fl, &client, &name, 8))
                .map_err(|e| anyhow::anyhow!(e))?;
            println!(
                "{uploaded} blocks uploaded; published {}{path}",
                hub.trim_end_matches('/')
            );
            Ok(())
        }
    }
}

fn inspect(flist: &Path, tree: bool, json: bool) -> anyhow::Result<()> {
    let r = Reader::open(flist).with_context(|| format!("open {}", flist.display()))?;
    let stats = r.stats()?;
    let routes = r.routes()?;
    let tags = r.tags()?;
    let mut entries = Vec::new();
    if tree {
        let mut stack = vec![(ROOT_INO, PathBuf::from("/"))];
        while let Some((ino, path)) = stack.pop() {
            let mut off = 0;
            loop {
                let page = r.children(ino, off, 512)?;
                if page.is_empty() {
                    break;
                }
                off += page.len() as u64;
                for c in page {
                    let p = path.join(&c.name);
                    if c.kind() == Kind::Dir {
                        stack.push((c.ino, p.clone()));
                    }
                    let target = c
                        .data
                        .as_deref()
                        .map(|d| String::from_utf8_lossy(d).into_owned());
                    entries.push((p, c, target));
                }
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
    }
    if json {
        let v = serde_json::json!({
            "stats": stats,
            "routes": routes.iter().map(|r| serde_json::json!({"start": r.start, "end": r.end, "url": r.url})).collect::<Vec<_>>(),
            "tags": tags.iter().cloned().collect::<HashMap<_, _>>(),
            "entries": entries.iter().map(|(p, c, t)| serde_json::json!({
                "path": p, "mode": format!("{:o}", c.mode), "uid": c.uid, "gid": c.gid, "size": c.size,
                "mtime": c.mtime, "target": t,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{}: {} entries ({} files, {} dirs, {} symlinks), {} bytes in files, {} block rows, {} distinct blocks",
        flist.display(),
        stats.inodes,
        stats.files,
        stats.dirs,
        stats.symlinks,
        stats.file_bytes,
        stats.block_rows,
        stats.unique_blocks
    );
    for rt in &routes {
        println!("route {:02x}-{:02x} {}", rt.start, rt.end, rt.url);
    }
    for (k, v) in &tags {
        println!("tag {k}={v}");
    }
    for (p, c, t) in &entries {
        let arrow = t.as_ref().map(|t| format!(" -> {t}")).unwrap_or_default();
        println!(
            "{:>7o} {:>5} {:>5} {:>12} {}{}",
            c.mode,
            c.uid,
            c.gid,
            c.size,
            p.display(),
            arrow
        );
    }
    Ok(())
}

fn parse_twin(s: &str) -> anyhow::Result<(u32, zos_types::PublicKey)> {
    let (id, rest) = s.split_once('=').context("--twin ID=TYPE:HEX")?;
    let (kt, hexkey) = rest.split_once(':').context("--twin ID=TYPE:HEX")?;
    let key_type = match kt {
        "ed25519" => zos_types::KeyType::Ed25519,
        "sr25519" => zos_types::KeyType::Sr25519,
        other => bail!("unknown key type {other}"),
    };
    let bytes = zos_types::crypto::decode_hex32("twin key", hexkey)?;
    Ok((
        id.parse().context("twin id")?,
        zos_types::PublicKey { key_type, bytes },
    ))
}

/// Runs a `zos hub` command.
pub fn run_hub(cmd: HubCmd) -> anyhow::Result<()> {
    match cmd {
        HubCmd::Serve {
            listen,
            data,
            twins,
        } => {
            let twins = twins
                .iter()
                .map(|t| parse_twin(t))
                .collect::<anyhow::Result<HashMap<_, _>>>()?;
            let hub = zos_flist::hub::Hub::new(data, twins);
            runtime()?.block_on(async move {
                let l = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("bind {listen}"))?;
                tracing::info!(%listen, "hub serving");
                zos_flist::hub::serve(l, hub, super::shutdown_signal()).await?;
                Ok(())
            })
        }
    }
}
