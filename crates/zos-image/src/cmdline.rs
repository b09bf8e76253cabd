//! The node's configuration from the kernel command line, as upstream: `farmer_id`, `runmode`,
//! `version`, `ledger` (upstream's `substrate`), `relay`, plus the network and pins this
//! implementation needs. Unknown words are ignored (the kernel's own are mixed in).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// How the node gets its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetConfig {
    /// DHCP on the first NIC with a link (default).
    Dhcp,
    /// `zos.ip=ADDR/PREFIX zos.gw=GW` on `zos.nic=NAME` (default: the first NIC).
    Static {
        /// Address.
        addr: Ipv4Addr,
        /// Prefix length.
        prefix: u8,
        /// Default gateway.
        gateway: Option<Ipv4Addr>,
    },
}

/// Upstream's run modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// `prod`, `production` (default).
    Production,
    /// `dev`, `development`.
    Development,
    /// `test`, `testing`.
    Testing,
    /// `qa`.
    Qa,
}

impl RunMode {
    /// The network name keys are pinned under (`main`, `dev`, `test`, `qa`).
    pub fn network(self) -> &'static str {
        match self {
            RunMode::Production => "main",
            RunMode::Development => "dev",
            RunMode::Testing => "test",
            RunMode::Qa => "qa",
        }
    }
}

/// What the command line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// `farmer_id`; `None`: an orphan node (says so and waits).
    pub farm: Option<u32>,
    /// `runmode`.
    pub runmode: RunMode,
    /// `version` (`v3`, `v3light`).
    pub version: String,
    /// `ledger=URL` (also upstream's `substrate=`), repeatable or comma-separated.
    pub ledgers: Vec<String>,
    /// `relay=URL`, repeatable or comma-separated.
    pub relays: Vec<String>,
    /// `relay_domain=HOST:PORT`: what the node's twin names as its relay.
    pub relay_domains: Vec<String>,
    /// `ledger_producer=HEX`: the producer key to pin.
    pub ledger_producer: Option<String>,
    /// `admin_twin=ID`, repeatable.
    pub admin_twins: Vec<u32>,
    /// Network.
    pub net: NetConfig,
    /// `zos.nic=NAME`.
    pub nic: Option<String>,
    /// Self-upgrades: `zos.upgrade_hub=URL zos.upgrade_twin=N` (both, or no upgrades),
    /// `zos.upgrade_interval=SECS`, `zos.upgrade_deadline=SECS`.
    pub upgrade: Option<UpgradeConfig>,
    /// Problems found (bad values): said on the console, the rest of the line still applies.
    pub warnings: Vec<String>,
}

/// Where releases come from and how fast a node checks and judges them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeConfig {
    /// The flist hub (`zos hub serve`, upstream's hub).
    pub hub: String,
    /// The hub namespace (twin) releases are published under.
    pub twin: u32,
    /// How often the node reads the ledger's version (None: the node's default).
    pub interval_secs: Option<u64>,
    /// How long a new release has to become healthy (None: the node's default).
    pub deadline_secs: Option<u64>,
}

fn list(v: &str) -> impl Iterator<Item = String> + '_ {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Parses `/proc/cmdline`.
pub fn parse(cmdline: &str) -> BootConfig {
    let mut kv: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for w in cmdline.split_ascii_whitespace() {
        let (k, v) = w.split_once('=').unwrap_or((w, ""));
        kv.entry(k).or_default().push(v);
    }
    let last = |k: &str| kv.get(k).and_then(|v| v.last().copied());
    let all = |k: &str| kv.get(k).cloned().unwrap_or_default();
    let mut warnings = Vec::new();
    let farm = match last("farmer_id") {
        None => None,
        Some(v) => match v.parse::<u32>() {
            Ok(f) => Some(f),
            Err(_) => {
                warnings.push(format!("farmer_id={v:?} is not a number"));
                None
            }
        },
    };
    let runmode = match last("runmode").unwrap_or("prod") {
        "dev" | "development" => RunMode::Development,
        "test" | "testing" => RunMode::Testing,
        "qa" => RunMode::Qa,
        "prod" | "production" => RunMode::Production,
        other => {
            warnings.push(format!("unknown runmode {other:?}: production"));
            RunMode::Production
        }
    };
    let mut ledgers: Vec<String> = all("ledger").into_iter().flat_map(list).collect();
    ledgers.extend(all("substrate").into_iter().flat_map(list));
    let relays = all("relay").into_iter().flat_map(list).collect();
    let relay_domains = all("relay_domain").into_iter().flat_map(list).collect();
    let mut admin_twins = Vec::new();
    for v in all("admin_twin").into_iter().flat_map(list) {
        match v.parse() {
            Ok(t) => admin_twins.push(t),
            Err(_) => warnings.push(format!("admin_twin={v:?} is not a number")),
        }
    }
    let net = match last("zos.ip") {
        None => NetConfig::Dhcp,
        Some(v) => {
            let parsed = v.split_once('/').and_then(|(a, p)| {
                Some((
                    a.parse::<Ipv4Addr>().ok()?,
                    p.parse::<u8>().ok().filter(|p| *p <= 32)?,
                ))
            });
            match parsed {
                Some((addr, prefix)) => {
                    let gateway = match last("zos.gw") {
                        Some(g) => match g.parse() {
                            Ok(g) => Some(g),
                            Err(_) => {
                                warnings.push(format!("zos.gw={g:?} is not an IPv4 address"));
                                None
                            }
                        },
                        None => None,
                    };
                    NetConfig::Static {
                        addr,
                        prefix,
                        gateway,
                    }
                }
                None => {
                    warnings.push(format!("zos.ip={v:?} is not ADDR/PREFIX: using DHCP"));
                    NetConfig::Dhcp
                }
            }
        }
    };
    let mut secs = |k: &str| match last(k) {
        None => None,
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                warnings.push(format!("{k}={v:?} is not a positive number of seconds"));
                None
            }
        },
    };
    let (interval_secs, deadline_secs) =
        (secs("zos.upgrade_interval"), secs("zos.upgrade_deadline"));
    let upgrade = match (last("zos.upgrade_hub"), last("zos.upgrade_twin")) {
        (None, None) => None,
        (Some(hub), Some(t)) => match t.parse::<u32>() {
            Ok(twin) if !hub.is_empty() => Some(UpgradeConfig {
                hub: hub.to_string(),
                twin,
                interval_secs,
                deadline_secs,
            }),
            _ => {
                warnings.push(format!(
                    "zos.upgrade_hub={hub:?} zos.upgrade_twin={t:?}: no self-upgrades"
                ));
                None
            }
        },
        _ => {
            warnings
                .push("self-upgrades need both zos.upgrade_hub and zos.upgrade_twin: none".into());
            None
        }
    };
    BootConfig {
        upgrade,
        farm,
        runmode,
        version: last("version").unwrap_or("v3").to_string(),
        ledgers,
        relays,
        relay_domains,
        ledger_producer: last("ledger_producer").map(str::to_string),
        admin_twins,
        net,
        nic: last("zos.nic").map(str::to_string),
        warnings,
    }
}

/// What every boot medium (`zos image usb|iso|pxe`) puts before the node's own words: the
/// console on the first serial port (where a BMC or QEMU shows it), reboot on a kernel panic
/// (a node must come back by itself), and no kernel chatter over PID 1's lines.
pub const BOOT_PREFIX: &str = "console=ttyS0 panic=-1 quiet";

/// The kernel command line a boot medium carries: [`BOOT_PREFIX`], then `site` (the node's
/// `farmer_id=… ledger=…`).
pub fn boot_cmdline(site: &str) -> String {
    let site = site.trim();
    if site.is_empty() {
        BOOT_PREFIX.to_string()
    } else {
        format!("{BOOT_PREFIX} {site}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_keys_and_ours() {
        let c = parse(
            "console=ttyS0 quiet farmer_id=7 runmode=dev version=v3 ledger=https://10.0.2.2:7600 \
             relay=wss://10.0.2.2:7700,wss://b:1 relay_domain=127.0.0.1:7700 zos.ip=10.0.2.15/24 zos.gw=10.0.2.2 admin_twin=1",
        );
        assert_eq!(c.farm, Some(7));
        assert_eq!(c.runmode, RunMode::Development);
        assert_eq!(c.runmode.network(), "dev");
        assert_eq!(c.ledgers, ["https://10.0.2.2:7600"]);
        assert_eq!(c.relays, ["wss://10.0.2.2:7700", "wss://b:1"]);
        assert_eq!(c.admin_twins, [1]);
        assert_eq!(
            c.net,
            NetConfig::Static {
                addr: Ipv4Addr::new(10, 0, 2, 15),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 2, 2))
            }
        );
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn defaults_and_bad_values() {
        let c = parse("farmer_id=x runmode=weird zos.ip=1.2.3.4");
        assert_eq!(c.farm, None);
        assert_eq!(c.runmode, RunMode::Production);
        assert_eq!(c.net, NetConfig::Dhcp);
        assert_eq!(c.warnings.len(), 3);
    }

    #[test]
    fn upgrade_settings_need_hub_and_twin() {
        let c = parse(
            "zos.upgrade_hub=http://10.0.2.2:8080 zos.upgrade_twin=9 zos.upgrade_interval=5 \
             zos.upgrade_deadline=90",
        );
        assert_eq!(
            c.upgrade,
            Some(UpgradeConfig {
                hub: "http://10.0.2.2:8080".into(),
                twin: 9,
                interval_secs: Some(5),
                deadline_secs: Some(90)
            })
        );
        assert!(c.warnings.is_empty());
        let c = parse("zos.upgrade_hub=http://h zos.upgrade_interval=0");
        assert_eq!(c.upgrade, None);
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    }
}
