//! The persistent namespace descriptor `<indexdir>/<ns>/zdb-namespace`.
//!
//! A small line-oriented text file ending with a CRC32 line, replaced atomically (write a
//! temporary file, fsync, rename, fsync the directory), so a crash leaves the old or the new
//! descriptor, never a mix. The password is stored hex-encoded (as upstream, not hashed:
//! `NSINFO` shows it to the admin); the encryption secret is never stored.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::Mode;
use crate::store::{StoreError, sync_dir};

/// File name inside the namespace's index directory.
pub const DESCRIPTOR_FILE: &str = "zdb-namespace";

/// Namespace settings that survive a restart.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Descriptor {
    /// Index mode.
    pub mode: Mode,
    /// Access password, if any.
    pub password: Option<String>,
    /// Readable without the password.
    pub public: bool,
    /// Write once: no overwrite, no delete.
    pub worm: bool,
    /// Payload byte limit, 0 = unlimited.
    pub maxsize: u64,
    /// Read-only.
    pub lock: bool,
    /// No access.
    pub freeze: bool,
    /// Encryption salt and key-check value, when values are sealed.
    pub encryption: Option<([u8; 16], [u8; 16])>,
}

fn bit(b: bool) -> &'static str {
    if b { "1" } else { "0" }
}

impl Descriptor {
    fn render(&self) -> String {
        let mut s = String::from("zdb-namespace 1\n");
        s += &format!("mode {}\n", self.mode.name());
        s += &format!(
            "password {}\n",
            self.password
                .as_ref()
                .map_or_else(|| "-".to_string(), |p| hex::encode(p.as_bytes()))
        );
        s += &format!("public {}\nworm {}\n", bit(self.public), bit(self.worm));
        s += &format!(
            "maxsize {}\nlock {}\nfreeze {}\n",
            self.maxsize,
            bit(self.lock),
            bit(self.freeze)
        );
        match &self.encryption {
            Some((salt, check)) => {
                s += &format!("encryption {} {}\n", hex::encode(salt), hex::encode(check))
            }
            None => s += "encryption -\n",
        }
        let crc = crc32fast::hash(s.as_bytes());
        s += &format!("crc {crc:08x}\n");
        s
    }

    fn parse(text: &str) -> Option<Descriptor> {
        let body_end = text.rfind("crc ")?;
        let (body, crc_line) = text.split_at(body_end);
        let crc = u32::from_str_radix(crc_line.trim().strip_prefix("crc ")?, 16).ok()?;
        if crc32fast::hash(body.as_bytes()) != crc {
            return None;
        }
        let mut lines = body.lines();
        if lines.next()? != "zdb-namespace 1" {
            return None;
        }
        let mut d = Descriptor::default();
        for line in lines {
            let (k, v) = line.split_once(' ')?;
            match k {
                "mode" => d.mode = Mode::from_name(v)?,
                "password" if v == "-" => d.password = None,
                "password" => d.password = Some(String::from_utf8(hex::decode(v).ok()?).ok()?),
                "public" => d.public = v == "1",
                "worm" => d.worm = v == "1",
                "maxsize" => d.maxsize = v.parse().ok()?,
                "lock" => d.lock = v == "1",
                "freeze" => d.freeze = v == "1",
                "encryption" if v == "-" => d.encryption = None,
                "encryption" => {
                    let (s, c) = v.split_once(' ')?;
                    d.encryption = Some((
                        hex::decode(s).ok()?.try_into().ok()?,
                        hex::decode(c).ok()?.try_into().ok()?,
                    ));
                }
                _ => {} // Unknown lines from a newer version are ignored.
            }
        }
        Some(d)
    }

    /// The descriptor as its file holds it (replication sends it to mirrors).
    pub fn to_text(&self) -> String {
        self.render()
    }

    /// Parses [`Descriptor::to_text`]; `None` if damaged.
    pub fn from_text(text: &str) -> Option<Descriptor> {
        Descriptor::parse(text)
    }

    /// Reads the descriptor of the namespace whose index directory is `dir`.
    /// `Ok(None)` if there is none yet.
    pub fn load(dir: &Path) -> Result<Option<Descriptor>, StoreError> {
        let path = dir.join(DESCRIPTOR_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => Descriptor::parse(&text)
                .map(Some)
                .ok_or(StoreError::Corrupt {
                    path,
                    offset: 0,
                    what: "namespace descriptor fails its checksum",
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io {
                op: "read",
                path,
                source,
            }),
        }
    }

    /// Replaces the descriptor atomically.
    pub fn save(&self, dir: &Path) -> Result<(), StoreError> {
        let path = dir.join(DESCRIPTOR_FILE);
        let tmp = dir.join(format!("{DESCRIPTOR_FILE}.tmp"));
        let io = |op: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| StoreError::Io {
                op,
                path: p,
                source,
            }
        };
        let mut f = fs::File::create(&tmp).map_err(io("create", &tmp))?;
        // It holds the namespace password: owner only.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(io("chmod", &tmp))?;
        f.write_all(self.render().as_bytes())
            .map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        fs::rename(&tmp, &path).map_err(io("rename", &path))?;
        sync_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Descriptor::load(dir.path()).unwrap(), None);
        let d = Descriptor {
            mode: Mode::Seq,
            password: Some("pa ss\nword".into()),
            public: true,
            worm: true,
            maxsize: 42,
            lock: true,
            freeze: false,
            encryption: Some(([1; 16], [2; 16])),
        };
        d.save(dir.path()).unwrap();
        assert_eq!(Descriptor::load(dir.path()).unwrap(), Some(d));
        let p = dir.path().join(DESCRIPTOR_FILE);
        let t = fs::read_to_string(&p)
            .unwrap()
            .replace("maxsize 42", "maxsize 43");
        fs::write(&p, t).unwrap();
        assert!(Descriptor::load(dir.path()).is_err());
    }
}
