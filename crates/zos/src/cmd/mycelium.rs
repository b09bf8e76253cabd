//! `zos mycelium inspect|generate-keys|run`: the overlay's CLI, with upstream mycelium's
//! output formats and flag names (`{"publicKey": hex, "address": ipv6}`, `--key-file`, …).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use zos_mycelium::{PublicKey, SecretKey};

/// Mycelium subcommands.
#[derive(Subcommand, Debug)]
pub enum MyceliumCmd {
    /// Show the public key and overlay address of a public key, or of the key file.
    Inspect {
        /// A public key (64 hex characters); default: the key file's.
        pubkey: Option<String>,
        /// Print `{"publicKey": …, "address": …}`.
        #[arg(long)]
        json: bool,
        /// The node's key file (32 raw bytes).
        #[arg(short = 'k', long, value_name = "PATH")]
        key_file: Option<PathBuf>,
    },
    /// Write a new key file and show its public key and address.
    GenerateKeys {
        /// Replace an existing key file.
        #[arg(long)]
        force: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Where to write (32 raw bytes, mode 0640).
        #[arg(short = 'k', long, value_name = "PATH")]
        key_file: Option<PathBuf>,
    },
}

/// Upstream's default key file: `$XDG_DATA_HOME/mycelium/priv_key.bin`
/// (`~/.local/share/mycelium/priv_key.bin`).
pub fn default_key_file() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("mycelium").join("priv_key.bin")
}

fn print_identity(pk: &PublicKey, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({"publicKey": pk.to_string(), "address": pk.address().to_string()})
        );
    } else {
        println!("Public key: {pk}");
        println!("Address: {}", pk.address());
    }
}

/// Runs a mycelium subcommand.
pub fn run(cmd: MyceliumCmd) -> anyhow::Result<()> {
    match cmd {
        MyceliumCmd::Inspect {
            pubkey,
            json,
            key_file,
        } => {
            let pk = match pubkey {
                Some(s) => s.parse::<PublicKey>()?,
                None => {
                    let path = key_file.unwrap_or_else(default_key_file);
                    SecretKey::load(&path)
                        .context("no PUBKEY given, reading the key file")?
                        .public_key()
                }
            };
            print_identity(&pk, json);
            Ok(())
        }
        MyceliumCmd::GenerateKeys {
            force,
            json,
            key_file,
        } => {
            let path = key_file.unwrap_or_else(default_key_file);
            if path.exists() && !force {
                anyhow::bail!(
                    "{} exists; pass --force to replace it (the node's address changes)",
                    path.display()
                );
            }
            let k = SecretKey::generate();
            k.save(&path)?;
            print_identity(&k.public_key(), json);
            Ok(())
        }
    }
}
