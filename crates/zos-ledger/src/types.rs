//! The ledger's state objects (twins, farms, nodes, contracts, policy, genesis) as they appear on
//! the JSON-RPC wire and in the store. Field sets follow TFChain's `pallet-tfgrid` and
//! `pallet-smart-contract` where zos needs them; see `docs/ledger.md` for the differences.

use serde::{Deserialize, Serialize};
use zos_types::crypto::PublicKey;

/// Token amounts in the smallest unit (TFChain uses 7 decimals: 10_000_000 units = 1 TFT).
pub type Balance = u64;

/// One account: a balance and the nonce its next transaction must carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Spendable balance.
    pub balance: Balance,
    /// Number of transactions this account has had applied; the next one must carry this nonce.
    pub nonce: u64,
}

/// A twin: the on-ledger identity of an account on the message bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Twin {
    /// Twin id (1, 2, …).
    pub id: u32,
    /// The account that owns and signs for this twin.
    pub account: PublicKey,
    /// RMB relay addresses (domains or URLs) where this twin is reachable.
    pub relays: Vec<String>,
    /// Hex public key used for end-to-end encryption on the message bus (X25519 in zos).
    pub e2e_key: Option<String>,
}

/// A farm: a named group of nodes owned by a twin, with a public IPv4 pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Farm {
    /// Farm id (1, 2, …).
    pub id: u32,
    /// Unique name.
    pub name: String,
    /// Owner twin.
    pub twin_id: u32,
    /// The public IPv4 pool; each address is assigned to at most one contract.
    pub public_ips: Vec<PublicIp>,
}

/// One public IPv4 address of a farm's pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicIp {
    /// Address with prefix length, e.g. `185.69.166.10/24`.
    pub ip: String,
    /// Gateway address, e.g. `185.69.166.1`.
    pub gateway: String,
    /// The contract holding this address; 0 = free.
    pub contract_id: u64,
}

/// Capacity units: cores, SSD bytes, HDD bytes, memory bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Virtual cores.
    pub cru: u64,
    /// SSD bytes.
    pub sru: u64,
    /// HDD bytes.
    pub hru: u64,
    /// Memory bytes.
    pub mru: u64,
}

/// Where a node is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Location {
    /// City name.
    pub city: String,
    /// Country name.
    pub country: String,
    /// Latitude as text (as upstream does, to stay exact).
    pub latitude: String,
    /// Longitude as text.
    pub longitude: String,
}

/// A network interface of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name (`zos`, …).
    pub name: String,
    /// MAC address.
    pub mac: String,
    /// Addresses on it.
    pub ips: Vec<String>,
}

/// An address and its gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length.
    pub ip: String,
    /// Gateway address.
    pub gw: String,
}

/// Public network configuration of a node, set by its farmer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicConfig {
    /// IPv4 address and gateway.
    pub ip4: IpConfig,
    /// Optional IPv6 address and gateway.
    pub ip6: Option<IpConfig>,
    /// Optional domain served by the node's gateway.
    pub domain: Option<String>,
}

/// A node, registered and updated by its own twin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Node id (1, 2, …).
    pub id: u32,
    /// The farm the node belongs to.
    pub farm_id: u32,
    /// The node's own twin.
    pub twin_id: u32,
    /// Total capacity.
    pub resources: Resources,
    /// Location.
    pub location: Location,
    /// Network interfaces.
    pub interfaces: Vec<Interface>,
    /// Public config (set by the farmer with `SetNodePublicConfig`, or at creation).
    pub public_config: Option<PublicConfig>,
    /// Feature flags the node supports (e.g. `zmount`, `network`).
    pub features: Vec<String>,
    /// Software version the node runs.
    pub version: String,
    /// Whether the node runs in a VM.
    pub virtualized: bool,
    /// Whether the node booted with secure boot.
    pub secure_boot: bool,
    /// Board serial number.
    pub serial_number: String,
    /// Ledger time of registration (seconds).
    pub created: u64,
    /// Last reported uptime (seconds).
    pub uptime: u64,
    /// Ledger time of the last update or uptime report.
    pub updated_at: u64,
    /// Maintenance mode, set by the farmer (`set_node_maintenance`): new contracts are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
    /// Ledger time the node was last heard from directly: its last own transaction (uptime or
    /// usage report, update). Kept on ledgers with fair billing (`offline_cutoff_secs`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_seen: u64,
}

/// A node's maintenance mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    /// Ledger time it started.
    pub since: u64,
    /// The farmer asked the node to pause its workloads (not billed while paused).
    pub pause: bool,
}

/// Time a contract was not billed because its node was silent past the cut-off or paused for
/// maintenance: `[from, to)` in ledger seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingGap {
    /// Start (ledger time).
    pub from: u64,
    /// End (ledger time).
    pub to: u64,
}

/// The most recent gaps kept per contract (the total stays in `offline_secs`).
pub const MAX_GAPS: usize = 8;

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Lifecycle of a contract: created → grace period → deleted (grace can also return to created).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContractState {
    /// Active and paid.
    Created,
    /// The owner could not pay since ledger time `since`; workloads should be paused.
    GracePeriod {
        /// Ledger time the grace period started.
        since: u64,
    },
    /// Gone; `reason` is `canceled_by_user` or `out_of_funds`.
    Deleted {
        /// Why the contract ended.
        reason: String,
    },
}

impl ContractState {
    /// Created or in grace period (the node keeps the deployment).
    pub fn is_active(&self) -> bool {
        !matches!(self, ContractState::Deleted { .. })
    }
}

/// What a contract reserves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContractKind {
    /// A deployment on a node.
    Node {
        /// The node running the deployment.
        node_id: u32,
        /// `hex(md5(challenge))` of the deployment: 32 lowercase hex characters.
        deployment_hash: String,
        /// Free-form data for the user (≤ 512 bytes).
        deployment_data: String,
        /// Number of public IPv4 addresses requested.
        public_ips: u32,
        /// The farm addresses reserved for this contract.
        public_ips_list: Vec<PublicIp>,
    },
    /// A unique gateway name.
    Name {
        /// The reserved name.
        name: String,
    },
}

/// Billing bookkeeping of one contract.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingInfo {
    /// Ledger time up to which the contract has been charged (or its creation time).
    pub last_billed: u64,
    /// Amount due but not yet paid (carried while in grace period).
    pub amount_unbilled: Balance,
    /// Network bytes reported since the last successful charge.
    pub nru_unbilled: u64,
    /// Resources the node last reported as used by this contract.
    pub used: Resources,
    /// Total amount ever charged.
    pub total_billed: Balance,
    /// Ledger time of the next scheduled charge.
    pub next_bill: u64,
    /// Fair billing: ledger time billing started (the node reported the deployment up);
    /// `None` = not started, nothing is charged yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<u64>,
    /// Fair billing: seconds never billed because the node was silent past the cut-off or
    /// paused for maintenance (total).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offline_secs: u64,
    /// Of those, the seconds after `last_billed` the next charge leaves out.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offline_pending: u64,
    /// The latest gaps (at most [`MAX_GAPS`]), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gaps: Vec<BillingGap>,
}

/// A contract between a twin and the grid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contract {
    /// Contract id (1, 2, …).
    pub id: u64,
    /// Owner twin (pays).
    pub twin_id: u32,
    /// Lifecycle state.
    pub state: ContractState,
    /// Node or name contract.
    pub kind: ContractKind,
    /// Ledger time of creation.
    pub created: u64,
    /// Billing bookkeeping.
    pub billing: BillingInfo,
}

impl Contract {
    /// The node of a node contract.
    pub fn node_id(&self) -> Option<u32> {
        match &self.kind {
            ContractKind::Node { node_id, .. } => Some(*node_id),
            ContractKind::Name { .. } => None,
        }
    }
}

/// Resources used by one contract, as reported by its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractResources {
    /// The contract.
    pub contract_id: u64,
    /// Used capacity.
    pub used: Resources,
    /// The node runs the deployment (a workload is ok): fair billing starts at the first
    /// report saying so. Absent (older nodes) counts as up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
}

/// Public network traffic of one contract over a window, as reported by its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NruConsumption {
    /// The contract.
    pub contract_id: u64,
    /// Node's time of the report (seconds).
    pub timestamp: u64,
    /// Seconds covered by the report.
    pub window: u64,
    /// Bytes of public traffic.
    pub nru: u64,
}

/// Prices, set by the council. CU/SU follow upstream's formulas (see [`crate::billing`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingPolicy {
    /// Price of one compute unit per hour.
    pub cu_per_hour: Balance,
    /// Price of one storage unit per hour.
    pub su_per_hour: Balance,
    /// Price of one GB of public traffic.
    pub nu_per_gb: Balance,
    /// Price of one public IPv4 address per hour.
    pub ipv4_per_hour: Balance,
    /// Price of one name contract per hour.
    pub name_per_hour: Balance,
}

impl Default for PricingPolicy {
    /// Roughly TFChain's policy 1 in units of 1e-7 TFT.
    fn default() -> Self {
        PricingPolicy {
            cu_per_hour: 300_000,
            su_per_hour: 150_000,
            nu_per_gb: 150_000,
            ipv4_per_hour: 50_000,
            name_per_hour: 10_000,
        }
    }
}

/// The target node software version, set by the council, with its rollout stage.
///
/// The stage fields and `halted` are newer than the record: they default when absent and are
/// not written while empty, so a record without them encodes to the very bytes it always did
/// (the state root of an old chain replays unchanged; no store migration is needed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZosVersion {
    /// Version string nodes should run.
    pub version: String,
    /// Whether nodes may upgrade to it now.
    pub safe_to_upgrade: bool,
    /// Stage: only nodes of these farms upgrade (empty: every farm).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub farms: Vec<u32>,
    /// Stage: only this percentage of nodes upgrades, chosen by [`rollout_bucket`] (`None`:
    /// every node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_percent: Option<u8>,
    /// Set when a node reported that it rolled back from this version: nobody else upgrades
    /// until the council sets a version again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<RolloutHalt>,
}

/// Why a rollout stopped: the first node that rolled back from the target version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutHalt {
    /// The node that rolled back.
    pub node_id: u32,
    /// The version it rolled back from (the target at the time).
    pub version: String,
    /// The node's reason (e.g. the failed health check).
    pub reason: String,
}

/// Longest version string of [`ZosVersion`] and of a rollback report, in bytes.
pub const MAX_VERSION_LEN: usize = 64;
/// Longest rollback reason the ledger accepts, in bytes (longer ones are refused; use
/// `Call::report_rollback`, which truncates).
pub const MAX_ROLLBACK_REASON: usize = 512;
/// Most farms one rollout stage may name.
pub const MAX_ROLLOUT_FARMS: usize = 1000;

/// A node's place in the rollout of `version`: 0..100, from
/// `sha256("zos-ledger/rollout/v1" ‖ version ‖ node_id BE)`. Stable for a version, so raising
/// the share only adds nodes; different per version, so the first nodes are not always the same.
pub fn rollout_bucket(version: &str, node_id: u32) -> u8 {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    h.update(b"zos-ledger/rollout/v1");
    h.update((version.len() as u64).to_be_bytes());
    h.update(version.as_bytes());
    h.update(node_id.to_be_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    // u64 mod 100: the bias (2^64 mod 100 of 2^64) is negligible.
    (u64::from_be_bytes(first) % 100) as u8
}

impl ZosVersion {
    /// Whether node `node_id` of farm `farm_id` is in this version's rollout stage: its farm is
    /// listed (or no farm is) and its bucket is below the share (or there is no share). Says
    /// nothing about `safe_to_upgrade` or `halted`, which the caller checks too.
    pub fn applies_to(&self, node_id: u32, farm_id: u32) -> bool {
        if !self.farms.is_empty() && !self.farms.contains(&farm_id) {
            return false;
        }
        match self.share_percent {
            None => true,
            Some(share) => rollout_bucket(&self.version, node_id) < share,
        }
    }
}

/// A funded account at genesis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisAccount {
    /// The account.
    pub account: PublicKey,
    /// Its starting balance.
    pub balance: Balance,
}

/// The starting state of a ledger (the `--genesis FILE` JSON). Its hash identifies the ledger
/// and is part of every signed transaction, so transactions cannot be replayed on another ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    /// Free text that makes two ledgers with the same accounts distinct.
    pub chain_name: String,
    /// Ledger time of block 0 (seconds since the Unix epoch).
    pub timestamp: u64,
    /// Funded accounts.
    pub accounts: Vec<GenesisAccount>,
    /// The governance account (target version, pricing).
    pub council: PublicKey,
    /// Initial prices.
    #[serde(default)]
    pub pricing: PricingPolicy,
    /// Seconds of ledger time between two charges of a contract (default 3600).
    #[serde(default = "default_billing_interval")]
    pub billing_interval_secs: u64,
    /// Seconds a contract may stay unpaid before it is deleted (default 14 days).
    #[serde(default = "default_grace_period")]
    pub grace_period_secs: u64,
    /// Random hex chain nonce: two ledgers built from the same file have different genesis
    /// hashes, so a rebuilt ledger cannot replay the old one's public history. Filled in by
    /// `zos ledger serve` when a new ledger starts from a file without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// The block producer's ed25519 key: every block header is signed by it, and clients that
    /// pin it can verify answers against signed heads. Filled in by `zos ledger serve` (from
    /// `DATA/producer.key`) when a new ledger starts from a file without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer: Option<PublicKey>,
    /// Fair billing (docs/ledger.md): node contracts are billed from the node's first report
    /// that the deployment is up, and not for time their node was silent longer than this many
    /// seconds (nor paused for maintenance). Absent: billing from creation (ledgers made
    /// before; a replay must derive the same blocks, so a chain never changes rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_cutoff_secs: Option<u64>,
}

fn default_billing_interval() -> u64 {
    3600
}

fn default_grace_period() -> u64 {
    14 * 24 * 3600
}

impl Genesis {
    /// A fresh random chain nonce (16 bytes, hex).
    pub fn random_nonce() -> String {
        hex::encode(rand::random::<[u8; 16]>())
    }

    /// sha2-256 of the genesis JSON: the ledger's identity.
    pub fn hash(&self) -> [u8; 32] {
        use sha2::Digest as _;
        let json = serde_json::to_vec(self).expect("genesis always serialises");
        sha2::Sha256::digest(&json).into()
    }
}

/// Chain-wide facts a client needs (answer of `ledger_info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerInfo {
    /// Hex genesis hash (part of every transaction's signed bytes).
    pub genesis_hash: String,
    /// Chain name from genesis.
    pub chain_name: String,
    /// Current head height.
    pub head: u64,
    /// Current ledger time (seconds).
    pub time: u64,
    /// Whether dev calls are enabled.
    pub dev: bool,
    /// The council account.
    pub council: PublicKey,
    /// Billing interval (seconds of ledger time).
    pub billing_interval_secs: u64,
    /// Grace period (seconds of ledger time).
    pub grace_period_secs: u64,
    /// The producer key from genesis (pin it: answers are only as trustworthy as the channel
    /// that told you this).
    #[serde(default)]
    pub producer: Option<PublicKey>,
    /// Fair billing's cut-off (seconds), when the ledger bills fairly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_cutoff_secs: Option<u64>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn old_zos_version_records_decode_and_encode_unchanged() {
        let old = r#"{"version":"1.2.3","safe_to_upgrade":true}"#;
        let v: ZosVersion = serde_json::from_str(old).unwrap();
        assert_eq!(v.version, "1.2.3");
        assert!(v.safe_to_upgrade && v.farms.is_empty());
        assert_eq!((v.share_percent, v.halted.clone()), (None, None));
        // Same bytes back: the state root of a chain written before staging does not move.
        assert_eq!(serde_json::to_string(&v).unwrap(), old);
        assert!(v.applies_to(1, 1) && v.applies_to(u32::MAX, 0));
    }

    #[test]
    fn staged_record_round_trips() {
        let v = ZosVersion {
            version: "2.0.0".into(),
            safe_to_upgrade: true,
            farms: vec![3, 9],
            share_percent: Some(25),
            halted: Some(RolloutHalt {
                node_id: 4,
                version: "2.0.0".into(),
                reason: "health check".into(),
            }),
        };
        let back: ZosVersion = serde_json::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn farm_filter() {
        let v = ZosVersion {
            version: "2.0.0".into(),
            farms: vec![3, 9],
            ..ZosVersion::default()
        };
        assert!(v.applies_to(1, 3) && v.applies_to(1, 9));
        assert!(!v.applies_to(1, 4));
    }

    #[test]
    fn share_picks_about_that_share_of_nodes() {
        for share in [1u8, 10, 50, 90] {
            let v = ZosVersion {
                version: "2.0.0".into(),
                share_percent: Some(share),
                ..ZosVersion::default()
            };
            let n = (0..10_000).filter(|id| v.applies_to(*id, 1)).count();
            let want = usize::from(share) * 100;
            // ±30 % of the expected count (the spread of 10 000 draws is far below that).
            assert!(
                n * 10 >= want * 7 && n * 10 <= want * 13,
                "share {share}: {n} of 10000"
            );
        }
        let all = ZosVersion {
            version: "2.0.0".into(),
            share_percent: Some(100),
            ..ZosVersion::default()
        };
        assert!((0..1000).all(|id| all.applies_to(id, 7)));
        let none = ZosVersion {
            share_percent: Some(0),
            ..all.clone()
        };
        assert!(!(0..1000).any(|id| none.applies_to(id, 7)));
        // Another version: another first cohort.
        let a: Vec<u8> = (0..64).map(|id| rollout_bucket("2.0.0", id)).collect();
        let b: Vec<u8> = (0..64).map(|id| rollout_bucket("2.0.1", id)).collect();
        assert_ne!(a, b);
    }

    /// A larger share is a superset of a smaller one (for the same version and farms): raising
    /// the share never takes a node out of the rollout.
    #[test]
    fn larger_share_is_a_superset() {
        use proptest::prelude::*;
        proptest!(ProptestConfig::with_cases(500), |(
            version in "[0-9a-z.-]{1,16}",
            node_id in any::<u32>(),
            farm_id in 0u32..4,
            farms in proptest::collection::vec(0u32..4, 0..3),
            small in 0u8..=100,
            extra in 0u8..=100,
        )| {
            let large = small.saturating_add(extra).min(100);
            let v = |share| ZosVersion {
                version: version.clone(),
                safe_to_upgrade: true,
                farms: farms.clone(),
                share_percent: Some(share),
                halted: None,
            };
            if v(small).applies_to(node_id, farm_id) {
                prop_assert!(v(large).applies_to(node_id, farm_id));
            }
            let everyone = ZosVersion { share_percent: None, ..v(small) };
            if v(large).applies_to(node_id, farm_id) {
                prop_assert!(everyone.applies_to(node_id, farm_id));
            }
            prop_assert!(rollout_bucket(&version, node_id) < 100);
        });
    }
}
