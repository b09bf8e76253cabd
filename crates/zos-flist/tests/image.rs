//! Container image import: OCI layouts (directory and tar) and `docker save` tarballs built
//! here with the tar crate; three layers with whiteouts, an opaque directory, hard links
//! within and across layers, a device node; the flist unpacks (and mounts) to the expected
//! tree and carries `.startup.toml` from the image config.
#![allow(missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use sha2::Digest as _;
use zos_flist::image::{ImageError, ImageOptions, pack_image};
use zos_flist::unpack::{UnpackOptions, unpack};
use zos_flist::{BlockCache, Flist, Router};

const TOOL: usize = 2 * CHUNK + 5;

/// Builds a layer tar.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }
    fn header(kind: tar::EntryType, mode: u32, uid: u64, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid + 1);
        h.set_mtime(1_700_000_000 + uid);
        h.set_size(size);
        h
    }
    fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0, 0);
        self.0
            .append_data(&mut h, path, std::io::empty())
            .expect("dir");
        self
    }
    fn file(mut self, path: &str, data: &[u8], mode: u32, uid: u64) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, uid, data.len() as u64);
        self.0.append_data(&mut h, path, data).expect("file");
        self
    }
    fn link(mut self, kind: tar::EntryType, path: &str, target: &str) -> Self {
        let mut h = Self::header(kind, 0o777, 0, 0);
        self.0.append_link(&mut h, path, target).expect("link");
        self
    }
    fn chardev(mut self, path: &str, major: u32, minor: u32) -> Self {
        let mut h = Self::header(tar::EntryType::Char, 0o666, 0, 0);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        self.0
            .append_data(&mut h, path, std::io::empty())
            .expect("dev");
        self
    }
    /// A raw header, bypassing the builder's path checks (hostile layers).
    fn raw(mut self, path: &[u8], data: &[u8]) -> Self {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..path.len()].copy_from_slice(path);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data).expect("raw");
        self
    }
    fn done(self) -> Vec<u8> {
        self.0.into_inner().expect("tar")
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn layers() -> Vec<Vec<u8>> {
    use tar::EntryType::{Link, Symlink};
    let l1 = Layer::new()
        .dir("etc", 0o755)
        .file("etc/config", b"v1\n", 0o644, 0)
        .dir("bin", 0o755)
        .file("bin/tool", &bytes(TOOL, 1), 0o4755, 0)
        .dir("usr", 0o755)
        .file("usr/h1", b"shared\n", 0o640, 1000)
        .link(Link, "usr/h2", "usr/h1")
        .dir("gone", 0o700)
        .file("gone/file", b"old\n", 0o644, 0)
        .file("del-me", b"bye\n", 0o644, 0)
        .dir("opq", 0o755)
        .file("opq/x", b"x\n", 0o644, 0)
        .file("opq/y", b"y\n", 0o644, 0)
        .dir("keep", 0o755)
        .file("keep/a", b"a\n", 0o600, 33)
        .link(Symlink, "link", "bin/tool")
        .link(Symlink, "abs-link", "/etc/config")
        .dir("dev", 0o755)
        .chardev("dev/null", 1, 3)
        .file("empty", b"", 0o644, 0)
        .done();
    let l2 = Layer::new()
        .file(".wh.del-me", b"", 0o644, 0)
        .file(".wh.gone", b"", 0o644, 0)
        .file(".wh.never-existed", b"", 0o644, 0)
        .dir("opq", 0o750)
        .file("opq/.wh..wh..opq", b"", 0o644, 0)
        .file("opq/z", b"z\n", 0o644, 0)
        .link(Link, "usr/h3", "bin/tool")
        .link(Link, "usr/h4", "usr/h1")
        .file("etc/config", b"v2\n", 0o600, 0)
        .file("keep/b", b"b\n", 0o644, 0)
        .done();
    let l3 = Layer::new()
        .file("usr/h1", b"replaced\n", 0o644, 0)
        .dir("gone", 0o755)
        .file("gone/new", b"new\n", 0o644, 0)
        .file("bin/.wh.tool", b"", 0o644, 0)
        // A whiteout of the same layer's entry does nothing (OCI: lower layers only).
        .file("etc/new", b"same layer\n", 0o644, 0)
        .file("etc/.wh.new", b"", 0o644, 0)
        .done();
    vec![l1, gzip(&l2), l3]
}

const CONFIG: &str = r#"{"architecture":"amd64","os":"linux","config":{
  "Entrypoint":["/bin/tool","--serve"],"Cmd":["--port","80"],
  "Env":["PATH=/usr/bin:/bin","OPTS=a=b"],"WorkingDir":"/srv"},
  "rootfs":{"type":"layers","diff_ids":[]}}"#;

fn sha(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// An OCI image layout under `dir`.
fn write_oci(dir: &Path, layers: &[Vec<u8>]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let put = |data: &[u8]| {
        let h = sha(data);
        std::fs::write(blobs.join(&h), data).expect("blob");
        (format!("sha256:{h}"), data.len())
    };
    let (cfg, cfg_len) = put(CONFIG.as_bytes());
    let layer_descs: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| {
            let gz = l.starts_with(&[0x1f, 0x8b]);
            let (d, n) = put(l);
            serde_json::json!({
                "mediaType": if gz { "application/vnd.oci.image.layer.v1.tar+gzip" } else { "application/vnd.oci.image.layer.v1.tar" },
                "digest": d, "size": n,
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": cfg_len},
        "layers": layer_descs,
    })
    .to_string();
    let (m, m_len) = put(manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": m, "size": m_len,
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).expect("index");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
}

/// A `docker save` tarball: `manifest.json`, the config, one layer per directory (the last
/// one a symlink into `blobs/`, as Docker ≥ 25 writes them).
fn write_docker_save(path: &Path, layers: &[Vec<u8>]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).expect("create"));
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).expect("append");
    };
    add("cfg.json", CONFIG.as_bytes());
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate().take(layers.len() - 1) {
        let n = format!("l{i}/layer.tar");
        add(&n, l);
        names.push(n);
    }
    let last = layers.last().expect("layers");
    let blob = format!("blobs/sha256/{}", sha(last));
    add(&blob, last);
    let manifest = serde_json::json!([{
        "Config": "cfg.json", "RepoTags": ["test/img:latest"],
        "Layers": names.iter().cloned().chain(["last/layer.tar".to_string()]).collect::<Vec<_>>(),
    }]);
    add("manifest.json", manifest.to_string().as_bytes());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    b.append_link(&mut h, "last/layer.tar", format!("../{blob}"))
        .expect("symlink");
    b.into_inner().expect("finish").flush().expect("flush");
}

/// A directory packed into a tar (an OCI layout shipped as one file).
fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).expect("create"));
    b.append_dir_all(".", dir).expect("append");
    b.finish().expect("finish");
}

fn store(tmp: &Path) -> Router {
    Router::from_specs(&[format!("dir://{}", tmp.join("store").display())]).expect("router")
}

/// What the image's tree must be after the three layers (unpacked: specials are skipped).
fn expected(root: &Path) {
    let read = |p: &str| std::fs::read(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let names = |p: &str| {
        let mut v: Vec<String> = std::fs::read_dir(root.join(p))
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(""),
        [
            ".startup.toml",
            "abs-link",
            "bin",
            "dev",
            "empty",
            "etc",
            "gone",
            "keep",
            "link",
            "opq",
            "usr"
        ]
    );
    assert_eq!(names("bin"), Vec::<String>::new(), "bin/tool whited out");
    assert_eq!(names("etc"), ["config", "new"]);
    assert_eq!(read("etc/config"), b"v2\n");
    assert_eq!(read("etc/new"), b"same layer\n");
    assert_eq!(names("gone"), ["new"], "re-created dir has no old children");
    assert_eq!(names("opq"), ["z"], "opaque dir hides x and y");
    assert_eq!(names("keep"), ["a", "b"]);
    assert_eq!(names("usr"), ["h1", "h2", "h3", "h4"]);
    assert_eq!(read("usr/h1"), b"replaced\n");
    assert_eq!(read("usr/h2"), b"shared\n");
    assert_eq!(read("usr/h4"), b"shared\n");
    assert_eq!(
        read("usr/h3"),
        bytes(TOOL, 1),
        "link outlives the whited-out name"
    );
    assert_eq!(read("empty"), b"");
    let meta = |p: &str| std::fs::symlink_metadata(root.join(p)).expect("lstat");
    // h2 and h4 (a hard link across layers) are one file; h3 lost its other name.
    assert_eq!(meta("usr/h2").ino(), meta("usr/h4").ino());
    assert_eq!(meta("usr/h2").nlink(), 2);
    assert_eq!(meta("usr/h3").nlink(), 1);
    assert_ne!(meta("usr/h1").ino(), meta("usr/h2").ino());
    assert_eq!(meta("usr/h3").mode() & 0o7777, 0o4755);
    assert_eq!(meta("etc/config").mode() & 0o7777, 0o600);
    assert_eq!(meta("keep/a").mode() & 0o7777, 0o600);
    assert_eq!(
        std::fs::read_link(root.join("link")).expect("readlink"),
        PathBuf::from("bin/tool")
    );
    if is_root() {
        assert_eq!((meta("usr/h2").uid(), meta("usr/h2").gid()), (1000, 1001));
        assert_eq!(meta("keep/a").uid(), 33);
    }
    let startup: toml::Value =
        toml::from_str(&String::from_utf8_lossy(&read(".startup.toml"))).expect("toml");
    let args = &startup["startup"]["entry"]["args"];
    assert_eq!(
        startup["startup"]["entry"]["name"].as_str(),
        Some("core.system")
    );
    assert_eq!(args["name"].as_str(), Some("/bin/tool"));
    let argv: Vec<&str> = args["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(argv, ["--serve", "--port", "80"]);
    assert_eq!(args["env"]["PATH"].as_str(), Some("/usr/bin:/bin"));
    assert_eq!(args["env"]["OPTS"].as_str(), Some("a=b"));
    assert_eq!(args["dir"].as_str(), Some("/srv"));
}

async fn import_and_unpack(tmp: &Path, src: &Path, tag: &str) -> PathBuf {
    let fl = tmp.join(format!("{tag}.fl"));
    let report = pack_image(src, &fl, &store(tmp), &ImageOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{tag}: {e}"));
    assert_eq!(report.layers.layers, 3);
    assert_eq!(report.layers.opaque_dirs, 1);
    // del-me, gone, bin/tool (never-existed and the same-layer etc/new hide nothing)
    assert_eq!(report.layers.whiteouts, 3);
    let flist = Flist::open(&fl).expect("open");
    // The device node is in the flist with its number (unpack skips specials, as upstream).
    let dev = flist.reader.lookup(1, "dev").expect("q").expect("dev");
    let null = flist
        .reader
        .lookup(dev.ino, "null")
        .expect("q")
        .expect("null");
    assert_eq!((null.mode, null.rdev), (0o020666, 0x103));
    let out = tmp.join(format!("{tag}-out"));
    unpack(
        &flist.reader,
        &BlockCache::new(tmp.join("cache")),
        &flist.router,
        &out,
        &UnpackOptions {
            preserve_ownership: is_root(),
            ..Default::default()
        },
    )
    .await
    .expect("unpack");
    expected(&out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_layout_and_docker_save_import() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let layers = layers();
    let oci = t.join("oci");
    write_oci(&oci, &layers);
    assert!(zos_flist::image::is_image(&oci));
    let a = import_and_unpack(t, &oci, "oci-dir").await;

    let oci_tar = t.join("oci.tar");
    tar_dir(&oci, &oci_tar);
    let b = import_and_unpack(t, &oci_tar, "oci-tar").await;

    let saved = t.join("saved.tar");
    write_docker_save(&saved, &layers);
    let c = import_and_unpack(t, &saved, "docker-save").await;

    // The three sources give the same tree (owners and times included; the generated
    // .startup.toml differs only in mtime).
    let strip = |m: BTreeMap<PathBuf, Entry>| {
        m.into_iter()
            .filter(|(p, _)| p != Path::new(".startup.toml"))
            .collect::<BTreeMap<_, _>>()
    };
    assert_same(
        &strip(snapshot(&a, true, false)),
        &strip(snapshot(&b, true, false)),
    );
    assert_same(
        &strip(snapshot(&a, true, false)),
        &strip(snapshot(&c, true, false)),
    );
    diff_r(&a, &c);

    // A docker save archive with several images needs a reference; a wrong one is refused.
    let opts = ImageOptions {
        reference: Some("other:tag".into()),
        ..Default::default()
    };
    let e = pack_image(&saved, &t.join("x.fl"), &store(t), &opts)
        .await
        .expect_err("unknown tag");
    assert!(e.to_string().contains("other:tag"), "{e}");
    assert!(!t.join("x.fl").exists());
    // No staging directory is left behind.
    assert!(std::fs::read_dir(t).expect("ls").all(|e| {
        !e.expect("e")
            .file_name()
            .to_string_lossy()
            .starts_with(".zos-image")
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_or_broken_images_are_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let base = layers();

    // A layer blob that does not match its digest.
    let oci = t.join("corrupt");
    write_oci(&oci, &base);
    let victim = oci.join("blobs/sha256").join(sha(&base[2]));
    let mut data = std::fs::read(&victim).expect("read");
    let last = data.len() - 1;
    data[last] ^= 1;
    std::fs::write(&victim, data).expect("write");
    let e = pack_image(&oci, &t.join("c.fl"), &store(t), &ImageOptions::default())
        .await
        .expect_err("corrupt blob");
    assert!(matches!(e, ImageError::Digest { .. }), "{e}");
    assert!(!t.join("c.fl").exists());

    // `..` in a layer path.
    let evil = Layer::new().raw(b"../escape", b"x").done();
    let oci = t.join("dotdot");
    write_oci(&oci, &[evil]);
    let e = pack_image(&oci, &t.join("d.fl"), &store(t), &ImageOptions::default())
        .await
        .expect_err("dotdot");
    assert!(e.to_string().contains("'..'"), "{e}");
    assert!(!t.join("escape").exists());

    // A hard link to nothing.
    let dangling = Layer::new()
        .link(tar::EntryType::Link, "a", "missing")
        .done();
    let oci = t.join("dangling");
    write_oci(&oci, &[dangling]);
    let e = pack_image(&oci, &t.join("e.fl"), &store(t), &ImageOptions::default())
        .await
        .expect_err("dangling");
    assert!(e.to_string().contains("hard link to missing"), "{e}");

    // Not an image at all; a truncated tarball.
    let junk = t.join("junk.tar");
    std::fs::write(&junk, b"definitely not a tar archive, just some bytes").expect("write");
    assert!(
        pack_image(&junk, &t.join("f.fl"), &store(t), &ImageOptions::default())
            .await
            .is_err()
    );
    let saved = t.join("saved.tar");
    write_docker_save(&saved, &base);
    let bytes = std::fs::read(&saved).expect("read");
    std::fs::write(&saved, &bytes[..bytes.len() / 2]).expect("truncate");
    assert!(
        pack_image(&saved, &t.join("g.fl"), &store(t), &ImageOptions::default())
            .await
            .is_err()
    );
}

/// Unmounts on drop, even when an assertion fails.
struct Mounted(Option<zos_flist::fs::MountHandle>);
impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.unmount();
        }
    }
}

#[test]
fn imported_image_mounts() {
    let ok = Path::new("/dev/fuse").exists()
        && is_root()
        && std::process::Command::new("fusermount3")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIP: FUSE test needs root, /dev/fuse and fusermount3 (apt-get install fuse3)");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let oci = t.join("oci");
    write_oci(&oci, &layers());
    let fl = t.join("img.fl");
    rt.block_on(pack_image(&oci, &fl, &store(t), &ImageOptions::default()))
        .expect("import");
    let flist = Flist::open(&fl).expect("open");
    let mnt = t.join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let opts = zos_flist::fs::MountOptions::default();
    let fs = zos_flist::fs::FlistFs::new(
        flist.reader.clone(),
        flist.router.clone(),
        Arc::new(BlockCache::new(t.join("cache"))),
        rt.handle().clone(),
        &opts,
    );
    let _m = Mounted(Some(zos_flist::fs::mount(fs, &mnt, &opts).expect("mount")));
    expected(&mnt);
    // The device node is visible through lookup with its number.
    let null = std::fs::symlink_metadata(mnt.join("dev/null")).expect("lstat");
    assert_eq!((null.mode(), null.rdev()), (0o020666, 0x103));
}
