//! The NoCloud `cidata` image (upstream `pkg/vm/cloudinit`): a 2 MiB FAT volume labelled
//! `cidata` with `/meta-data`, `/network-config` (v2), `/user-data` (`#cloud-config`) and
//! `/zosrc` (the entrypoint and env as shell exports), written in Rust with `fatfs`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Upstream's image size.
pub const IMAGE_SIZE: u64 = 2 << 20;
/// Upstream's nameservers.
pub const NAMESERVERS: [&str; 3] = ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888"];

/// An interface of a VM: the private one (`eth0`), and the public one (`eth1`) of a VM with
/// a public IP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    /// Guest interface name (`eth0`).
    pub name: String,
    /// MAC (`aa:bb:…`).
    pub mac: String,
    /// `a.b.c.d/n` (may be empty: a public NIC with only IPv6).
    pub address: String,
    /// An IPv6 `addr/64` (the public NIC's SLAAC address), or empty.
    pub address6: String,
    /// IPv4 gateway (the network resource's `.1`, or the farm's for the public NIC), or
    /// empty: no default route through this interface.
    pub gateway: String,
    /// Extra routes `(destination, via)`.
    pub routes: Vec<(String, String)>,
}

/// What the guest is told.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudConfig {
    /// Instance id (the workload id).
    pub instance_id: String,
    /// Hostname (the workload name).
    pub hostname: String,
    /// Interfaces.
    pub interfaces: Vec<Interface>,
    /// Root's SSH keys (env `SSH_KEY`, split on newlines and commas).
    pub ssh_keys: Vec<String>,
    /// Shares `(tag, mountpoint)`.
    pub mounts: Vec<(String, String)>,
    /// Entrypoint.
    pub entrypoint: String,
    /// Environment.
    pub env: BTreeMap<String, String>,
}

/// Single-quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn yaml_str(s: &str) -> String {
    // JSON strings are valid YAML double-quoted scalars.
    serde_json::Value::String(s.to_string()).to_string()
}

impl CloudConfig {
    /// SSH keys from a workload env (`SSH_KEY`).
    pub fn keys_from_env(env: &BTreeMap<String, String>) -> Vec<String> {
        env.get("SSH_KEY")
            .map(|k| {
                k.split(['\n', ','])
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `/meta-data`.
    pub fn meta_data(&self) -> String {
        format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            self.instance_id, self.hostname
        )
    }

    /// `/network-config` (network config v2).
    pub fn network_config(&self) -> String {
        let mut s = String::from("version: 2\nethernets:\n");
        for i in &self.interfaces {
            s += &format!(
                "  {}:\n    match:\n      macaddress: {}\n    set-name: {}\n    addresses:\n",
                i.name, i.mac, i.name
            );
            for a in [&i.address, &i.address6] {
                if !a.is_empty() {
                    s += &format!("    - {a}\n");
                }
            }
            if !i.gateway.is_empty() {
                s += &format!("    gateway4: {}\n", i.gateway);
            }
            if !i.routes.is_empty() {
                s += "    routes:\n";
                for (to, via) in &i.routes {
                    s += &format!("    - to: {to}\n      via: {via}\n");
                }
            }
            s += "    nameservers:\n      addresses:\n";
            for n in NAMESERVERS {
                s += &format!("      - {n}\n");
            }
        }
        s
    }

    /// `/user-data`.
    pub fn user_data(&self) -> String {
        let mut s = String::from("#cloud-config\nusers:\n- name: root\n  ssh_authorized_keys:\n");
        for k in &self.ssh_keys {
            s += &format!("  - {}\n", yaml_str(k));
        }
        if !self.mounts.is_empty() {
            s += "mounts:\n";
            for (tag, path) in &self.mounts {
                s += &format!(
                    "- [{}, {}, 9p, \"trans=virtio,version=9p2000.L\", \"0\", \"0\"]\n",
                    yaml_str(tag),
                    yaml_str(path)
                );
            }
        }
        s
    }

    /// `/zosrc`: `export K='v'` per env var, then the entrypoint as `ZOS_ENTRYPOINT`.
    pub fn zosrc(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.env {
            s += &format!("export {k}={}\n", shell_quote(v));
        }
        s += &format!("export ZOS_ENTRYPOINT={}\n", shell_quote(&self.entrypoint));
        s
    }

    /// Writes the image to `path` (replaced atomically).
    pub fn write_image(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        {
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.set_len(IMAGE_SIZE)?;
            fatfs::format_volume(
                &mut f,
                fatfs::FormatVolumeOptions::new().volume_label(*b"cidata     "),
            )?;
            let fs = fatfs::FileSystem::new(&mut f, fatfs::FsOptions::new())?;
            {
                let root = fs.root_dir();
                for (name, body) in [
                    ("meta-data", self.meta_data()),
                    ("network-config", self.network_config()),
                    ("user-data", self.user_data()),
                    ("zosrc", self.zosrc()),
                ] {
                    root.create_file(name)?.write_all(body.as_bytes())?;
                }
            }
            fs.unmount()?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    }
}

/// Env names the guest shell can export (anything else is refused rather than mangled).
pub fn valid_env_name(k: &str) -> bool {
    let mut c = k.chars();
    matches!(c.next(), Some(ch) if ch == '_' || ch.is_ascii_alphabetic())
        && c.all(|ch| ch == '_' || ch.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Read;

    fn cfg() -> CloudConfig {
        CloudConfig {
            instance_id: "3-1-vm".into(),
            hostname: "vm".into(),
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "aa:bb:cc:dd:ee:ff".into(),
                address: "10.20.2.5/24".into(),
                gateway: "10.20.2.1".into(),
                routes: vec![("10.20.0.0/16".into(), "10.20.2.1".into())],
                ..Default::default()
            }],
            ssh_keys: CloudConfig::keys_from_env(
                &[(
                    "SSH_KEY".to_string(),
                    "ssh-ed25519 A a@b,\nssh-rsa B".to_string(),
                )]
                .into(),
            ),
            mounts: vec![("data".into(), "/data".into())],
            entrypoint: "/bin/sh -c 'echo hi'".into(),
            env: [("HELLO".to_string(), "it's me".to_string())].into(),
        }
    }

    #[test]
    fn files_have_the_upstream_shapes() {
        let c = cfg();
        assert_eq!(c.ssh_keys, ["ssh-ed25519 A a@b", "ssh-rsa B"]);
        assert_eq!(c.meta_data(), "instance-id: 3-1-vm\nlocal-hostname: vm\n");
        assert_eq!(
            c.zosrc(),
            "export HELLO='it'\\''s me'\nexport ZOS_ENTRYPOINT='/bin/sh -c '\\''echo hi'\\'''\n"
        );
        let n = c.network_config();
        assert!(
            n.contains("macaddress: aa:bb:cc:dd:ee:ff") && n.contains("- 10.20.2.5/24"),
            "{n}"
        );
        assert!(
            n.contains("- to: 10.20.0.0/16\n      via: 10.20.2.1"),
            "{n}"
        );
        assert!(
            c.user_data()
                .starts_with("#cloud-config\nusers:\n- name: root\n")
        );
        // A public NIC: its own MAC, both addresses, the farm's gateway as the default route;
        // the private NIC then has routes only.
        let mut p = cfg();
        p.interfaces[0].gateway.clear();
        p.interfaces.push(Interface {
            name: "eth1".into(),
            mac: "ee:cb:5b:ec:5f:85".into(),
            address: "203.0.113.10/24".into(),
            address6: "2001:db8:1:0:eccb:5bff:feec:5f85/64".into(),
            gateway: "203.0.113.1".into(),
            routes: vec![],
        });
        let n = p.network_config();
        assert_eq!(n.matches("gateway4:").count(), 1, "{n}");
        assert!(
            n.contains("  eth1:\n    match:\n      macaddress: ee:cb:5b:ec:5f:85\n    set-name: eth1\n    addresses:\n    - 203.0.113.10/24\n    - 2001:db8:1:0:eccb:5bff:feec:5f85/64\n    gateway4: 203.0.113.1\n"),
            "{n}"
        );
        assert!(valid_env_name("A_1") && !valid_env_name("1A") && !valid_env_name("A-B"));
    }

    #[test]
    fn image_is_a_fat_volume_labelled_cidata_with_the_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cidata.img");
        cfg().write_image(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), IMAGE_SIZE);
        let mut f = std::fs::File::open(&p).unwrap();
        let fs = fatfs::FileSystem::new(&mut f, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label(), "cidata");
        let mut s = String::new();
        fs.root_dir()
            .open_file("zosrc")
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert!(s.contains("export HELLO="));
    }
}
