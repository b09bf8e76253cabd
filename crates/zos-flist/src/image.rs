//! Container images → flists: an OCI image layout (a directory, or a tar of one) or a
//! `docker save` tarball on disk, without a container runtime.
//!
//! The layers are applied in order to an in-memory tree (the way an overlay stacks them):
//! `.wh.NAME` hides `NAME` of lower layers, `.wh..wh..opq` hides every lower-layer child of its
//! directory, a hard link may name a file of any lower layer. File contents are staged on disk
//! next to the output; owners, modes, device numbers and times come from the tar headers, so
//! nothing needs root. Then `/.startup.toml` is added from the image config (spec §9) and the
//! tree is packed like a directory (same chunking, stores and hard-link table as [`crate::pack`]).
//!
//! Upstream (`rfs docker`) gets the tree from `docker export` of a container; the result is the
//! same tree minus the files Docker adds to every container (`/.dockerenv`, `/etc/hostname`…).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead as _, BufReader, Read, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use crate::meta::{NewInode, Writer};
use crate::pack::{FileJob, LinkGroups, PackError, PackOptions, PackReport, pack_with};
use crate::store::Router;

const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;
const S_IFIFO: u32 = 0o010000;

/// Largest JSON document (index, manifest, config) read from an image.
const MAX_JSON: u64 = 16 * 1024 * 1024;

/// Why an image could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Reading the image failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The image is not a valid OCI layout / docker save archive.
    #[error("image: {0}")]
    Format(String),
    /// A blob does not hash to its digest.
    #[error("image blob {path}: digest mismatch (expected {expected}, got {actual})")]
    Digest {
        /// The blob.
        path: String,
        /// From the manifest.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// Packing the tree failed.
    #[error(transparent)]
    Pack(#[from] PackError),
}

fn fmt(msg: impl Into<String>) -> ImageError {
    ImageError::Format(msg.into())
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Image import settings.
#[derive(Debug, Clone, Default)]
pub struct ImageOptions {
    /// Which image of a multi-image archive: a `RepoTags` entry (docker save) or an
    /// `org.opencontainers.image.ref.name` annotation (OCI). Needed only when there are several.
    pub reference: Option<String>,
    /// Where file contents are staged (default: next to the output `.fl`); removed afterwards.
    pub staging: Option<PathBuf>,
    /// How the tree is packed.
    pub pack: PackOptions,
}

/// The parts of an image config that make `.startup.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct RunConfig {
    /// `Entrypoint`.
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    /// `Env` (`K=V`).
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    /// `WorkingDir`.
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
}

/// `.startup.toml` for `cfg` (spec §9): `startup.entry` = `core.system` with the command
/// `Entrypoint ++ Cmd` (Docker's argv; `/bin/sh` when both are empty), the environment split
/// at the first `=`, and the working directory (`/` when unset).
///
/// Upstream derives this from a container created with `Cmd` overridden, which loses `Cmd`
/// when the entrypoint has arguments and truncates env values at a second `=`; this follows
/// what the image asks for instead.
pub fn startup_toml(cfg: &RunConfig) -> String {
    let mut argv: Vec<String> = cfg.entrypoint.clone().unwrap_or_default();
    argv.extend(cfg.cmd.clone().unwrap_or_default());
    if argv.is_empty() {
        argv.push("/bin/sh".to_string());
    }
    let name = argv.remove(0);
    let mut env = toml::map::Map::new();
    for e in cfg.env.iter().flatten() {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        env.insert(k.to_string(), toml::Value::String(v.to_string()));
    }
    let dir = match cfg.working_dir.as_deref() {
        Some(d) if !d.is_empty() => d.to_string(),
        _ => "/".to_string(),
    };
    let mut args = toml::map::Map::new();
    args.insert("name".into(), toml::Value::String(name));
    args.insert(
        "args".into(),
        toml::Value::Array(argv.into_iter().map(toml::Value::String).collect()),
    );
    args.insert("env".into(), toml::Value::Table(env));
    args.insert("dir".into(), toml::Value::String(dir));
    let mut entry = toml::map::Map::new();
    entry.insert("name".into(), toml::Value::String("core.system".into()));
    entry.insert("args".into(), toml::Value::Table(args));
    let mut startup = toml::map::Map::new();
    startup.insert("entry".into(), toml::Value::Table(entry));
    let mut top = toml::map::Map::new();
    top.insert("startup".into(), toml::Value::Table(startup));
    // A document (`[startup.entry]` tables), as upstream writes it; an inline table is not
    // valid at the top level.
    toml::to_string(&top).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Image sources: a directory or a tar file, read by archive-relative path.

/// A regular file inside a tar: where its bytes are.
#[derive(Debug, Clone, Copy)]
struct TarSpan {
    offset: u64,
    size: u64,
}

enum Source {
    Dir(PathBuf),
    Tar {
        path: PathBuf,
        files: HashMap<String, TarSpan>,
        links: HashMap<String, String>,
    },
}

/// Normalises an archive-relative path: no leading `./` or `/`, no `.` segments; `..` pops
/// (never above the root).
fn norm(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

impl Source {
    fn open(path: &Path) -> Result<Source, ImageError> {
        let m = std::fs::metadata(path).map_err(io_at(path))?;
        if m.is_dir() {
            return Ok(Source::Dir(path.to_path_buf()));
        }
        // Index the tar once; members are then read in place (a saved image can be GBs).
        let f = File::open(path).map_err(io_at(path))?;
        let mut ar = tar::Archive::new(BufReader::new(f));
        let mut files = HashMap::new();
        let mut links = HashMap::new();
        for e in ar.entries().map_err(io_at(path))? {
            let e = e.map_err(io_at(path))?;
            let name = norm(&String::from_utf8_lossy(&e.path_bytes()));
            let et = e.header().entry_type();
            if et.is_file() {
                files.insert(
                    name,
                    TarSpan {
                        offset: e.raw_file_position(),
                        size: e.size(),
                    },
                );
            } else if et.is_symlink() || et.is_hard_link() {
                let target = e
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default();
                let resolved = if et.is_hard_link() || target.starts_with('/') {
                    norm(&target)
                } else {
                    let parent = name.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
                    norm(&format!("{parent}/{target}"))
                };
                links.insert(name, resolved);
            }
        }
        Ok(Source::Tar {
            path: path.to_path_buf(),
            files,
            links,
        })
    }

    fn exists(&self, name: &str) -> bool {
        match self {
            Source::Dir(root) => root.join(name).exists(),
            Source::Tar { files, links, .. } => {
                files.contains_key(name) || links.contains_key(name)
            }
        }
    }

    /// Opens member `name` (links inside the archive followed, never out of it).
    fn open_member(&self, name: &str) -> Result<(Box<dyn Read + Send>, u64), ImageError> {
        let name = norm(name);
        match self {
            Source::Dir(root) => {
                let p = root.join(&name);
                // A symlink in the layout must not lead out of it.
                let canon = p.canonicalize().map_err(io_at(&p))?;
                let canon_root = root.canonicalize().map_err(io_at(root))?;
                if !canon.starts_with(&canon_root) {
                    return Err(fmt(format!("{name} points outside the image directory")));
                }
                let f = File::open(&canon).map_err(io_at(&p))?;
                let len = f.metadata().map_err(io_at(&p))?.len();
                Ok((Box::new(f), len))
            }
            Source::Tar { path, files, links } => {
                let mut cur = name.clone();
                for _ in 0..16 {
                    if let Some(span) = files.get(&cur) {
                        let mut f = File::open(path).map_err(io_at(path))?;
                        f.seek(SeekFrom::Start(span.offset)).map_err(io_at(path))?;
                        return Ok((Box::new(f.take(span.size)), span.size));
                    }
                    match links.get(&cur) {
                        Some(next) => cur = next.clone(),
                        None => break,
                    }
                }
                Err(fmt(format!("{name}: not in the archive")))
            }
        }
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, ImageError> {
        let (r, len) = self.open_member(name)?;
        if len > MAX_JSON {
            return Err(fmt(format!("{name}: {len} bytes is too large")));
        }
        let mut buf = Vec::new();
        r.take(MAX_JSON)
            .read_to_end(&mut buf)
            .map_err(io_at(Path::new(name)))?;
        serde_json::from_slice(&buf).map_err(|e| fmt(format!("{name}: {e}")))
    }

    /// A content-addressed OCI blob; its sha256 is checked while it is read.
    fn blob(&self, digest: &str) -> Result<DigestReader, ImageError> {
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| fmt(format!("unsupported digest {digest:?} (sha256 only)")))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(fmt(format!("bad digest {digest:?}")));
        }
        let name = format!("blobs/sha256/{hex}");
        let (r, _) = self.open_member(&name)?;
        Ok(DigestReader {
            inner: r,
            hasher: sha2::Sha256::new(),
            expected: Some(hex.to_ascii_lowercase()),
            name,
        })
    }

    fn blob_json<T: serde::de::DeserializeOwned>(&self, digest: &str) -> Result<T, ImageError> {
        let mut r = self.blob(digest)?;
        let mut buf = Vec::new();
        (&mut r)
            .take(MAX_JSON)
            .read_to_end(&mut buf)
            .map_err(io_at(Path::new(&r.name)))?;
        r.check()?;
        serde_json::from_slice(&buf).map_err(|e| fmt(format!("blob {digest}: {e}")))
    }
}

/// Hashes what is read through it; [`DigestReader::check`] after EOF.
struct DigestReader {
    inner: Box<dyn Read + Send>,
    hasher: sha2::Sha256,
    expected: Option<String>,
    name: String,
}

impl Read for DigestReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl DigestReader {
    fn check(&mut self) -> Result<(), ImageError> {
        // Whatever the consumer left unread (tar padding, trailing zero blocks) is hashed too.
        std::io::copy(self, &mut std::io::sink()).map_err(io_at(Path::new(&self.name)))?;
        let actual = hex::encode(std::mem::take(&mut self.hasher).finalize());
        match &self.expected {
            Some(e) if *e != actual => Err(ImageError::Digest {
                path: self.name.clone(),
                expected: e.clone(),
                actual,
            }),
            _ => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Locating the manifest: docker save (`manifest.json`) or OCI layout (`index.json`).

#[derive(serde::Deserialize)]
struct DockerManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

#[derive(serde::Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: HashMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(serde::Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(serde::Deserialize)]
struct OciIndex {
    manifests: Vec<Descriptor>,
}

#[derive(serde::Deserialize)]
struct OciManifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(serde::Deserialize, Default)]
struct ImageConfigFile {
    #[serde(default)]
    config: Option<RunConfig>,
}

/// A layer to apply: how to open it.
enum LayerRef {
    /// docker save: a member path (digest not checked: `Layers` carries none).
    Member(String),
    /// OCI: a blob, checked against its digest.
    Blob(String),
}

struct Image {
    config: RunConfig,
    layers: Vec<LayerRef>,
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn is_index(media_type: &str) -> bool {
    media_type.ends_with("image.index.v1+json") || media_type.ends_with("manifest.list.v2+json")
}

fn pick<'a>(ds: &'a [Descriptor], reference: Option<&str>) -> Result<&'a Descriptor, ImageError> {
    if let Some(r) = reference {
        let hit = ds.iter().find(|d| {
            d.annotations
                .get("org.opencontainers.image.ref.name")
                .is_some_and(|n| n == r || r.rsplit_once(':').is_some_and(|(_, tag)| tag == n))
                || d.annotations
                    .get("io.containerd.image.name")
                    .is_some_and(|n| n == r)
        });
        if let Some(d) = hit {
            return Ok(d);
        }
    }
    // Several platforms: the host's (linux), as a runtime would pull.
    let linux: Vec<&Descriptor> = ds
        .iter()
        .filter(|d| {
            d.platform
                .as_ref()
                .is_none_or(|p| p.os == "linux" && p.architecture == host_arch())
        })
        .collect();
    match (linux.as_slice(), reference) {
        ([one], _) => Ok(one),
        ([], _) => Err(fmt(format!(
            "no manifest for linux/{} in the image",
            host_arch()
        ))),
        (_, Some(r)) => Err(fmt(format!("no image named {r:?} in the layout"))),
        (_, None) => Err(fmt(
            "the layout holds several images: choose one with a reference",
        )),
    }
}

fn load_oci(src: &Source, reference: Option<&str>) -> Result<Image, ImageError> {
    let index: OciIndex = src.read_json("index.json")?;
    let desc = pick(&index.manifests, reference)?;
    let m: OciManifest = src.blob_json(&desc.digest)?;
    if is_index(&desc.media_type) || is_index(&m.media_type) || m.config.is_none() {
        // A multi-platform image inside the layout's index: the host's platform.
        let inner = m.manifests.unwrap_or_default();
        let d = pick(&inner, None)?;
        let m2: OciManifest = src.blob_json(&d.digest)?;
        if m2.config.is_none() {
            return Err(fmt("image indexes nested deeper than two levels"));
        }
        return oci_image(src, m2);
    }
    oci_image(src, m)
}

fn oci_image(src: &Source, m: OciManifest) -> Result<Image, ImageError> {
    let cfg = m.config.ok_or_else(|| fmt("manifest has no config"))?;
    let cfg: ImageConfigFile = src.blob_json(&cfg.digest)?;
    Ok(Image {
        config: cfg.config.unwrap_or_default(),
        layers: m
            .layers
            .into_iter()
            .map(|l| LayerRef::Blob(l.digest))
            .collect(),
    })
}

fn load_docker(src: &Source, reference: Option<&str>) -> Result<Image, ImageError> {
    let ms: Vec<DockerManifest> = src.read_json("manifest.json")?;
    let m = match reference {
        Some(r) => ms
            .iter()
            .find(|m| m.repo_tags.iter().flatten().any(|t| t == r))
            .ok_or_else(|| fmt(format!("no image tagged {r:?} in the archive")))?,
        None => match ms.as_slice() {
            [one] => one,
            [] => return Err(fmt("manifest.json lists no image")),
            _ => {
                return Err(fmt(
                    "the archive holds several images: choose one with a reference",
                ));
            }
        },
    };
    let cfg: ImageConfigFile = src.read_json(&m.config)?;
    Ok(Image {
        config: cfg.config.unwrap_or_default(),
        layers: m.layers.iter().cloned().map(LayerRef::Member).collect(),
    })
}

fn load(src: &Source, reference: Option<&str>) -> Result<Image, ImageError> {
    // Docker ≥ 25 writes both files; manifest.json names the layers directly.
    if src.exists("manifest.json") {
        load_docker(src, reference)
    } else if src.exists("index.json") {
        load_oci(src, reference)
    } else {
        Err(fmt(
            "neither manifest.json (docker save) nor index.json (OCI layout) found",
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// The layered tree.

#[derive(Debug, Clone, Copy)]
struct Attr {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    rdev: u64,
}

#[derive(Debug)]
enum Kind {
    Dir(BTreeMap<Vec<u8>, Child>),
    File { blob: Option<PathBuf>, size: u64 },
    Symlink(Vec<u8>),
    Special,
}

#[derive(Debug)]
struct Node {
    attr: Attr,
    kind: Kind,
}

/// A directory entry: the node (shared by hard links) and the layer that wrote the entry.
#[derive(Debug, Clone, Copy)]
struct Child {
    node: usize,
    layer: usize,
}

/// What applying the layers produced.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct LayerStats {
    /// Layers applied.
    pub layers: usize,
    /// Tar entries read.
    pub entries: u64,
    /// Whiteouts that hid something.
    pub whiteouts: u64,
    /// Opaque directory markers applied.
    pub opaque_dirs: u64,
}

struct Tree {
    nodes: Vec<Node>,
    staging: PathBuf,
    next_blob: u64,
    stats: LayerStats,
}

const ROOT: usize = 0;

fn makedev(major: u64, minor: u64) -> u64 {
    // glibc's encoding, what lstat reports for a device node.
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

impl Tree {
    fn new(staging: PathBuf) -> Tree {
        Tree {
            nodes: vec![Node {
                attr: Attr {
                    mode: S_IFDIR | 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                    rdev: 0,
                },
                kind: Kind::Dir(BTreeMap::new()),
            }],
            staging,
            next_blob: 0,
            stats: LayerStats::default(),
        }
    }

    fn children(&mut self, dir: usize) -> Option<&mut BTreeMap<Vec<u8>, Child>> {
        match &mut self.nodes[dir].kind {
            Kind::Dir(c) => Some(c),
            _ => None,
        }
    }

    /// The directory at `parts` (created as needed, like tar does for a missing parent).
    fn dir_at(&mut self, parts: &[&[u8]], layer: usize, full: &str) -> Result<usize, ImageError> {
        let mut cur = ROOT;
        for p in parts {
            let existing = self
                .children(cur)
                .ok_or_else(|| fmt(format!("{full}: a parent is not a directory")))?
                .get(*p)
                .copied();
            cur = match existing {
                Some(c) if matches!(self.nodes[c.node].kind, Kind::Dir(_)) => c.node,
                Some(_) => {
                    return Err(fmt(format!("{full}: a parent is not a directory")));
                }
                None => {
                    let attr = self.nodes[cur].attr;
                    let n = self.push(Node {
                        attr: Attr {
                            mode: S_IFDIR | 0o755,
                            rdev: 0,
                            ..attr
                        },
                        kind: Kind::Dir(BTreeMap::new()),
                    });
                    if let Some(c) = self.children(cur) {
                        c.insert(p.to_vec(), Child { node: n, layer });
                    }
                    n
                }
            };
        }
        Ok(cur)
    }

    fn push(&mut self, n: Node) -> usize {
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    /// The node at `parts`, without creating anything.
    fn lookup(&self, parts: &[&[u8]]) -> Option<usize> {
        let mut cur = ROOT;
        for p in parts {
            match &self.nodes[cur].kind {
                Kind::Dir(c) => cur = c.get(*p)?.node,
                _ => return None,
            }
        }
        Some(cur)
    }

    /// Applies one layer's tar stream.
    fn apply<R: Read>(&mut self, layer: usize, r: R) -> Result<(), ImageError> {
        let mut ar = tar::Archive::new(r);
        let lp = PathBuf::from(format!("layer {layer}"));
        for e in ar.entries().map_err(io_at(&lp))? {
            let mut e = e.map_err(io_at(&lp))?;
            self.stats.entries += 1;
            let raw = e.path_bytes().into_owned();
            let full = String::from_utf8_lossy(&raw).into_owned();
            let mut parts: Vec<&[u8]> = Vec::new();
            for c in raw.split(|&b| b == b'/') {
                match c {
                    b"" | b"." => {}
                    b".." => return Err(fmt(format!("layer {layer}: {full}: '..' in a path"))),
                    c => parts.push(c),
                }
            }
            let h = e.header();
            let et = h.entry_type();
            let attr = Attr {
                mode: h.mode().map_err(io_at(&lp))? & 0o7777,
                uid: u32::try_from(h.uid().map_err(io_at(&lp))?).unwrap_or(u32::MAX),
                gid: u32::try_from(h.gid().map_err(io_at(&lp))?).unwrap_or(u32::MAX),
                mtime: i64::try_from(h.mtime().map_err(io_at(&lp))?).unwrap_or(0),
                rdev: 0,
            };
            let Some((name, dirs)) = parts.split_last() else {
                // The root itself ("./"): its attributes.
                if et.is_dir() {
                    self.nodes[ROOT].attr = Attr {
                        mode: S_IFDIR | attr.mode,
                        ..attr
                    };
                }
                continue;
            };
            let name = name.to_vec();
            let parent = self.dir_at(dirs, layer, &full)?;
            if name == b".wh..wh..opq" {
                let kids = self
                    .children(parent)
                    .ok_or_else(|| fmt("opaque: not a dir"))?;
                kids.retain(|_, c| c.layer >= layer);
                self.stats.opaque_dirs += 1;
                continue;
            }
            if let Some(hidden) = name.strip_prefix(b".wh.") {
                let kids = self
                    .children(parent)
                    .ok_or_else(|| fmt("whiteout: not a dir"))?;
                // Whiteouts hide lower layers only (OCI image spec, "Whiteouts").
                if kids.get(hidden).is_some_and(|c| c.layer < layer) {
                    kids.remove(hidden);
                    self.stats.whiteouts += 1;
                }
                continue;
            }
            let node = if et.is_dir() {
                let existing = self
                    .children(parent)
                    .and_then(|k| k.get(&name).copied())
                    .filter(|c| matches!(self.nodes[c.node].kind, Kind::Dir(_)));
                if let Some(c) = existing {
                    // A directory again in a higher layer: new attributes, same contents.
                    self.nodes[c.node].attr = Attr {
                        mode: S_IFDIR | attr.mode,
                        ..attr
                    };
                    c.node
                } else {
                    self.push(Node {
                        attr: Attr {
                            mode: S_IFDIR | attr.mode,
                            ..attr
                        },
                        kind: Kind::Dir(BTreeMap::new()),
                    })
                }
            } else if et.is_hard_link() {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| fmt(format!("{full}: hard link without a target")))?
                    .into_owned();
                let tparts: Vec<&[u8]> = target
                    .split(|&b| b == b'/')
                    .filter(|c| !c.is_empty() && *c != b".")
                    .collect();
                let t = self.lookup(&tparts).ok_or_else(|| {
                    fmt(format!(
                        "layer {layer}: {full}: hard link to missing {}",
                        String::from_utf8_lossy(&target)
                    ))
                })?;
                if !matches!(self.nodes[t].kind, Kind::File { .. }) {
                    return Err(fmt(format!("{full}: hard link to a non-file")));
                }
                t
            } else if et.is_symlink() {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| fmt(format!("{full}: symlink without a target")))?
                    .into_owned();
                self.push(Node {
                    attr: Attr {
                        mode: S_IFLNK | 0o777,
                        ..attr
                    },
                    kind: Kind::Symlink(target),
                })
            } else if et.is_character_special() || et.is_block_special() || et.is_fifo() {
                let dev = |v: std::io::Result<Option<u32>>| v.ok().flatten().unwrap_or(0) as u64;
                let (major, minor) = (dev(h.device_major()), dev(h.device_minor()));
                let t = if et.is_character_special() {
                    S_IFCHR
                } else if et.is_block_special() {
                    S_IFBLK
                } else {
                    S_IFIFO
                };
                self.push(Node {
                    attr: Attr {
                        mode: t | attr.mode,
                        rdev: makedev(major, minor),
                        ..attr
                    },
                    kind: Kind::Special,
                })
            } else if et.is_file() || et == tar::EntryType::GNUSparse {
                let size = e.size();
                let blob = if size > 0 {
                    let p = self.staging.join(format!("{}", self.next_blob));
                    self.next_blob += 1;
                    let mut f = File::create(&p).map_err(io_at(&p))?;
                    let n = std::io::copy(&mut e, &mut f).map_err(io_at(&p))?;
                    if n != size {
                        return Err(fmt(format!("{full}: truncated ({n} of {size} bytes)")));
                    }
                    Some(p)
                } else {
                    None
                };
                self.push(Node {
                    attr: Attr {
                        mode: S_IFREG | attr.mode,
                        ..attr
                    },
                    kind: Kind::File { blob, size },
                })
            } else {
                // PAX/GNU extension headers are consumed by the tar reader; anything else
                // (e.g. a global header) carries no file.
                tracing::debug!(entry = %full, kind = ?et, "layer entry skipped");
                continue;
            };
            if let Some(kids) = self.children(parent) {
                kids.insert(name, Child { node, layer });
            }
        }
        Ok(())
    }

    /// Adds a regular file at the root (staged from `data`).
    fn add_root_file(&mut self, name: &str, data: &[u8], layer: usize) -> Result<(), ImageError> {
        let p = self.staging.join(format!("{}", self.next_blob));
        self.next_blob += 1;
        std::fs::write(&p, data).map_err(io_at(&p))?;
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let n = self.push(Node {
            attr: Attr {
                mode: S_IFREG | 0o644,
                uid: 0,
                gid: 0,
                mtime,
                rdev: 0,
            },
            kind: Kind::File {
                blob: (!data.is_empty()).then_some(p),
                size: data.len() as u64,
            },
        });
        if let Some(k) = self.children(ROOT) {
            k.insert(name.as_bytes().to_vec(), Child { node: n, layer });
        }
        Ok(())
    }

    /// Writes every inode (depth first, names in byte order); returns the upload jobs and
    /// hard-link groups as [`crate::pack`] does for a directory.
    fn write(
        &self,
        w: &Writer,
        report: &mut PackReport,
    ) -> Result<(Vec<FileJob>, LinkGroups), PackError> {
        let ins = |parent: u64, name: &str, n: &Node, size: u64| {
            w.insert_inode(&NewInode {
                parent,
                name,
                size,
                uid: n.attr.uid,
                gid: n.attr.gid,
                mode: n.attr.mode,
                rdev: n.attr.rdev,
                ctime: n.attr.mtime,
                mtime: n.attr.mtime,
            })
        };
        let root = ins(0, "/", &self.nodes[ROOT], 4096)?;
        report.inodes += 1;
        let mut jobs = Vec::new();
        let mut links: LinkGroups = HashMap::new();
        let mut first: HashMap<usize, u64> = HashMap::new();
        let mut stack = vec![(ROOT, root)];
        while let Some((dir, dir_ino)) = stack.pop() {
            let Kind::Dir(kids) = &self.nodes[dir].kind else {
                continue;
            };
            for (name, c) in kids {
                let n = &self.nodes[c.node];
                let name = String::from_utf8_lossy(name);
                let size = match &n.kind {
                    Kind::Dir(_) => 4096,
                    Kind::File { size, .. } => *size,
                    Kind::Symlink(t) => t.len() as u64,
                    Kind::Special => 0,
                };
                let ino = ins(dir_ino, &name, n, size)?;
                report.inodes += 1;
                match &n.kind {
                    Kind::Dir(_) => stack.push((c.node, ino)),
                    Kind::Symlink(t) => w.insert_extra(ino, t)?,
                    Kind::Special => {}
                    Kind::File { blob, size } => {
                        report.files += 1;
                        if let Some(&target) = first.get(&c.node) {
                            w.add_hardlink(ino, target)?;
                            links.entry(target).or_default().push(ino);
                            continue;
                        }
                        first.insert(c.node, ino);
                        if let Some(path) = blob {
                            jobs.push(FileJob {
                                path: path.clone(),
                                ino,
                                size: *size,
                            });
                        }
                    }
                }
            }
        }
        Ok((jobs, links))
    }
}

/// Removes the staging directory however the import ends.
struct Staging(PathBuf);
impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.0.display(), error = %e, "staging not removed");
            }
        }
    }
}

/// Whether `path` looks like an image rather than a root filesystem: a file (a tarball), or a
/// directory with an `oci-layout` marker.
pub fn is_image(path: &Path) -> bool {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => true,
        Ok(m) if m.is_dir() => path.join("oci-layout").is_file(),
        _ => false,
    }
}

/// What [`pack_image`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImageReport {
    /// The pack.
    pub pack: PackReport,
    /// The layers.
    pub layers: LayerStats,
    /// The generated `.startup.toml`.
    pub startup: String,
}

/// Imports the image at `src` (OCI layout directory or tar, or `docker save` tar) into a new
/// `.fl` at `out`, blocks through `router`.
pub async fn pack_image(
    src: &Path,
    out: &Path,
    router: &Router,
    opts: &ImageOptions,
) -> Result<ImageReport, ImageError> {
    let staging_dir = match &opts.staging {
        Some(d) => d.join(format!(".zos-image.{}", rand::random::<u64>())),
        None => {
            let parent = out
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            parent.join(format!(".zos-image.{}", rand::random::<u64>()))
        }
    };
    std::fs::create_dir_all(&staging_dir).map_err(io_at(&staging_dir))?;
    let _guard = Staging(staging_dir.clone());

    let (src, reference) = (src.to_path_buf(), opts.reference.clone());
    let (tree, startup) = tokio::task::spawn_blocking(move || -> Result<_, ImageError> {
        let source = Source::open(&src)?;
        let image = load(&source, reference.as_deref())?;
        let mut tree = Tree::new(staging_dir);
        for (i, l) in image.layers.iter().enumerate() {
            // Layer 0 is the tree's implicit root; image layers are 1…n.
            let layer = i + 1;
            match l {
                LayerRef::Member(name) => {
                    let (r, _) = source.open_member(name)?;
                    apply_layer(&mut tree, layer, r, name)?;
                }
                LayerRef::Blob(digest) => {
                    let mut r = source.blob(digest)?;
                    apply_layer(&mut tree, layer, &mut r, digest)?;
                    r.check()?;
                }
            }
            tree.stats.layers += 1;
            tracing::info!(layer, entries = tree.stats.entries, "image layer applied");
        }
        let startup = startup_toml(&image.config);
        tree.add_root_file(".startup.toml", startup.as_bytes(), image.layers.len() + 1)?;
        Ok((tree, startup))
    })
    .await
    .map_err(|e| fmt(format!("import task: {e}")))??;
    let layers = tree.stats.clone();
    let tree = std::sync::Arc::new(tree);
    let t = tree.clone();
    let pack = pack_with(out, router, &opts.pack, move |w, report| t.write(w, report)).await?;
    Ok(ImageReport {
        pack,
        layers,
        startup,
    })
}

/// Applies a possibly compressed layer (gzip sniffed by its magic; zstd refused by name).
fn apply_layer<R: Read>(tree: &mut Tree, layer: usize, r: R, name: &str) -> Result<(), ImageError> {
    let mut br = BufReader::with_capacity(256 * 1024, r);
    let head = br.fill_buf().map_err(io_at(Path::new(name)))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        tree.apply(layer, flate2::read::MultiGzDecoder::new(br))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err(fmt(format!("layer {name}: zstd layers are not supported")))
    } else {
        tree.apply(layer, br)
    }
}
