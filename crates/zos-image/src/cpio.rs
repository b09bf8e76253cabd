//! cpio "newc" archives (the initramfs format the kernel unpacks): a writer for the image
//! build and a reader that lists an archive (tests, `zos image inspect`). The reader never
//! panics on untrusted bytes: every length is checked.

use std::io::{self, Write};

/// Errors reading an archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// The bytes are not a newc archive (or are cut short).
    #[error("cpio archive: {0}")]
    Format(String),
}

/// One entry of an archive as listed by [`list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path without a leading `./` or `/`.
    pub name: String,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    /// Size of the data (the target's length for a symlink).
    pub size: u64,
    /// Symlink target, when the entry is one.
    pub link: Option<String>,
}

/// File type bits of `st_mode`.
pub const S_IFMT: u32 = 0o170000;
/// Directory.
pub const S_IFDIR: u32 = 0o040000;
/// Regular file.
pub const S_IFREG: u32 = 0o100000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120000;
/// Character device.
pub const S_IFCHR: u32 = 0o020000;

/// Writes a newc archive: directories, files, symlinks and device nodes, then the trailer.
/// Entries are written in call order; the kernel creates parents only if they were listed
/// before, so callers add directories first.
pub struct Writer<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> Writer<W> {
    /// A writer over `out`.
    pub fn new(out: W) -> Self {
        Writer {
            out,
            ino: 1,
            written: 0,
        }
    }

    fn header(&mut self, name: &str, mode: u32, size: u64, rdev: (u32, u32)) -> io::Result<()> {
        let size = u32::try_from(size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file over 4 GiB"))?;
        let namesize = name.len() + 1;
        let namesize32 = u32::try_from(namesize)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name too long"))?;
        let nlink = if mode & S_IFMT == S_IFDIR { 2 } else { 1 };
        let h = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize32, 0
        );
        self.ino += 1;
        self.put(h.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    /// A directory (mode: permission bits).
    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.header(name, S_IFDIR | (perm & 0o7777), 0, (0, 0))
    }

    /// A regular file with `data`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.header(name, S_IFREG | (perm & 0o7777), data.len() as u64, (0, 0))?;
        self.put(data)?;
        self.pad()
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.header(name, S_IFLNK | 0o777, target.len() as u64, (0, 0))?;
        self.put(target.as_bytes())?;
        self.pad()
    }

    /// A character device node (`/dev/console` must exist before devtmpfs is mounted, so
    /// that the kernel can give init its console).
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.header(name, S_IFCHR | (perm & 0o7777), 0, (major, minor))
    }

    /// Writes the trailer and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0, (0, 0))?;
        // Concatenated archives (the site overlay) start on a 512-byte boundary by custom.
        let n = (512 - (self.written % 512) as usize) % 512;
        self.put(&vec![0u8; n])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn hex_field(b: &[u8], at: usize) -> Result<u64, CpioError> {
    let f = b
        .get(at..at + 8)
        .ok_or_else(|| CpioError::Format("header cut short".into()))?;
    let s = std::str::from_utf8(f).map_err(|_| CpioError::Format("header not ASCII".into()))?;
    u64::from_str_radix(s, 16).map_err(|_| CpioError::Format(format!("bad hex field {s:?}")))
}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// Lists every entry of one or more concatenated newc archives (zero padding between them is
/// skipped, as the kernel does). Gzip-compressed input is not handled here: see
/// [`crate::build::read_initramfs`].
pub fn list(bytes: &[u8]) -> Result<Vec<Entry>, CpioError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        if bytes[pos] == 0 {
            pos += 1;
            continue;
        }
        let h = bytes
            .get(pos..pos + 110)
            .ok_or_else(|| CpioError::Format(format!("header cut short at {pos}")))?;
        if &h[..6] != b"070701" && &h[..6] != b"070702" {
            return Err(CpioError::Format(format!("bad magic at {pos}")));
        }
        let mode = u32::try_from(hex_field(h, 14)?).unwrap_or(0);
        let size =
            usize::try_from(hex_field(h, 54)?).map_err(|_| CpioError::Format("size".into()))?;
        let namesize =
            usize::try_from(hex_field(h, 94)?).map_err(|_| CpioError::Format("namesize".into()))?;
        let name_start = pos + 110;
        let name_raw = bytes
            .get(name_start..name_start.saturating_add(namesize))
            .ok_or_else(|| CpioError::Format("name cut short".into()))?;
        let name =
            String::from_utf8_lossy(name_raw.strip_suffix(&[0]).unwrap_or(name_raw)).into_owned();
        let data_start = align4(name_start.saturating_add(namesize));
        let data = bytes
            .get(data_start..data_start.saturating_add(size))
            .ok_or_else(|| CpioError::Format(format!("data of {name} cut short")))?;
        pos = align4(data_start.saturating_add(size));
        if name == "TRAILER!!!" {
            continue;
        }
        let link = (mode & S_IFMT == S_IFLNK).then(|| String::from_utf8_lossy(data).into_owned());
        let name = name
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_string();
        if name.is_empty() || name == "." {
            continue;
        }
        out.push(Entry {
            name,
            mode,
            size: size as u64,
            link,
        });
    }
    Ok(out)
}

/// The data of `name` in a (possibly concatenated) archive; the last occurrence wins, as when
/// the kernel unpacks.
pub fn read_file(bytes: &[u8], name: &str) -> Result<Option<Vec<u8>>, CpioError> {
    let mut found = None;
    let mut pos = 0usize;
    while pos < bytes.len() {
        if bytes[pos] == 0 {
            pos += 1;
            continue;
        }
        let h = bytes
            .get(pos..pos + 110)
            .ok_or_else(|| CpioError::Format("header cut short".into()))?;
        let size =
            usize::try_from(hex_field(h, 54)?).map_err(|_| CpioError::Format("size".into()))?;
        let namesize =
            usize::try_from(hex_field(h, 94)?).map_err(|_| CpioError::Format("namesize".into()))?;
        let name_start = pos + 110;
        let raw = bytes
            .get(name_start..name_start.saturating_add(namesize))
            .ok_or_else(|| CpioError::Format("name cut short".into()))?;
        let n = String::from_utf8_lossy(raw.strip_suffix(&[0]).unwrap_or(raw)).into_owned();
        let data_start = align4(name_start.saturating_add(namesize));
        let data = bytes
            .get(data_start..data_start.saturating_add(size))
            .ok_or_else(|| CpioError::Format("data cut short".into()))?;
        if n.trim_start_matches("./").trim_start_matches('/') == name {
            found = Some(data.to_vec());
        }
        pos = align4(data_start.saturating_add(size));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_and_concatenation() {
        let mut w = Writer::new(Vec::new());
        w.dir("etc", 0o755).unwrap();
        w.file("etc/a", 0o644, b"hello").unwrap();
        w.symlink("sbin", "bin").unwrap();
        w.char_dev("console", 0o600, 5, 1).unwrap();
        let mut a = w.finish().unwrap();
        assert_eq!(a.len() % 512, 0);
        let mut w2 = Writer::new(Vec::new());
        w2.file("etc/a", 0o600, b"over").unwrap();
        a.extend(w2.finish().unwrap());
        let l = list(&a).unwrap();
        let names: Vec<_> = l.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["etc", "etc/a", "sbin", "console", "etc/a"]);
        assert_eq!(l[2].link.as_deref(), Some("bin"));
        assert_eq!(read_file(&a, "etc/a").unwrap().unwrap(), b"over");
    }

    proptest::proptest! {
        #[test]
        fn list_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = list(&b);
            let _ = read_file(&b, "x");
        }
    }
}
