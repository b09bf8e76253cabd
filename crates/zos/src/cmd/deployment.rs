//! `zos deployment …`: challenge, hash, sign and check deployment documents, byte-exact with
//! upstream so that a user can debug why a node refuses a deployment.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use zos_types::{Deployment, KeyPair, KeyType};

/// Deployment document tools.
#[derive(Subcommand, Debug)]
pub enum DeploymentCmd {
    /// Print the challenge string the hash is computed over.
    Challenge {
        /// Deployment JSON file, `-` for standard input.
        file: PathBuf,
    },
    /// Print the deployment hash (lowercase hex MD5), as stored in the node contract.
    Hash {
        /// Deployment JSON file, `-` for standard input.
        file: PathBuf,
    },
    /// Add the signature of the deployment's twin and print the signed deployment JSON.
    Sign {
        /// Deployment JSON file, `-` for standard input.
        file: PathBuf,
        /// The twin's 32-byte seed, hex.
        #[arg(long, env = "ZOS_SEED", hide_env_values = true)]
        seed: String,
        /// Sign with sr25519 (Substrate) instead of ed25519.
        #[arg(long)]
        sr25519: bool,
        /// Signature style; `polka-wallet` signs `<Bytes>hash</Bytes>` (and is hashed).
        #[arg(long)]
        style: Option<Style>,
        /// Sign as this twin instead of the deployment's `twin_id`.
        #[arg(long)]
        twin: Option<u32>,
    },
    /// Print each workload's id, each network's NetworkID and the interface and namespace
    /// names the node derives for them (upstream's `Unique` rules), to find what a node made.
    Ids {
        /// Deployment JSON file, `-` for standard input.
        file: PathBuf,
        /// JSON: `{"workloads": {NAME: {"id", "network_id"?, "names": {…}}}}`.
        #[arg(long)]
        json: bool,
    },
    /// Validate and verify the signatures: prints `ok`, or the error on stderr and exits 1.
    Check {
        /// Deployment JSON file, `-` for standard input.
        file: PathBuf,
        /// A twin's public key: `TWIN=PUBHEX` (repeatable).
        #[arg(long = "key", value_name = "TWIN=PUBHEX")]
        keys: Vec<String>,
    },
    /// Print each workload's capacity (CRU, MRU, SRU, HRU, IPV4U) and the total, as upstream
    /// computes them (a zmachine's SRU is its root size: at least MinRootSize).
    Capacity {
        /// Deployment JSON file, `-` for standard input.
        file: PathBuf,
        /// JSON: `{"workloads": {NAME: {cru, mru, sru, hru, ipv4u}}, "total": {…}}`.
        #[arg(long)]
        json: bool,
    },
}

/// Signature styles.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Style {
    /// Sign the raw 16-byte hash.
    Default,
    /// Sign `<Bytes>hex(hash)</Bytes>`, as Polkadot wallets do.
    PolkaWallet,
}

/// Runs a deployment subcommand.
pub fn run(cmd: DeploymentCmd) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        DeploymentCmd::Challenge { file } => {
            let d = load(&file)?;
            let challenge = d.challenge()?;
            out.write_all(&challenge)?;
            out.write_all(b"\n")?;
        }
        DeploymentCmd::Hash { file } => {
            writeln!(out, "{}", load(&file)?.challenge_hash_hex()?)?;
        }
        DeploymentCmd::Sign {
            file,
            seed,
            sr25519,
            style,
            twin,
        } => {
            let mut d = load(&file)?;
            let kt = if sr25519 {
                KeyType::Sr25519
            } else {
                KeyType::Ed25519
            };
            let key = KeyPair::from_hex_seed(kt, &seed).context("--seed")?;
            match style {
                Some(Style::PolkaWallet) => {
                    d.signature_requirement.signature_style =
                        zos_types::deployment::SIGNATURE_STYLE_POLKA.into()
                }
                Some(Style::Default) => d.signature_requirement.signature_style.clear(),
                None => {}
            }
            let twin = twin.unwrap_or(d.twin_id);
            d.sign(twin, &key)?;
            serde_json::to_writer_pretty(&mut out, &d)?;
            out.write_all(b"\n")?;
        }
        DeploymentCmd::Ids { file, json } => {
            let v = zos_network::deployment_names(&load(&file)?);
            if json {
                serde_json::to_writer_pretty(&mut out, &v)?;
                out.write_all(b"\n")?;
            } else {
                let empty = serde_json::Map::new();
                let workloads = v["workloads"].as_object().unwrap_or(&empty);
                for (name, w) in workloads {
                    write!(out, "{name}: id {}", w["id"].as_str().unwrap_or_default())?;
                    if let Some(netid) = w["network_id"].as_str() {
                        write!(out, "  network_id {netid}")?;
                    }
                    writeln!(out)?;
                    for (k, n) in w["names"].as_object().unwrap_or(&empty) {
                        writeln!(out, "  {k:<16} {}", n.as_str().unwrap_or_default())?;
                    }
                }
            }
        }
        DeploymentCmd::Check { file, keys } => {
            let keys = parse_keys(&keys)?;
            let d = load(&file)?;
            let result = d.validate().map_err(|e| e.to_string()).and_then(|()| {
                d.verify(|twin| {
                    keys.get(&twin).cloned().ok_or_else(|| {
                        format!("no key given for twin {twin} (--key {twin}=PUBHEX)")
                    })
                })
                .map_err(|e| e.to_string())
            });
            match result {
                Ok(()) => writeln!(out, "ok")?,
                Err(e) => {
                    // Upstream's exact text alone, so scripts can compare it.
                    eprintln!("{e}");
                    std::process::exit(1);
                }
            }
        }
        DeploymentCmd::Capacity { file, json } => {
            let d = load(&file)?;
            let mut per = serde_json::Map::new();
            let mut rows = Vec::new();
            for w in &d.workloads {
                let c = w
                    .capacity()
                    .with_context(|| format!("workload {:?}", w.name))?;
                per.insert(w.name.clone(), capacity_json(&c));
                rows.push((w.name.clone(), w.workload_type.to_string(), c));
            }
            let total = d.capacity()?;
            if json {
                let v = serde_json::json!({"workloads": per, "total": capacity_json(&total)});
                serde_json::to_writer_pretty(&mut out, &v)?;
                out.write_all(b"\n")?;
            } else {
                writeln!(
                    out,
                    "{:<24} {:<20} {:>4} {:>14} {:>14} {:>14} {:>5}",
                    "NAME", "TYPE", "CRU", "MRU", "SRU", "HRU", "IPV4U"
                )?;
                rows.push(("total".into(), String::new(), total));
                for (name, t, c) in rows {
                    writeln!(
                        out,
                        "{name:<24} {t:<20} {:>4} {:>14} {:>14} {:>14} {:>5}",
                        c.cru, c.mru, c.sru, c.hru, c.ipv4u
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// One capacity as the `--json` output spells it.
fn capacity_json(c: &zos_types::Capacity) -> serde_json::Value {
    serde_json::json!({"cru": c.cru, "mru": c.mru, "sru": c.sru, "hru": c.hru, "ipv4u": c.ipv4u})
}

fn load(file: &PathBuf) -> anyhow::Result<Deployment> {
    let mut bytes = Vec::new();
    if file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading standard input")?;
    } else {
        bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    }
    Deployment::from_json(&bytes).with_context(|| format!("parsing {}", file.display()))
}

fn parse_keys(keys: &[String]) -> anyhow::Result<HashMap<u32, Vec<u8>>> {
    let mut map = HashMap::new();
    for k in keys {
        let Some((twin, hex_key)) = k.split_once('=') else {
            bail!("--key {k}: expected TWIN=PUBHEX");
        };
        let twin: u32 = twin
            .trim()
            .parse()
            .with_context(|| format!("--key {k}: twin is not a number"))?;
        let hex_key = hex_key.trim();
        let bytes = hex::decode(hex_key.strip_prefix("0x").unwrap_or(hex_key))
            .with_context(|| format!("--key {k}: public key is not hex"))?;
        map.insert(twin, bytes);
    }
    Ok(map)
}
