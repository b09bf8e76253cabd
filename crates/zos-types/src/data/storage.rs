//! zmount, volume, zdb and qsfs.

use serde::{Deserialize, Serialize};

use crate::challenge::Challenge;
use crate::error::ValidationError;
use crate::gofmt::HexBytes;

/// A VM disk of `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ZMount {
    /// Size in bytes.
    pub size: u64,
}

/// Result of a zmount: `{"volume_id": wlid}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ZMountResult {
    /// The workload id of the disk.
    pub volume_id: String,
}

impl ZMount {
    pub(crate) fn challenge(&self, c: &mut Challenge) {
        c.d(self.size);
    }
    pub(crate) fn validate(&self) -> Result<(), ValidationError> {
        size_set(self.size)
    }
}

/// A persistent volume of `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Volume {
    /// Size in bytes.
    pub size: u64,
}

/// Result of a volume: `{"id": wlid}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VolumeResult {
    /// The workload id of the volume.
    pub id: String,
}

impl Volume {
    pub(crate) fn challenge(&self, c: &mut Challenge) {
        c.d(self.size);
    }
    pub(crate) fn validate(&self) -> Result<(), ValidationError> {
        size_set(self.size)
    }
}

fn size_set(size: u64) -> Result<(), ValidationError> {
    if size == 0 {
        return Err(ValidationError::new("invalid size"));
    }
    Ok(())
}

/// ZeroDB namespace mode. Any string is carried; only `user` and `seq` validate.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ZdbMode(pub String);

impl ZdbMode {
    /// Key-value mode.
    pub const USER: &'static str = "user";
    /// Sequential (auto-increment id) mode.
    pub const SEQ: &'static str = "seq";
}

/// A ZeroDB namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Zdb {
    /// Maximum size in bytes.
    pub size: u64,
    /// `user` or `seq`.
    pub mode: ZdbMode,
    /// Namespace password (empty: none).
    pub password: String,
    /// Readable without the password.
    pub public: bool,
}

impl Zdb {
    pub(crate) fn challenge(&self, c: &mut Challenge) {
        c.d(self.size)
            .s(&self.mode.0)
            .s(&self.password)
            .t(self.public);
    }
    pub(crate) fn validate(&self) -> Result<(), ValidationError> {
        size_set(self.size)?;
        if self.mode.0 != ZdbMode::USER && self.mode.0 != ZdbMode::SEQ {
            return Err(ValidationError::new("invalid mode"));
        }
        Ok(())
    }
}

/// Result of a zdb workload. Upstream has no JSON tags here, hence the capitalised keys.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ZdbResult {
    /// The namespace name (the workload id).
    #[serde(rename = "Namespace")]
    pub namespace: String,
    /// Addresses the namespace is reachable on.
    #[serde(rename = "IPs")]
    pub ips: Vec<String>,
    /// TCP port.
    #[serde(rename = "Port")]
    pub port: u16,
}

/// Encryption settings of qsfs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Encryption {
    /// Algorithm name.
    pub algorithm: String,
    /// Key (hex in JSON).
    pub key: HexBytes,
}

impl Encryption {
    fn challenge(&self, c: &mut Challenge) {
        c.s(&self.algorithm).x(&self.key.0);
    }
}

/// A ZeroDB backend of qsfs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct ZdbBackend {
    pub address: String,
    pub namespace: String,
    pub password: String,
}

impl ZdbBackend {
    fn challenge(&self, c: &mut Challenge) {
        c.s(&self.address).s(&self.namespace).s(&self.password);
    }
}

/// qsfs metadata store configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct QuantumSafeConfig {
    pub prefix: String,
    pub encryption: Encryption,
    pub backends: Vec<ZdbBackend>,
}

/// qsfs metadata store.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct QuantumSafeMeta {
    #[serde(rename = "type")]
    pub meta_type: String,
    pub config: QuantumSafeConfig,
}

/// A group of qsfs data backends.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct ZdbGroup {
    pub backends: Vec<ZdbBackend>,
}

/// qsfs compression.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct QuantumCompression {
    pub algorithm: String,
}

/// qsfs configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
#[allow(missing_docs)]
pub struct QuantumSafeFsConfig {
    pub minimal_shards: u32,
    pub expected_shards: u32,
    pub redundant_groups: u32,
    pub redundant_nodes: u32,
    pub max_zdb_data_dir_size: u32,
    pub encryption: Encryption,
    pub meta: QuantumSafeMeta,
    pub groups: Vec<ZdbGroup>,
    pub compression: QuantumCompression,
}

/// A quantum-safe file system.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct QuantumSafeFs {
    /// Local cache size in bytes.
    pub cache: u64,
    /// Configuration.
    pub config: QuantumSafeFsConfig,
}

impl QuantumSafeFs {
    pub(crate) fn challenge(&self, c: &mut Challenge) {
        let cfg = &self.config;
        c.d(self.cache)
            .d(cfg.minimal_shards)
            .d(cfg.expected_shards)
            .d(cfg.redundant_groups)
            .d(cfg.redundant_nodes)
            .d(cfg.max_zdb_data_dir_size);
        cfg.encryption.challenge(c);
        c.s(&cfg.meta.meta_type).s(&cfg.meta.config.prefix);
        cfg.meta.config.encryption.challenge(c);
        c.list(cfg.meta.config.backends.len());
        for b in &cfg.meta.config.backends {
            b.challenge(c);
        }
        c.list(cfg.groups.len());
        for g in &cfg.groups {
            c.list(g.backends.len());
            for b in &g.backends {
                b.challenge(c);
            }
        }
        c.s(&cfg.compression.algorithm);
    }

    pub(crate) fn validate(&self) -> Result<(), ValidationError> {
        if self.config.minimal_shards > self.config.expected_shards {
            return Err(ValidationError::new(
                "minimal shards can't be greater than expected shards",
            ));
        }
        Ok(())
    }
}
