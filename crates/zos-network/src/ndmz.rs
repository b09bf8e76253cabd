//! The node's NAT namespace, upstream's `ndmz` (§6.2): every network resource reaches the
//! outside through it, masqueraded, so user networks never see (or spoof) the node's own
//! addresses and need no route back.
//!
//! - namespace `<prefix>ndmz` with bridge `br-ndmz` at `100.127.0.1/16` (upstream's range);
//! - an uplink veth `ndmz-up` (node namespace, `100.126.0.1/30`) ↔ `npub4` (ndmz,
//!   `100.126.0.2/30`, default route via the node): nftables masquerades what leaves by
//!   `npub4`, and the node masquerades what comes from the ndmz out of its own interfaces
//!   (upstream's `npub4` is a macvlan with a DHCP address on the node's LAN; a routed veth
//!   needs no address from the LAN);
//! - per NR a veth `public` (inside the NR) ↔ `p-<netid>` (on `br-ndmz`) with the lowest free
//!   address of `100.127.0.2–100.127.255.254` and the NR's default route via `100.127.0.1`.
//!
//! Everything is converged on each provision; the address lives on the NR's link, so a
//! restarted node keeps it and nothing is kept in the process.

use std::net::Ipv4Addr;

use crate::NetConfig;
use crate::ip::{self, IpError, ip};
use crate::resource::NrNames;

/// The ndmz bridge.
pub const BRIDGE: &str = "br-ndmz";
/// The ndmz gateway on [`BRIDGE`].
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(100, 127, 0, 1);

/// The ndmz namespace of a node.
pub fn namespace(cfg: &NetConfig) -> String {
    format!("{}ndmz", cfg.ns_prefix)
}

/// The node's public IPv4 from its public config on the ledger (upstream's JSON,
/// `{"ipv4": "185.69.166.7/24", …}`): `None` without a config or with an empty `ipv4`.
pub fn public_ipv4(config: Option<&serde_json::Value>) -> Result<Option<Ipv4Addr>, String> {
    let Some(c) = config else { return Ok(None) };
    let raw = c["ipv4"].as_str().unwrap_or_default();
    if raw.is_empty() {
        return Ok(None);
    }
    let addr = raw.split('/').next().unwrap_or_default();
    addr.parse()
        .map(Some)
        .map_err(|e| format!("public config ipv4 {raw:?}: {e}"))
}

/// The node-side NAT of the ndmz uplink: NR traffic leaves with the node's public IPv4 when
/// the public config names one (upstream's `public` side), else masqueraded to whatever
/// address the outgoing interface has. The table is replaced whole in one nft transaction.
pub fn node_nat_script(public: Option<Ipv4Addr>) -> String {
    let action = match public {
        Some(a) => format!("snat ip to {a}"),
        None => "masquerade".to_string(),
    };
    format!(
        "add table ip zos-ndmz\nflush table ip zos-ndmz\ntable ip zos-ndmz {{\n  chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr 100.126.0.0/30 oifname != \"ndmz-up\" {action}\n  }}\n}}\n"
    )
}

/// Applies a public IPv4 to an existing ndmz in place: only the node's NAT table changes
/// (atomically), so network resources, their links and WireGuard sessions are untouched and
/// established flows keep their conntrack mapping. Without an ndmz yet, the next
/// [`ensure`] applies it.
pub async fn apply_public(cfg: &NetConfig, public: Option<Ipv4Addr>) -> Result<(), IpError> {
    if !ip::netns_exists(&namespace(cfg)) {
        return Ok(());
    }
    ip::nft(cfg.node_netns.as_deref(), &node_nat_script(public)).await
}

/// Whether `a` is an address of the node's network plane (a public IPv4 the node does not
/// hold would black-hole every NR's outgoing traffic).
pub async fn plane_has(cfg: &NetConfig, a: Ipv4Addr) -> Result<bool, IpError> {
    let out = ip(cfg.node_netns.as_deref(), &["-4", "-o", "addr", "show"]).await?;
    Ok(out.lines().any(|l| {
        l.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|c| c.split('/').next())
            == Some(a.to_string().as_str())
    }))
}

/// Creates or converges the ndmz and its uplink, with the node's public IPv4 `public`.
pub async fn ensure(cfg: &NetConfig, public: Option<Ipv4Addr>) -> Result<(), IpError> {
    let node = cfg.node_netns.as_deref();
    let ns_name = namespace(cfg);
    let ns = Some(ns_name.as_str());
    ip::netns_ensure(&ns_name).await?;
    ip(ns, &["link", "set", "lo", "up"]).await?;
    ip::sysctl(ns, &["net.ipv4.ip_forward=1"]).await?;
    if !ip::link_exists(ns, BRIDGE).await {
        ip::bridge_add(ns, BRIDGE).await?;
    }
    ip(
        ns,
        &["addr", "replace", &format!("{GATEWAY}/16"), "dev", BRIDGE],
    )
    .await?;
    ip(ns, &["link", "set", BRIDGE, "up"]).await?;
    if !ip::link_exists(node, "ndmz-up").await {
        ip::link_delete(ns, "npub4").await?;
        ip(
            node,
            &[
                "link", "add", "ndmz-up", "type", "veth", "peer", "name", "npub4", "netns",
                &ns_name,
            ],
        )
        .await?;
    }
    ip(
        node,
        &["addr", "replace", "100.126.0.1/30", "dev", "ndmz-up"],
    )
    .await?;
    ip(node, &["link", "set", "ndmz-up", "up"]).await?;
    ip(ns, &["addr", "replace", "100.126.0.2/30", "dev", "npub4"]).await?;
    ip(ns, &["link", "set", "npub4", "up"]).await?;
    ip(ns, &["route", "replace", "default", "via", "100.126.0.1"]).await?;
    ip::sysctl(node, &["net.ipv4.ip_forward=1"]).await?;
    // Tables are replaced whole (add, flush, define), so a re-run converges.
    ip::nft(
        ns,
        "add table ip ndmz\nflush table ip ndmz\ntable ip ndmz {\n  chain post {\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"npub4\" masquerade\n  }\n}\n",
    )
    .await?;
    ip::nft(node, &node_nat_script(public)).await?;
    Ok(())
}

/// Removes the ndmz (its namespace, with it the `ndmz-up` veth pair) and the node's NAT table
/// when no network resource of this node is left, so that a node (or `zos up`) whose last
/// network is gone leaves nothing of its plumbing on the host. The next [`ensure`] makes it
/// again. Returns whether it removed it.
pub async fn remove_if_unused(cfg: &NetConfig) -> Result<bool, IpError> {
    let nr = format!("{}n-", cfg.ns_prefix);
    let in_use = std::fs::read_dir("/run/netns")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with(&nr))
        })
        .unwrap_or(false);
    if in_use || !ip::netns_exists(&namespace(cfg)) {
        return Ok(false);
    }
    ip::netns_delete(&namespace(cfg)).await?;
    ip::link_delete(cfg.node_netns.as_deref(), "ndmz-up").await?;
    // `delete table` fails when it is absent; `add` first makes both cases one transaction.
    ip::nft(
        cfg.node_netns.as_deref(),
        "add table ip zos-ndmz\ndelete table ip zos-ndmz\n",
    )
    .await?;
    Ok(true)
}

/// Joins a network resource to the ndmz (idempotent): its `public` link, address and default
/// route.
pub async fn attach(cfg: &NetConfig, n: &NrNames) -> Result<(), IpError> {
    let ndmz_name = namespace(cfg);
    let ndmz = Some(ndmz_name.as_str());
    let nr = Some(n.namespace.as_str());
    let port = format!("p-{}", n.netid);
    if !ip::link_exists(nr, "public").await {
        ip::link_delete(ndmz, &port).await?;
        ip(
            ndmz,
            &[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "public",
                "netns",
                &n.namespace,
            ],
        )
        .await?;
    }
    ip(ndmz, &["link", "set", &port, "master", BRIDGE, "up"]).await?;
    let address = match public_address(&n.namespace).await {
        Some(a) => a,
        None => free_address(cfg)
            .await
            .ok_or_else(|| ip::IpError::new("ndmz", "no free address left in 100.127.0.0/16"))?,
    };
    ip(
        nr,
        &["addr", "replace", &format!("{address}/16"), "dev", "public"],
    )
    .await?;
    ip(nr, &["link", "set", "public", "up"]).await?;
    ip(
        nr,
        &[
            "route",
            "replace",
            "default",
            "via",
            &GATEWAY.to_string(),
            "dev",
            "public",
        ],
    )
    .await?;
    Ok(())
}

/// The ndmz address of an NR, if it has one.
async fn public_address(ns: &str) -> Option<Ipv4Addr> {
    let out = ip(Some(ns), &["-4", "-o", "addr", "show", "dev", "public"])
        .await
        .ok()?;
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// The lowest address of 100.127.0.2–100.127.255.254 no NR of this node holds.
async fn free_address(cfg: &NetConfig) -> Option<Ipv4Addr> {
    let mut taken = Vec::new();
    let prefix = format!("{}n-", cfg.ns_prefix);
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(&prefix) {
                if let Some(a) = public_address(&name).await {
                    taken.push(a);
                }
            }
        }
    }
    (u32::from(GATEWAY) + 1..u32::from(Ipv4Addr::new(100, 127, 255, 255)))
        .map(Ipv4Addr::from)
        .find(|a| !taken.contains(a))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn public_ipv4_comes_from_the_public_config() {
        assert_eq!(public_ipv4(None), Ok(None));
        assert_eq!(public_ipv4(Some(&json!({"ipv4": ""}))), Ok(None));
        assert_eq!(
            public_ipv4(Some(
                &json!({"ipv4": "185.69.166.7/24", "gw4": "185.69.166.1"})
            )),
            Ok(Some(Ipv4Addr::new(185, 69, 166, 7)))
        );
        let e = public_ipv4(Some(&json!({"ipv4": "nope/24"}))).unwrap_err();
        assert!(e.contains("public config ipv4 \"nope/24\""), "{e}");
    }

    #[test]
    fn node_nat_snats_to_the_public_ipv4_or_masquerades() {
        let m = node_nat_script(None);
        assert!(m.contains("oifname != \"ndmz-up\" masquerade"), "{m}");
        assert!(m.starts_with("add table ip zos-ndmz\nflush table ip zos-ndmz\n"));
        let s = node_nat_script(Some(Ipv4Addr::new(198, 18, 0, 2)));
        assert!(s.contains("snat ip to 198.18.0.2"), "{s}");
        assert!(!s.contains("masquerade"));
    }
}
