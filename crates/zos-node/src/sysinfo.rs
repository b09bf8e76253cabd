//! Host facts read from `/proc` and `/sys` (no shell-outs): interfaces and addresses, DMI,
//! hypervisor, virtualization support. Missing files give empty values, never errors: these
//! are informational.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv6Addr;

use serde_json::{Value, json};

fn read_trim(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// IPv6 addresses per interface from `/proc/net/if_inet6` (scope 0 = global, 0x20 = link).
fn ipv6_by_iface() -> BTreeMap<String, Vec<(Ipv6Addr, u8, u8)>> {
    let mut out: BTreeMap<String, Vec<(Ipv6Addr, u8, u8)>> = BTreeMap::new();
    let text = fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[0].len() != 32 {
            continue;
        }
        let Ok(bits) = u128::from_str_radix(f[0], 16) else {
            continue;
        };
        let prefix = u8::from_str_radix(f[2], 16).unwrap_or(0);
        let scope = u8::from_str_radix(f[3], 16).unwrap_or(0xff);
        out.entry(f[5].to_string())
            .or_default()
            .push((Ipv6Addr::from(bits), prefix, scope));
    }
    out
}

/// Local IPv4 addresses (not loopback) from `/proc/net/fib_trie`.
fn local_ipv4() -> Vec<String> {
    let text = fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
    let mut prev = "";
    let mut out = Vec::new();
    for line in text.lines() {
        if line.contains("/32 host LOCAL") {
            if let Some(ip) = prev.trim().strip_prefix("|-- ") {
                if !ip.starts_with("127.") && !out.iter().any(|x| x == ip) {
                    out.push(ip.to_string());
                }
            }
        }
        prev = line;
    }
    out
}

/// The node's addresses: local IPv4 and global IPv6, loopback excluded.
pub fn host_ips() -> Vec<String> {
    let mut v = local_ipv4();
    for (iface, addrs) in ipv6_by_iface() {
        if iface == "lo" {
            continue;
        }
        for (a, _, scope) in addrs {
            if scope == 0 {
                v.push(a.to_string());
            }
        }
    }
    v
}

/// Whether a global IPv6 address exists on a non-loopback interface.
pub fn has_global_ipv6() -> bool {
    ipv6_by_iface()
        .iter()
        .any(|(i, a)| i != "lo" && a.iter().any(|(_, _, s)| *s == 0))
}

/// Interfaces with MAC and IPv6 addresses: `{ifname: {ips: [..], mac}}`.
pub fn interfaces() -> Value {
    let v6 = ipv6_by_iface();
    let mut out = serde_json::Map::new();
    let Ok(dir) = fs::read_dir("/sys/class/net") else {
        return Value::Object(out);
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let mac = read_trim(&format!("/sys/class/net/{name}/address"));
        let ips: Vec<String> = v6
            .get(&name)
            .map(|a| a.iter().map(|(ip, p, _)| format!("{ip}/{p}")).collect())
            .unwrap_or_default();
        out.insert(name, json!({ "ips": ips, "mac": mac }));
    }
    Value::Object(out)
}

/// Registration view of interfaces: (name, mac, ips).
pub fn interface_list() -> Vec<(String, String, Vec<String>)> {
    let mut v = Vec::new();
    if let Value::Object(m) = interfaces() {
        for (name, i) in m {
            if name == "lo" {
                continue;
            }
            let mac = i["mac"].as_str().unwrap_or_default().to_string();
            let ips = i["ips"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            v.push((name, mac, ips));
        }
    }
    v
}

/// DMI facts from `/sys/class/dmi/id` (a flat subset of upstream's DMI sections).
pub fn dmi() -> Value {
    let mut m = serde_json::Map::new();
    for key in [
        "sys_vendor",
        "product_name",
        "product_version",
        "board_vendor",
        "board_name",
        "bios_vendor",
        "bios_version",
        "bios_date",
        "chassis_vendor",
    ] {
        m.insert(
            key.into(),
            json!(read_trim(&format!("/sys/class/dmi/id/{key}"))),
        );
    }
    json!({ "tooling": { "source": "/sys/class/dmi/id" }, "sections": m })
}

/// Board serial number, when readable.
pub fn board_serial() -> String {
    read_trim("/sys/class/dmi/id/board_serial")
}

/// The hypervisor this node runs under, `""` on bare metal.
pub fn hypervisor() -> String {
    let t = read_trim("/sys/hypervisor/type");
    if !t.is_empty() {
        return t;
    }
    let virtual_cpu = fs::read_to_string("/proc/cpuinfo")
        .map(|c| {
            c.lines()
                .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"))
        })
        .unwrap_or(false);
    if !virtual_cpu {
        return String::new();
    }
    let vendor = read_trim("/sys/class/dmi/id/sys_vendor").to_lowercase();
    match vendor.as_str() {
        "" => "unknown".into(),
        v if v.contains("qemu") => "kvm".into(),
        v => v.to_string(),
    }
}

/// Whether the node runs virtualized.
pub fn virtualized() -> bool {
    !hypervisor().is_empty()
}

/// Whether hardware virtualization is available to run VMs (`/dev/kvm`).
pub fn has_kvm() -> bool {
    std::path::Path::new("/dev/kvm").exists()
}

/// Seconds since boot.
pub fn uptime() -> u64 {
    read_trim("/proc/uptime")
        .split('.')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_facts_do_not_panic_and_have_loopback_excluded() {
        assert!(
            !host_ips()
                .iter()
                .any(|i| i.starts_with("127.") || i == "::1")
        );
        let ifs = interfaces();
        assert!(ifs.get("lo").is_some(), "{ifs}");
        assert!(interface_list().iter().all(|(n, _, _)| n != "lo"));
        let _ = (dmi(), hypervisor(), has_kvm(), has_global_ipv6());
        assert!(uptime() > 0);
    }
}
