//! Client configuration: a TOML file in the XDG config directory, overridden by the
//! environment (`ZOS_LEDGER`, `ZOS_RELAY`, `ZOS_KEY`) and then by flags.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The client configuration file (`$XDG_CONFIG_HOME/zos/config.toml`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Ledger JSON-RPC URL, e.g. `http://127.0.0.1:7600`.
    pub ledger: Option<String>,
    /// Relay WebSocket URL, e.g. `ws://127.0.0.1:7700`.
    pub relay: Option<String>,
    /// Path of the user's key file.
    pub key: Option<PathBuf>,
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

    /// Applies `ZOS_LEDGER`, `ZOS_RELAY`, `ZOS_KEY` (a key file path).
    pub fn with_env(mut self) -> Config {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(v) = var("ZOS_LEDGER") {
            self.ledger = Some(v);
        }
        if let Some(v) = var("ZOS_RELAY") {
            self.relay = Some(v);
        }
        if let Some(v) = var("ZOS_KEY") {
            self.key = Some(PathBuf::from(v));
        }
        self
    }

    /// The ledger URL or a message saying how to set it.
    pub fn require_ledger(&self) -> Result<&str, ConfigError> {
        self.ledger
            .as_deref()
            .ok_or_else(|| missing("ledger URL", "ZOS_LEDGER", "ledger"))
    }

    /// The relay URL or a message saying how to set it.
    pub fn require_relay(&self) -> Result<&str, ConfigError> {
        self.relay
            .as_deref()
            .ok_or_else(|| missing("relay URL", "ZOS_RELAY", "relay"))
    }

    /// The key file path or a message saying how to set it.
    pub fn require_key(&self) -> Result<&Path, ConfigError> {
        self.key
            .as_deref()
            .ok_or_else(|| missing("key file", "ZOS_KEY", "key"))
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
}
