//! `zos node diag NODE [health|logs|kernel|pools|net|reach ADDR]`: the farmer's read-only view of a
//! node over RMB (`zos.admin.diag.*`; the node answers its farm's twin and admin twins only).

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::client::ClientArgs;

/// `zos node diag` options.
#[derive(Args, Debug)]
pub struct DiagArgs {
    /// Node id.
    pub node: u32,
    /// What to show (default: health).
    #[command(subcommand)]
    pub what: Option<DiagCmd>,
    #[command(flatten)]
    pub args: ClientArgs,
}

/// The diagnostics views.
#[derive(Subcommand, Debug)]
pub enum DiagCmd {
    /// Self-check (`ok`/`degraded` with reasons), relay links, last error of each loop.
    Health,
    /// Recent agent logs (newest last), filtered by deployment or workload.
    Logs {
        /// Only events about this contract.
        #[arg(long)]
        contract: Option<u64>,
        /// Only events about this workload (name or workload id).
        #[arg(long)]
        workload: Option<String>,
        /// Minimum level: error, warn, info, debug.
        #[arg(long)]
        level: Option<String>,
        /// At most this many events (the node caps it at 1000).
        #[arg(long, default_value_t = 200)]
        limit: usize,
    },
    /// The newest kernel messages.
    Kernel {
        /// How many lines (the node caps it at 1000).
        #[arg(long, default_value_t = 100)]
        lines: usize,
        /// Only warnings and worse.
        #[arg(long)]
        warnings: bool,
    },
    /// Pools (size, use), btrfs device error counters and SMART health (with smartctl).
    Pools,
    /// WireGuard devices of the node's networks: peers, endpoints, handshake ages.
    Wg,
    /// Interfaces, routes and network namespaces as the node sees them.
    Net,
    /// Reachability from the node: IP:PORT (TCP connect) or IP (ping).
    Reach {
        /// The address.
        address: String,
        /// Timeout in milliseconds (the node caps it at 10 s).
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
}

/// Runs `zos node diag`.
pub fn run(a: DiagArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let grid = a.args.connect().await?;
        let (what, payload) = match &a.what {
            None | Some(DiagCmd::Health) => ("health", Value::Null),
            Some(DiagCmd::Logs {
                contract,
                workload,
                level,
                limit,
            }) => (
                "logs",
                json!({"contract_id": contract, "workload": workload, "level": level, "limit": limit}),
            ),
            Some(DiagCmd::Kernel { lines, warnings }) => (
                "kernel",
                json!({"lines": lines, "warnings": warnings}),
            ),
            Some(DiagCmd::Pools) => ("pools", Value::Null),
            Some(DiagCmd::Net) => ("net", Value::Null),
            Some(DiagCmd::Wg) => ("wg", Value::Null),
            Some(DiagCmd::Reach {
                address,
                timeout_ms,
            }) => (
                "reach",
                json!({"address": address, "timeout_ms": timeout_ms}),
            ),
        };
        let v = grid.node_diag(a.node, what, payload).await?;
        if a.args.json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print!("{}", human(what, &v));
        }
        Ok(())
    })
}

/// The text view: short for health, logs and reach; JSON for the rest (nested by nature).
fn human(what: &str, v: &Value) -> String {
    let mut out = String::new();
    match what {
        "health" => {
            out += &format!("status: {}\n", v["status"].as_str().unwrap_or("?"));
            for r in v["reasons"].as_array().into_iter().flatten() {
                out += &format!("  - {}\n", r.as_str().unwrap_or_default());
            }
            out += &format!(
                "relay links: {}\n",
                v["connections"]["relay_links"].as_u64().unwrap_or(0)
            );
            if v["maintenance"].is_object() {
                out += if v["maintenance"]["pause"] == true {
                    "maintenance (farmer): workloads paused, new contracts refused\n"
                } else {
                    "maintenance (farmer): new contracts refused\n"
                };
            }
            if v["upgrade"].is_object() {
                out += &upgrade_section(&v["upgrade"]);
            }
            if let Some(m) = v["last_errors"].as_object() {
                for (name, e) in m {
                    out += &format!(
                        "last error of {name} (unix {}): {}\n",
                        e["at"],
                        e["error"].as_str().unwrap_or_default()
                    );
                }
            }
        }
        "logs" => {
            for e in v["events"].as_array().into_iter().flatten() {
                let fields: Vec<String> = e["fields"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect();
                out += &format!(
                    "{} {:<5} {} {} {}\n",
                    e["ts_ms"],
                    e["level"].as_str().unwrap_or_default(),
                    e["target"].as_str().unwrap_or_default(),
                    e["message"].as_str().unwrap_or_default(),
                    fields.join(" ")
                );
            }
        }
        "kernel" => {
            for l in v["lines"].as_array().into_iter().flatten() {
                out += l.as_str().unwrap_or_default();
                out.push('\n');
            }
            if let Some(e) = v["error"].as_str() {
                out += &format!("(kernel messages unavailable: {e})\n");
            }
        }
        "reach" => {
            let ok = v["reachable"].as_bool().unwrap_or(false);
            out += &format!(
                "{} {}: {}",
                v["kind"].as_str().unwrap_or_default(),
                v["address"].as_str().unwrap_or_default(),
                if ok { "reachable" } else { "unreachable" }
            );
            if let Some(ms) = v["rtt_ms"].as_f64() {
                out += &format!(" in {ms:.1} ms");
            }
            if let Some(e) = v["error"].as_str() {
                out += &format!(" ({e})");
            }
            out.push('\n');
        }
        "wg" => {
            for n in v["networks"].as_array().into_iter().flatten() {
                out += &format!(
                    "network {} port {}\n",
                    n["netid"].as_str().unwrap_or_default(),
                    n["listen_port"]
                );
                for p in n["peers"].as_array().into_iter().flatten() {
                    let mut age = match p["handshake_age_secs"].as_u64() {
                        Some(s) => format!("handshake {s} s ago"),
                        None => "handshake never".to_string(),
                    };
                    if p["stale"] == true {
                        age += " (stale)";
                    }
                    // Older nodes answer without traffic and allowed IPs.
                    if let (Some(rx), Some(tx)) = (p["rx_bytes"].as_u64(), p["tx_bytes"].as_u64()) {
                        age += &format!(", rx {rx} B, tx {tx} B");
                    }
                    let allowed: Vec<&str> = p["allowed_ips"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    if !allowed.is_empty() {
                        age += &format!(", allowed {}", allowed.join(" "));
                    }
                    out += &format!(
                        "  peer {} at {}: {age}\n",
                        p["public_key"].as_str().unwrap_or_default(),
                        p["endpoint"].as_str().unwrap_or("(no endpoint)")
                    );
                }
            }
        }
        _ => {
            out += &serde_json::to_string_pretty(v).unwrap_or_default();
            out.push('\n');
        }
    }
    out
}

/// `upgrade:` of the health view: the release that runs, the slots, a trial, the last rollback
/// and the last refused release, each with its reason.
fn upgrade_section(u: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let mut out = format!(
        "upgrade: running {} (network {}), active slot {}",
        s(&u["running"]),
        s(&u["network"]),
        s(&u["active"])
    );
    if let Some(slots) = u["slots"].as_object() {
        let list: Vec<String> = slots.iter().map(|(k, v)| format!("{k}={}", s(v))).collect();
        out += &format!(" ({})", list.join(" "));
    }
    out.push('\n');
    if u["trial"].is_object() {
        out += &format!(
            "  trial: {} in slot {}, healthy by unix {}\n",
            s(&u["trial"]["version"]),
            s(&u["trial"]["slot"]),
            u["trial"]["deadline"]
        );
    }
    if u["last_rollback"].is_object() {
        out += &format!(
            "  last rollback: from {}: {}\n",
            s(&u["last_rollback"]["version"]),
            s(&u["last_rollback"]["reason"])
        );
    }
    if u["last_refused"].is_object() {
        out += &format!(
            "  last refused release: {}: {}\n",
            s(&u["last_refused"]["version"]),
            s(&u["last_refused"]["reason"])
        );
    }
    if let Some(st) = u["status"].as_str() {
        out += &format!("  upgrader: {st}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_views() {
        let h = human(
            "health",
            &json!({"status": "degraded", "reasons": ["no relay link"], "connections": {"relay_links": 0},
                    "last_errors": {"api": {"at": 5, "error": "refused"}}}),
        );
        assert_eq!(
            h,
            "status: degraded\n  - no relay link\nrelay links: 0\nlast error of api (unix 5): refused\n"
        );
        let r = human(
            "reach",
            &json!({"kind": "tcp", "address": "10.0.0.1:22", "reachable": false, "error": "refused"}),
        );
        assert_eq!(r, "tcp 10.0.0.1:22: unreachable (refused)\n");
        let w = human(
            "wg",
            &json!({"networks": [{"netid": "n1", "listen_port": 3000, "peers": [
                {"public_key": "K1", "endpoint": "198.18.0.3:3001", "handshake_age_secs": 12},
                {"public_key": "K2", "endpoint": null, "handshake_age_secs": null},
                {"public_key": "K3", "endpoint": "198.18.0.4:3001", "handshake_age_secs": 400,
                 "stale": true, "rx_bytes": 92, "tx_bytes": 148,
                 "allowed_ips": ["10.1.3.0/24", "100.64.1.3/32"]}]}]}),
        );
        assert_eq!(
            w,
            "network n1 port 3000\n  peer K1 at 198.18.0.3:3001: handshake 12 s ago\n  peer K2 at (no endpoint): handshake never\n  peer K3 at 198.18.0.4:3001: handshake 400 s ago (stale), rx 92 B, tx 148 B, allowed 10.1.3.0/24 100.64.1.3/32\n"
        );
    }

    #[test]
    fn upgrade_section_shows_trial_rollback_and_refusal() {
        let h = human(
            "health",
            &json!({"status": "ok", "connections": {"relay_links": 1}, "upgrade": {
                "running": "v2", "network": "dev", "active": "b", "slots": {"a": "v1", "b": "v2"},
                "trial": {"slot": "a", "version": "v3", "deadline": 99},
                "last_rollback": {"version": "v3", "reason": "exited"},
                "last_refused": {"version": "v4", "reason": "no valid signature"},
                "status": "holding"}}),
        );
        assert_eq!(
            h,
            "status: ok\nrelay links: 1\nupgrade: running v2 (network dev), active slot b (a=v1 b=v2)\n  trial: v3 in slot a, healthy by unix 99\n  last rollback: from v3: exited\n  last refused release: v4: no valid signature\n  upgrader: holding\n"
        );
    }
}
