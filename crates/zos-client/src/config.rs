//! Client configuration: a TOML file in the XDG config directory, overridden by the
//! environment (`ZOS_LEDGER`, `ZOS_RELAY`, `ZOS_KEY`, `ZOS_SEED`) and then by flags.
//!
//! [`Config::lookup`] is the one place every client command (`deploy`, `deployments`,
//! `contracts`, `balance`, `rmb call`, …) finds the ledger, the relay and the user's key.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zos_types::{KeyPair, KeyType};

use crate::keys::{KeyFile, KeyFileError};

/// The client configuration file (`$XDG_CONFIG_HOME/zos/config.toml`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Ledger JSON-RPC URL, e.g. `http://127.0.0.1:7600` (loopback only) or
    /// `https://host:port` (with `ledger_cert`).
    pub ledger: Option<String>,
    /// The ledger's TLS certificate (PEM), pinned for an `https://` ledger (`ZOS_LEDGER_CERT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_cert: Option<PathBuf>,
    /// The ledger's producer key (`ed25519` hex): answers are verified against heads it signed.
    /// Without it, the key comes from the ledger over the (pinned) channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_producer: Option<String>,
    /// Relay WebSocket URL, e.g. `ws://127.0.0.1:7700` or `wss://127.0.0.1:7700`.
    pub relay: Option<String>,
    /// The relay's TLS certificate (PEM), pinned for a `wss://` relay (`ZOS_RELAY_CERT`);
    /// `zos up` writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_cert: Option<PathBuf>,
    /// Path of the user's key file.
    pub key: Option<PathBuf>,
    /// A hex seed given instead of a key file (`--seed` or `ZOS_SEED`; never written to the
    /// file). It wins over the key file.
    #[serde(skip)]
    pub seed: Option<String>,
    /// The scheme of `seed` (`--key-type`; ed25519 when not given).
    #[serde(skip)]
    pub key_type: Option<KeyType>,
}

/// What the command line says, each overriding the environment and the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--config` (else `ZOS_CONFIG`, else [`default_path`]).
    pub config: Option<PathBuf>,
    /// `--ledger`.
    pub ledger: Option<String>,
    /// `--relay`.
    pub relay: Option<String>,
    /// `--key` (a key file).
    pub key: Option<PathBuf>,
    /// `--seed` (hex).
    pub seed: Option<String>,
    /// `--key-type` for the seed.
    pub key_type: Option<KeyType>,
}

/// The user's key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Nothing configured.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The key file is unusable.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// The seed is not 32 bytes of hex.
    #[error("seed (--seed or ZOS_SEED): {0}")]
    Seed(String),
}

/// Errors loading configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        reason: String,
    },
    /// A setting is missing everywhere.
    #[error(
        "no {what} configured: run `zos up` (it writes {file}), or set {env}, or pass --{flag}"
    )]
    Missing {
        /// The setting.
        what: &'static str,
        /// The environment variable.
        env: &'static str,
        /// The flag.
        flag: &'static str,
        /// The config file path.
        file: String,
    },
}

/// The default config file path.
pub fn default_path() -> PathBuf {
    config_dir().join("config.toml")
}

/// `$XDG_CONFIG_HOME/zos`, else `~/.config/zos`.
pub fn config_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("zos");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".config").join("zos")
}

impl Config {
    /// Reads `path`; a missing file is an empty configuration.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(source) => Err(ConfigError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes the file atomically.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let io = |source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(
            &tmp,
            toml::to_string_pretty(self).expect("config serialises"),
        )
        .map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// The one lookup: the config file (`--config`, else `ZOS_CONFIG`, else the default
    /// path), then the environment, then the flags; the highest one set wins, per setting.
    pub fn lookup(o: &Overrides) -> Result<Config, ConfigError> {
        let path = o
            .config
            .clone()
            .or_else(|| {
                std::env::var_os("ZOS_CONFIG")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(default_path);
        let mut cfg = Config::load(&path)?.with_env();
        if let Some(v) = &o.ledger {
            cfg.ledger = Some(v.clone());
        }
        if let Some(v) = &o.relay {
            cfg.relay = Some(v.clone());
        }
        if let Some(v) = &o.key {
            cfg.key = Some(v.clone());
            // A key file on the command line beats a seed from the environment.
            cfg.seed = None;
        }
        if let Some(v) = &o.seed {
            cfg.seed = Some(v.clone());
        }
        if o.key_type.is_some() {
            cfg.key_type = o.key_type;
        }
        Ok(cfg)
    }

    /// The user's key: the seed if one is given (`--seed`, `ZOS_SEED`), else the key file.
    pub fn key_pair(&self) -> Result<KeyPair, IdentityError> {
        if let Some(seed) = &self.seed {
            let kt = self.key_type.unwrap_or(KeyType::Ed25519);
            return KeyPair::from_hex_seed(kt, seed)
                .map_err(|e| IdentityError::Seed(e.to_string()));
        }
        let path = self.require_key()?;
        KeyFile::load(path)?
            .key_pair()
            .map_err(|reason| KeyFileError::Format {
                path: path.to_path_buf(),
                reason,
            })
            .map_err(IdentityError::from)
    }

    /// Applies `ZOS_LEDGER`, `ZOS_RELAY`, `ZOS_KEY` (a key file path), `ZOS_SEED` (a hex
    /// seed, which wins over any key file).
    pub fn with_env(mut self) -> Config {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(v) = var("ZOS_LEDGER") {
            self.ledger = Some(v);
        }
        if let Some(v) = var("ZOS_LEDGER_CERT") {
            self.ledger_cert = Some(PathBuf::from(v));
        }
        if let Some(v) = var("ZOS_RELAY") {
            self.relay = Some(v);
        }
        if let Some(v) = var("ZOS_RELAY_CERT") {
            self.relay_cert = Some(PathBuf::from(v));
        }
        if let Some(v) = var("ZOS_KEY") {
            self.key = Some(PathBuf::from(v));
        }
        if let Some(v) = var("ZOS_SEED") {
            self.seed = Some(v);
        }
        self
    }

    /// The ledger URL or a message saying how to set it.
    pub fn require_ledger(&self) -> Result<&str, ConfigError> {
        self.ledger
            .as_deref()
            .ok_or_else(|| missing("ledger URL", "ZOS_LEDGER", "ledger"))
    }

    /// What the ledger client trusts: the pinned certificate and producer key, if configured.
    pub fn ledger_trust(&self) -> Result<zos_ledger::Trust, zos_ledger::ClientError> {
        let mut trust = zos_ledger::Trust::default();
        if let Some(path) = &self.ledger_cert {
            trust = trust.with_cert_file(path)?;
        }
        if let Some(hex) = &self.ledger_producer {
            let bytes =
                zos_types::crypto::decode_hex32("ledger producer key", hex).map_err(|e| {
                    zos_ledger::ClientError::Url {
                        url: "ledger_producer".into(),
                        reason: e.to_string(),
                    }
                })?;
            trust.producer = Some(zos_types::crypto::PublicKey {
                key_type: KeyType::Ed25519,
                bytes,
            });
        }
        Ok(trust)
    }

    /// A ledger client for the configured URL, certificate and producer key.
    pub fn ledger_client(&self) -> Result<zos_ledger::LedgerClient, crate::grid::GridError> {
        Ok(zos_ledger::LedgerClient::with_trust(
            self.require_ledger()?,
            self.ledger_trust()?,
        )?)
    }

    /// The relay URL or a message saying how to set it.
    pub fn require_relay(&self) -> Result<&str, ConfigError> {
        self.relay
            .as_deref()
            .ok_or_else(|| missing("relay URL", "ZOS_RELAY", "relay"))
    }

    /// Pins the configured relay certificate for this process's `wss://` connections
    /// (`zos_rmb::pin_relay_cert_file`); nothing to do without one.
    pub fn trust_relay(&self) -> Result<(), zos_rmb::tls::TlsError> {
        match &self.relay_cert {
            Some(path) => zos_rmb::pin_relay_cert_file(path),
            None => Ok(()),
        }
    }

    /// The key file path or a message saying how to set it.
    pub fn require_key(&self) -> Result<&Path, ConfigError> {
        self.key
            .as_deref()
            .ok_or_else(|| missing("key file", "ZOS_KEY (a key file) or ZOS_SEED", "key"))
    }
}

fn missing(what: &'static str, env: &'static str, flag: &'static str) -> ConfigError {
    ConfigError::Missing {
        what,
        env,
        flag,
        file: default_path().display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_messages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        assert_eq!(Config::load(&path).unwrap(), Config::default());
        let c = Config {
            ledger: Some("http://127.0.0.1:1".into()),
            relay: None,
            key: Some("/k".into()),
            ..Config::default()
        };
        c.save(&path).unwrap();
        assert_eq!(Config::load(&path).unwrap(), c);
        let err = c.require_relay().unwrap_err().to_string();
        assert!(
            err.contains("run `zos up`") && err.contains("ZOS_RELAY"),
            "{err}"
        );
        std::fs::write(&path, "ledgr = 1\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("ledgr") && err.contains("line 1"), "{err}");
    }

    /// Flags over the file (the environment's place between them is tested through the
    /// binary, crates/zos/tests/client_cli.rs: setting variables here would need `unsafe`).
    #[test]
    fn flags_override_the_file_and_a_seed_wins_over_a_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        Config {
            ledger: Some("http://file".into()),
            relay: Some("ws://file".into()),
            key: Some("/file/key.json".into()),
            ..Config::default()
        }
        .save(&path)
        .unwrap();
        let flags = |o: Overrides| {
            Config::lookup(&Overrides {
                config: Some(path.clone()),
                ..o
            })
            .unwrap()
        };
        let c = flags(Overrides {
            ledger: Some("http://flag".into()),
            ..Overrides::default()
        });
        assert_eq!(c.ledger.as_deref(), Some("http://flag"));
        assert_eq!(c.relay.as_deref(), Some("ws://file"));
        assert_eq!(c.key.as_deref(), Some(Path::new("/file/key.json")));
        let c = flags(Overrides {
            seed: Some("11".repeat(32)),
            key_type: Some(KeyType::Sr25519),
            ..Overrides::default()
        });
        let want = KeyPair::from_seed(KeyType::Sr25519, [0x11; 32]).public();
        assert_eq!(c.key_pair().unwrap().public(), want);
        let c = flags(Overrides {
            seed: Some("zz".into()),
            ..Overrides::default()
        });
        let err = c.key_pair().unwrap_err().to_string();
        assert!(err.contains("ZOS_SEED"), "{err}");
        // The seed is never written to the file.
        c.save(&path).unwrap();
        assert!(!std::fs::read_to_string(&path).unwrap().contains("zz"));
    }
}
