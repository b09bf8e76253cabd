//! The node's public side and the `ip` / `ipv4` primitives (upstream §6.2, `pubip`).
//!
//! A node with a public config on the ledger **and** a public NIC (`zos node run --public-nic`)
//! gets, in its network plane:
//! - bridge `br-pub` with the public NIC as its uplink port;
//! - namespace `<prefix>public` holding the node's public address (`ipv4`, `ipv6` of the
//!   config) on its link `public` (a veth whose other end `pub-ns` is a port of `br-pub`),
//!   with default routes via `gw4` / `gw6`: where services facing the internet run.
//!
//! An `ip` (or deprecated `ipv4`) workload then gets a tap `Unique("pub")` on `br-pub` with
//! MAC `HardwareAddrFromInputBytes(tap)`, the contract's reserved IPv4 (from the ledger, with
//! the farm's gateway) and, with `v6`, the SLAAC address of that MAC in the node's public /64.
//! A VM naming the workload in `network.public_ip` gets the tap as its second NIC.
//!
//! Anti-spoofing: nftables `table bridge zos-pub`, one base chain `r-<tap>` per tap on the
//! bridge's forward and input hooks, dropping every frame that enters from the tap with another
//! source MAC, an IPv4 or ARP sender address other than the workload's, an IPv6 source other
//! than its address or link-local (or `::` for duplicate address detection), or any other
//! ethertype. Chains are made and removed whole in one nft transaction each.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use zos_primitive::{Lifecycle, Primitive, PrimitiveError, PrimitiveRegistry, WorkloadCtx};
use zos_types::data::{PublicIpResult, WorkloadData};
use zos_types::gofmt::{GoIp, IpNet};
use zos_types::ids::{hardware_addr, unique};
use zos_types::{Workload, WorkloadType};

use crate::NetConfig;
use crate::ip::{self, IpError, ip};

/// The public bridge in the node's network plane.
pub const BRIDGE: &str = "br-pub";
/// The public namespace's port on [`BRIDGE`].
pub const NS_PORT: &str = "pub-ns";
/// The nftables bridge table holding the anti-spoofing chains.
pub const NFT_TABLE: &str = "zos-pub";

/// The public namespace of a node.
pub fn namespace(cfg: &NetConfig) -> String {
    format!("{}public", cfg.ns_prefix)
}

/// The tap of an `ip` workload (`Unique("pub")` of its workload id) and its MAC.
pub fn tap_of(workload_id: &str) -> (String, [u8; 6]) {
    let tap = unique(workload_id, "pub");
    let mac = hardware_addr(tap.as_bytes());
    (tap, mac)
}

/// The node's public config as the public side uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicConfig {
    /// The node's public IPv4 and prefix.
    pub ipv4: (Ipv4Addr, u8),
    /// IPv4 gateway.
    pub gw4: Ipv4Addr,
    /// The node's public IPv6 and prefix, when set.
    pub ipv6: Option<(Ipv6Addr, u8)>,
    /// IPv6 gateway, when set.
    pub gw6: Option<Ipv6Addr>,
    /// The farm's domain for gateways (may be empty).
    pub domain: String,
}

fn cidr<T: std::str::FromStr>(what: &str, s: &str) -> Result<(T, u8), String>
where
    T::Err: std::fmt::Display,
{
    let (a, len) = s
        .split_once('/')
        .ok_or_else(|| format!("public config {what} {s:?}: expected address/prefix"))?;
    let a = a
        .parse::<T>()
        .map_err(|e| format!("public config {what} {s:?}: {e}"))?;
    let len = len
        .parse::<u8>()
        .map_err(|e| format!("public config {what} {s:?}: {e}"))?;
    Ok((a, len))
}

impl PublicConfig {
    /// From upstream's JSON (`{ipv4, gw4, ipv6, gw6, domain}`); `None` without a config or
    /// without an `ipv4`.
    pub fn from_json(v: Option<&Value>) -> Result<Option<Self>, String> {
        let Some(v) = v else { return Ok(None) };
        let s = |k: &str| v[k].as_str().unwrap_or_default().trim().to_string();
        let ipv4 = s("ipv4");
        if ipv4.is_empty() {
            return Ok(None);
        }
        let ipv4 = cidr::<Ipv4Addr>("ipv4", &ipv4)?;
        if ipv4.1 == 0 || ipv4.1 > 32 {
            return Err(format!(
                "public config ipv4 prefix /{} is out of range",
                ipv4.1
            ));
        }
        let gw4: Ipv4Addr = s("gw4")
            .parse()
            .map_err(|e| format!("public config gw4 {:?}: {e}", s("gw4")))?;
        let (ipv6, gw6) = match s("ipv6").as_str() {
            "" => (None, None),
            v6 => {
                let a = cidr::<Ipv6Addr>("ipv6", v6)?;
                if a.1 == 0 || a.1 > 64 {
                    return Err(format!(
                        "public config ipv6 prefix /{} must be /64 or wider (SLAAC)",
                        a.1
                    ));
                }
                let gw = s("gw6")
                    .parse::<Ipv6Addr>()
                    .map_err(|e| format!("public config gw6 {:?}: {e}", s("gw6")))?;
                (Some(a), Some(gw))
            }
        };
        Ok(Some(PublicConfig {
            ipv4,
            gw4,
            ipv6,
            gw6,
            domain: s("domain"),
        }))
    }
}

/// The SLAAC (EUI-64) address of `mac` in the /64 of `prefix` (upstream predicts the address a
/// VM's public NIC takes from router advertisements this way).
pub fn slaac(prefix: Ipv6Addr, mac: [u8; 6]) -> Ipv6Addr {
    let p = prefix.octets();
    let mut o = [0u8; 16];
    o[..8].copy_from_slice(&p[..8]);
    o[8] = mac[0] ^ 0x02;
    o[9] = mac[1];
    o[10] = mac[2];
    o[11] = 0xff;
    o[12] = 0xfe;
    o[13] = mac[3];
    o[14] = mac[4];
    o[15] = mac[5];
    Ipv6Addr::from(o)
}

/// What a tap may send (the workload's addresses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapFilter {
    /// The tap.
    pub tap: String,
    /// The VM NIC's MAC.
    pub mac: [u8; 6],
    /// Its IPv4, if any.
    pub ipv4: Option<Ipv4Addr>,
    /// Its IPv6, if any.
    pub ipv6: Option<Ipv6Addr>,
}

/// The nft script that (re)defines the anti-spoofing chain of one tap, whole, in one
/// transaction: `add` makes table and chain when missing, `flush` empties the chain, then its
/// rules. Rules only match frames entering from the tap.
pub fn filter_script(f: &TapFilter) -> String {
    let mac = zos_types::ids::format_mac(&f.mac);
    let chain = format!("r-{}", f.tap);
    let t = NFT_TABLE;
    let mut s = format!("add table bridge {t}\n");
    // Forward (to other ports: the uplink, the public namespace, other VMs) and input (to the
    // bridge itself) both see what a VM sends.
    for hook in ["forward", "input"] {
        let c = format!("{chain}-{hook}");
        s += &format!(
            "add chain bridge {t} {c} {{ type filter hook {hook} priority filter; policy accept; }}\nflush chain bridge {t} {c}\n"
        );
        let rule = |r: &str| format!("add rule bridge {t} {c} iifname \"{}\" {r}\n", f.tap);
        s += &rule(&format!("ether saddr != {mac} drop"));
        match f.ipv4 {
            Some(a) => {
                s += &rule(&format!("ether type ip ip saddr != {a} drop"));
                s += &rule(&format!("ether type arp arp saddr ip != {a} drop"));
                s += &rule(&format!("ether type arp arp saddr ether != {mac} drop"));
            }
            None => {
                s += &rule("ether type ip drop");
                s += &rule("ether type arp drop");
            }
        }
        let mut v6 = vec!["fe80::/64".to_string(), "::".to_string()];
        if let Some(a) = f.ipv6 {
            v6.push(a.to_string());
        }
        s += &rule(&format!(
            "ether type ip6 ip6 saddr != {{ {} }} drop",
            v6.join(", ")
        ));
        s += &rule("ether type != { ip, arp, ip6 } drop");
    }
    s
}

/// The nft script removing a tap's chains (absent is fine: each is made, then deleted).
pub fn unfilter_script(tap: &str) -> String {
    let t = NFT_TABLE;
    let mut s = format!("add table bridge {t}\n");
    for hook in ["forward", "input"] {
        let c = format!("r-{tap}-{hook}");
        s += &format!(
            "add chain bridge {t} {c} {{ type filter hook {hook} priority filter; policy accept; }}\ndelete chain bridge {t} {c}\n"
        );
    }
    s
}

/// A public IPv4 the ledger reserved for a contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedIp {
    /// Address with prefix (`203.0.113.10/24`).
    pub ip: String,
    /// The farm's gateway for it.
    pub gateway: String,
}

/// Where the node learns a contract's reserved public IPs (the ledger; tests give their own).
#[async_trait]
pub trait ContractIps: Send + Sync {
    /// The public IPs the ledger reserved for node contract `contract_id`, in ledger order.
    async fn reserved(&self, contract_id: u64) -> Result<Vec<ReservedIp>, String>;
}

/// The node's public side: its config, the public NIC and the ledger's reservations.
pub struct Public {
    cfg: NetConfig,
    nic: Option<String>,
    ips: Arc<dyn ContractIps>,
    config: tokio::sync::Mutex<Option<PublicConfig>>,
}

impl std::fmt::Debug for Public {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Public")
            .field("cfg", &self.cfg)
            .field("nic", &self.nic)
            .finish()
    }
}

fn failed(e: impl std::fmt::Display) -> PrimitiveError {
    PrimitiveError::Failed(e.to_string())
}

impl Public {
    /// The public side of a node whose plane is `cfg`, uplinked through `nic` (a link of the
    /// plane; `None`: this node has no public NIC and refuses public IPs).
    pub fn new(cfg: NetConfig, nic: Option<String>, ips: Arc<dyn ContractIps>) -> Arc<Self> {
        Arc::new(Public {
            cfg,
            nic,
            ips,
            config: tokio::sync::Mutex::new(None),
        })
    }

    fn node_ns(&self) -> Option<&str> {
        self.cfg.node_netns.as_deref()
    }

    /// The config applied last (`None`: no public side).
    pub async fn config(&self) -> Option<PublicConfig> {
        self.config.lock().await.clone()
    }

    /// Applies the node's public config (idempotent): bridge, uplink, public namespace and its
    /// addresses; `None` removes the namespace (taps of running workloads stay on the bridge).
    pub async fn apply(&self, json: Option<&Value>) -> Result<(), String> {
        let wanted = PublicConfig::from_json(json)?;
        let mut current = self.config.lock().await;
        let Some(nic) = self.nic.clone() else {
            if wanted.is_some() {
                *current = None;
                return Err(
                    "the node has a public config but no public NIC (zos node run --public-nic): public IPs are refused"
                        .into(),
                );
            }
            return Ok(());
        };
        match &wanted {
            Some(c) => self.make(&nic, c).await.map_err(|e| e.to_string())?,
            None => ip::netns_delete(&namespace(&self.cfg))
                .await
                .map_err(|e| e.to_string())?,
        }
        tracing::info!(config = ?wanted, "public side applied");
        *current = wanted;
        Ok(())
    }

    async fn make(&self, nic: &str, c: &PublicConfig) -> Result<(), IpError> {
        let node = self.node_ns();
        if !ip::link_exists(node, BRIDGE).await {
            ip::bridge_add(node, BRIDGE).await?;
        }
        ip(node, &["link", "set", BRIDGE, "up"]).await?;
        ip(node, &["link", "set", nic, "master", BRIDGE, "up"]).await?;
        let ns_name = namespace(&self.cfg);
        let ns = Some(ns_name.as_str());
        ip::netns_ensure(&ns_name).await?;
        ip(ns, &["link", "set", "lo", "up"]).await?;
        if !ip::link_exists(ns, "public").await {
            ip::link_delete(node, NS_PORT).await?;
            ip(
                node,
                &[
                    "link", "add", NS_PORT, "type", "veth", "peer", "name", "public", "netns",
                    &ns_name,
                ],
            )
            .await?;
        }
        ip(node, &["link", "set", NS_PORT, "master", BRIDGE, "up"]).await?;
        ip(ns, &["link", "set", "public", "up"]).await?;
        // Exactly the configured addresses: a changed config replaces the old ones.
        ip(ns, &["-4", "addr", "flush", "dev", "public"]).await?;
        let v4 = format!("{}/{}", c.ipv4.0, c.ipv4.1);
        ip(ns, &["addr", "add", &v4, "dev", "public"]).await?;
        ip(
            ns,
            &["route", "replace", "default", "via", &c.gw4.to_string()],
        )
        .await?;
        ip(
            ns,
            &["-6", "addr", "flush", "dev", "public", "scope", "global"],
        )
        .await?;
        if let (Some((a, len)), Some(gw)) = (c.ipv6, c.gw6) {
            let v6 = format!("{a}/{len}");
            ip(ns, &["-6", "addr", "add", &v6, "dev", "public", "nodad"]).await?;
            ip(
                ns,
                &["-6", "route", "replace", "default", "via", &gw.to_string()],
            )
            .await?;
        }
        Ok(())
    }

    /// What an `ip`/`ipv4` workload gets: `(v4 with prefix and gateway, v6)`.
    async fn addresses(
        &self,
        ctx: &WorkloadCtx,
        wl: &Workload,
        v4: bool,
        v6: bool,
        mac: [u8; 6],
    ) -> Result<(Option<(Ipv4Addr, u8, Ipv4Addr)>, Option<Ipv6Addr>), PrimitiveError> {
        let config = self.config().await.ok_or_else(|| {
            failed(if self.nic.is_none() {
                "this node has no public NIC: public IPs are not available"
            } else {
                "this node has no public config: public IPs are not available"
            })
        })?;
        let ipv6 = if v6 {
            let (prefix, _) = config.ipv6.ok_or_else(|| {
                failed("this node's public config has no IPv6: v6 is not available")
            })?;
            Some(slaac(prefix, mac))
        } else {
            None
        };
        if !v4 {
            return Ok((None, ipv6));
        }
        let reserved = self
            .ips
            .reserved(ctx.contract_id)
            .await
            .map_err(|e| failed(format!("public IPs of contract {}: {e}", ctx.contract_id)))?;
        // Upstream: as many v4 workloads as reserved IPs at most, each taking the first IP
        // no other ip workload of the deployment holds (a re-provision keeps its own).
        let wants = ctx
            .deployment
            .workloads
            .iter()
            .filter(|w| wants_v4(w))
            .count();
        if wants > reserved.len() {
            return Err(PrimitiveError::InvalidData(format!(
                "the deployment has {wants} workloads asking for a public IPv4, its contract reserved {}",
                reserved.len()
            )));
        }
        let held = |w: &Workload| -> Option<String> {
            if !w.result.state.is_okay() {
                return None;
            }
            serde_json::from_value::<PublicIpResult>(w.result.data.clone())
                .ok()?
                .ip
                .get()
                .map(|(a, len)| format!("{a}/{len}"))
        };
        let own = ctx.sibling(&wl.name).and_then(|s| held(s.workload()));
        let others: Vec<String> = ctx
            .deployment
            .workloads
            .iter()
            .filter(|w| w.name != wl.name && wants_v4(w))
            .filter_map(held)
            .collect();
        let pick = reserved
            .iter()
            .find(|r| own.as_deref() == Some(r.ip.as_str()))
            .or_else(|| reserved.iter().find(|r| !others.contains(&r.ip)))
            .ok_or_else(|| failed("every public IPv4 of the contract is taken"))?;
        let (a, len) = cidr::<Ipv4Addr>("reserved ip", &pick.ip).map_err(failed)?;
        let gw: Ipv4Addr = pick
            .gateway
            .parse()
            .map_err(|e| failed(format!("gateway {:?} of {}: {e}", pick.gateway, pick.ip)))?;
        Ok((Some((a, len, gw)), ipv6))
    }

    async fn provision(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<Value, PrimitiveError> {
        let (v4, v6) = wanted(wl)?;
        let (tap, mac) = tap_of(&ctx.workload_id);
        let (a4, a6) = self.addresses(ctx, wl, v4, v6, mac).await?;
        let node = self.node_ns();
        // A link of that name may exist already (a re-provision, or a test's stand-in for the
        // VM's end): it is kept and converged.
        if !ip::link_exists(node, &tap).await {
            ip(node, &["tuntap", "add", "dev", &tap, "mode", "tap"])
                .await
                .map_err(failed)?;
        }
        // The filter before the tap joins the bridge: no frame passes unfiltered.
        ip::nft(
            node,
            &filter_script(&TapFilter {
                tap: tap.clone(),
                mac,
                ipv4: a4.map(|(a, _, _)| a),
                ipv6: a6,
            }),
        )
        .await
        .map_err(failed)?;
        ip(node, &["link", "set", &tap, "master", BRIDGE])
            .await
            .map_err(failed)?;
        ip(node, &["link", "set", &tap, "up"])
            .await
            .map_err(failed)?;
        tracing::info!(wl = %ctx.workload_id, %tap, ipv4 = ?a4, ipv6 = ?a6, "public ip");
        let config = self.config().await;
        let result = PublicIpResult {
            ip: a4
                .and_then(|(a, len, _)| IpNet::new(IpAddr::V4(a), len))
                .unwrap_or_default(),
            ip6: match (a6, config.and_then(|c| c.ipv6)) {
                (Some(a), Some((_, len))) => IpNet::new(IpAddr::V6(a), len).unwrap_or_default(),
                _ => IpNet::default(),
            },
            gateway: GoIp(a4.map(|(_, _, gw)| IpAddr::V4(gw))),
        };
        serde_json::to_value(result).map_err(failed)
    }

    async fn deprovision(&self, ctx: &WorkloadCtx) -> Result<(), PrimitiveError> {
        let (tap, _) = tap_of(&ctx.workload_id);
        let node = self.node_ns();
        ip::link_delete(node, &tap).await.map_err(failed)?;
        ip::nft(node, &unfilter_script(&tap))
            .await
            .map_err(failed)?;
        Ok(())
    }
}

/// Whether a workload asks for a public IPv4 (`ipv4`, or `ip` with `v4`).
fn wants_v4(w: &Workload) -> bool {
    match w.workload_type {
        WorkloadType::Ipv4 => true,
        WorkloadType::Ip => matches!(w.typed_data(), Ok(WorkloadData::Ip(d)) if d.v4),
        _ => false,
    }
}

/// `(v4, v6)` of an `ip`/`ipv4` workload (upstream `Valid()`: at least one).
fn wanted(wl: &Workload) -> Result<(bool, bool), PrimitiveError> {
    match wl.typed_data() {
        Ok(WorkloadData::Ip(d)) if d.v4 || d.v6 => Ok((d.v4, d.v6)),
        Ok(WorkloadData::Ip(_)) => Err(PrimitiveError::InvalidData(
            "public ip workload with no selections".into(),
        )),
        Ok(WorkloadData::Ipv4(_)) => Ok((true, false)),
        Ok(_) => Err(PrimitiveError::InvalidData("not an ip workload".into())),
        Err(e) => Err(PrimitiveError::InvalidData(e.to_string())),
    }
}

/// The `ip` or `ipv4` primitive over the node's public side.
struct IpPrimitive {
    public: Arc<Public>,
    t: WorkloadType,
}

#[async_trait]
impl Primitive for IpPrimitive {
    fn workload_type(&self) -> WorkloadType {
        self.t.clone()
    }

    async fn provision(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<Value, PrimitiveError> {
        self.public.provision(ctx, wl).await
    }

    async fn deprovision(&self, ctx: &WorkloadCtx, _wl: &Workload) -> Result<(), PrimitiveError> {
        self.public.deprovision(ctx).await
    }
}

/// Applies the node's public config to the public side.
struct PublicLifecycle(Arc<Public>);

#[async_trait]
impl Lifecycle for PublicLifecycle {
    fn name(&self) -> &str {
        "public"
    }

    async fn public_config(&self, config: Option<&Value>) -> Result<(), String> {
        self.0.apply(config).await
    }
}

/// Adds the `ip` and `ipv4` primitives and the public side's lifecycle (the public namespace
/// follows the node's public config). Register it before `register_networks`: lifecycles see
/// a new config in registration order, and the network set then finds the node's public
/// address in the public namespace instead of warning that the plane lacks it.
pub fn register_public_ips(registry: &mut PrimitiveRegistry, public: Arc<Public>) {
    for t in [WorkloadType::Ip, WorkloadType::Ipv4] {
        registry.register(Arc::new(IpPrimitive {
            public: public.clone(),
            t,
        }));
    }
    registry.add_lifecycle(Arc::new(PublicLifecycle(public)));
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn public_config_from_upstream_json() {
        assert_eq!(PublicConfig::from_json(None), Ok(None));
        assert_eq!(
            PublicConfig::from_json(Some(&json!({"ipv4": "", "gw4": ""}))),
            Ok(None)
        );
        let c = PublicConfig::from_json(Some(&json!({"type": "macvlan",
            "ipv4": "203.0.113.2/24", "gw4": "203.0.113.1",
            "ipv6": "2001:db8:1::2/64", "gw6": "2001:db8:1::1", "domain": "gw.example"})))
        .unwrap()
        .unwrap();
        assert_eq!(c.ipv4, (Ipv4Addr::new(203, 0, 113, 2), 24));
        assert_eq!(c.gw4, Ipv4Addr::new(203, 0, 113, 1));
        assert_eq!(c.ipv6.unwrap().1, 64);
        assert_eq!(c.domain, "gw.example");
        for bad in [
            json!({"ipv4": "203.0.113.2", "gw4": "203.0.113.1"}),
            json!({"ipv4": "203.0.113.2/24", "gw4": "x"}),
            json!({"ipv4": "203.0.113.2/40", "gw4": "203.0.113.1"}),
            json!({"ipv4": "203.0.113.2/24", "gw4": "203.0.113.1", "ipv6": "2001:db8::2/96", "gw6": "2001:db8::1"}),
        ] {
            assert!(PublicConfig::from_json(Some(&bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_slaac_follow_upstream() {
        // zos-reference §3.3: the tap of `pubip` in contract 1234 of twin 1.
        let (tap, mac) = tap_of("1-1234-pubip");
        assert_eq!(tap, "9x4gDTJ4tiohE");
        assert_eq!(zos_types::ids::format_mac(&mac), "ee:cb:5b:ec:5f:85");
        // EUI-64: U/L bit flipped, ff:fe in the middle.
        assert_eq!(
            slaac("2001:db8:1::2".parse().unwrap(), mac),
            "2001:db8:1:0:eccb:5bff:feec:5f85"
                .parse::<Ipv6Addr>()
                .unwrap()
        );
    }

    #[test]
    fn the_filter_allows_only_the_workloads_own_addresses() {
        let f = TapFilter {
            tap: "9x4gDTJ4tiohE".into(),
            mac: [0xee, 0xcb, 0x5b, 0xec, 0x5f, 0x85],
            ipv4: Some(Ipv4Addr::new(203, 0, 113, 10)),
            ipv6: None,
        };
        let s = filter_script(&f);
        assert!(s.starts_with("add table bridge zos-pub\n"));
        for hook in ["forward", "input"] {
            assert!(s.contains(&format!(
                "add chain bridge zos-pub r-9x4gDTJ4tiohE-{hook} {{ type filter hook {hook}"
            )));
            assert!(s.contains(&format!(
                "flush chain bridge zos-pub r-9x4gDTJ4tiohE-{hook}"
            )));
        }
        assert!(s.contains("iifname \"9x4gDTJ4tiohE\" ether saddr != ee:cb:5b:ec:5f:85 drop"));
        assert!(s.contains("ip saddr != 203.0.113.10 drop"));
        assert!(s.contains("arp saddr ip != 203.0.113.10 drop"));
        assert!(s.contains("ip6 saddr != { fe80::/64, :: } drop"));
        assert!(s.contains("ether type != { ip, arp, ip6 } drop"));
        let v6only = filter_script(&TapFilter {
            ipv4: None,
            ipv6: Some("2001:db8::1".parse().unwrap()),
            ..f
        });
        assert!(v6only.contains("ether type ip drop"));
        assert!(v6only.contains("{ fe80::/64, ::, 2001:db8::1 }"));
        let u = unfilter_script("9x4gDTJ4tiohE");
        assert!(u.contains("delete chain bridge zos-pub r-9x4gDTJ4tiohE-forward"));
    }
}
