//! Transactions, events and blocks: what is signed, what is hashed, what is emitted.
//!
//! Signed bytes of a transaction ([`signing_bytes`]):
//! `"zos-ledger/tx/v1" ‖ genesis_hash(32) ‖ key_type(1: 0 ed25519, 1 sr25519) ‖ account(32) ‖
//! nonce(u64 BE) ‖ JSON(call)`. The call JSON is canonical because every type here serialises its
//! fields in declaration order and holds no maps. The transaction hash is
//! `sha256(signing_bytes ‖ signature)`.
//!
//! Block hash ([`BlockHeader::hash`]): `sha256("zos-ledger/block/v2" ‖ height ‖ parent(32) ‖
//! timestamp ‖ tx_count ‖ tx_hash(32)… ‖ events_hash(32) ‖ state_root(32))` with integers as u64
//! BE; the producer signs it (`crate::proof`).

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zos_types::crypto::{KeyPair, KeyType, PublicKey};

use crate::types::{
    Balance, ContractResources, Farm, Interface, Location, MAX_ROLLBACK_REASON, MAX_VERSION_LEN,
    Node, NruConsumption, PricingPolicy, PublicConfig, PublicIp, Resources, Twin,
};

/// Everything a signed transaction can ask for. Who may call what is in `docs/ledger.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    /// Move `amount` to `to`.
    Transfer {
        /// Receiver.
        to: PublicKey,
        /// Amount (> 0).
        amount: Balance,
    },
    /// Create the caller's twin (one per account).
    CreateTwin {
        /// Relay addresses.
        relays: Vec<String>,
        /// Hex E2E public key.
        e2e_key: Option<String>,
    },
    /// Replace the caller's twin's relays and E2E key.
    UpdateTwin {
        /// Relay addresses.
        relays: Vec<String>,
        /// Hex E2E public key.
        e2e_key: Option<String>,
    },
    /// Create a farm owned by the caller's twin.
    CreateFarm {
        /// Unique farm name.
        name: String,
    },
    /// Add an address to a farm's IPv4 pool (farm owner).
    AddFarmIp {
        /// Farm.
        farm_id: u32,
        /// Address with prefix, e.g. `185.69.166.10/24`.
        ip: String,
        /// Gateway inside that prefix.
        gateway: String,
    },
    /// Remove a free address from a farm's pool (farm owner).
    RemoveFarmIp {
        /// Farm.
        farm_id: u32,
        /// The address as stored.
        ip: String,
    },
    /// Register the caller's twin as a node of `farm_id` (one node per twin).
    CreateNode {
        /// Farm.
        farm_id: u32,
        /// Total capacity.
        resources: Resources,
        /// Location.
        location: Location,
        /// Interfaces.
        interfaces: Vec<Interface>,
        /// Optional public config.
        public_config: Option<PublicConfig>,
        /// Feature flags.
        features: Vec<String>,
        /// Software version.
        version: String,
        /// Runs in a VM.
        virtualized: bool,
        /// Booted with secure boot.
        secure_boot: bool,
        /// Board serial.
        serial_number: String,
    },
    /// Update the caller's node (node twin only); `public_config` is left as is.
    UpdateNode {
        /// The node (must belong to the caller's twin).
        node_id: u32,
        /// Farm (may move to another existing farm).
        farm_id: u32,
        /// Total capacity.
        resources: Resources,
        /// Location.
        location: Location,
        /// Interfaces.
        interfaces: Vec<Interface>,
        /// Feature flags.
        features: Vec<String>,
        /// Software version.
        version: String,
        /// Runs in a VM.
        virtualized: bool,
        /// Booted with secure boot.
        secure_boot: bool,
        /// Board serial.
        serial_number: String,
    },
    /// Report the caller's node uptime (seconds since boot).
    ReportUptime {
        /// Uptime in seconds.
        uptime: u64,
    },
    /// Set or clear a node's public config (owner of the node's farm).
    SetNodePublicConfig {
        /// The node.
        node_id: u32,
        /// New config; `None` clears it.
        config: Option<PublicConfig>,
    },
    /// Create a node contract for a deployment.
    CreateNodeContract {
        /// The node.
        node_id: u32,
        /// 32 lowercase hex characters.
        deployment_hash: String,
        /// ≤ 512 bytes of user data.
        deployment_data: String,
        /// Number of public IPv4 addresses to reserve from the node's farm.
        public_ips: u32,
    },
    /// Change a node contract's deployment hash and data (owner; not in grace period).
    UpdateNodeContract {
        /// The contract.
        contract_id: u64,
        /// New hash.
        deployment_hash: String,
        /// New data.
        deployment_data: String,
    },
    /// Cancel a node or name contract (owner).
    CancelContract {
        /// The contract.
        contract_id: u64,
    },
    /// Reserve a unique gateway name.
    CreateNameContract {
        /// The name.
        name: String,
    },
    /// Node-side: used resources per contract (the caller must be the node of each contract).
    ReportContractResources(Vec<ContractResources>),
    /// Node-side: network consumption per contract.
    AddNruReports(Vec<NruConsumption>),
    /// Council: set the target node software version and its rollout stage; clears a halt.
    // The stage fields are newer than the call: absent in old JSON, and not written while empty
    // so the signed bytes of an unstaged call are what they always were.
    SetZosVersion {
        /// Version.
        version: String,
        /// May nodes upgrade now.
        safe_to_upgrade: bool,
        /// Only nodes of these (existing) farms upgrade; empty: every farm. At most 1000.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        farms: Vec<u32>,
        /// Only this percentage (1..=100) of nodes upgrades; `None`: every node.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        share_percent: Option<u8>,
    },
    /// Council: replace the pricing policy.
    SetPricingPolicy {
        /// New prices.
        policy: PricingPolicy,
    },
    /// Node-side (the node's twin): the node rolled back from `version`. When `version` is
    /// the current target, the rollout halts (see [`crate::types::ZosVersion::halted`]).
    ReportRollback {
        /// The caller's node.
        node_id: u32,
        /// The version it rolled back from (1..=64 bytes).
        version: String,
        /// Why (at most 512 bytes; [`Call::report_rollback`] truncates).
        reason: String,
    },
    /// Move the caller's twin to another signing account (key rotation). The new account must
    /// have no twin and consents with a signature over [`rotate_account_message`], so nobody can
    /// hand a twin (and its bills) to a key they do not hold.
    RotateTwinAccount {
        /// The account that signs for the twin from now on.
        new_account: PublicKey,
        /// Hex signature by `new_account` over [`rotate_account_message`].
        consent: String,
    },
    /// Farmer: put a node of the caller's farm in maintenance (`on`) or take it out. New
    /// contracts on it are refused meanwhile; existing ones keep running, or are paused
    /// (and not billed) when `pause`.
    SetNodeMaintenance {
        /// The node.
        node_id: u32,
        /// Enter (`true`) or leave maintenance.
        on: bool,
        /// Ask the node to pause its workloads while in maintenance.
        pause: bool,
    },
    /// Farmer: give node `from`'s record (id, contracts, public config) to the machine that
    /// registered as node `to` after losing its identity; `to`'s record is removed. Both must
    /// be in the caller's farm and `to` must have no contracts.
    MoveNode {
        /// The old node (its id is kept).
        from: u32,
        /// The node record the new identity made.
        to: u32,
    },
}

/// What the new account signs to accept twin `twin_id` from `old` (see
/// [`Call::RotateTwinAccount`]). The transaction itself carries the chain binding (genesis hash
/// and nonce of `old`), so the consent only names the twin and both keys.
pub fn rotate_account_message(twin_id: u32, old: &PublicKey, new: &PublicKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"zos-ledger/rotate-twin-account/v1");
    out.extend_from_slice(&twin_id.to_be_bytes());
    for k in [old, new] {
        out.push(match k.key_type {
            KeyType::Ed25519 => 0,
            KeyType::Sr25519 => 1,
        });
        out.extend_from_slice(&k.bytes);
    }
    out
}

impl Call {
    /// A [`Call::ReportRollback`] whose version and reason are cut (at a character boundary)
    /// to what the ledger accepts, so a long local reason never makes the report fail.
    pub fn report_rollback(node_id: u32, version: &str, reason: &str) -> Call {
        Call::ReportRollback {
            node_id,
            version: truncate_utf8(version, MAX_VERSION_LEN).to_owned(),
            reason: truncate_utf8(reason, MAX_ROLLBACK_REASON).to_owned(),
        }
    }

    /// A [`Call::RotateTwinAccount`] for twin `twin_id` owned by `old`, consented by `new`.
    pub fn rotate_twin_account(twin_id: u32, old: &PublicKey, new: &KeyPair) -> Call {
        let new_account = new.public();
        let consent = hex::encode(new.sign(&rotate_account_message(twin_id, old, &new_account)));
        Call::RotateTwinAccount {
            new_account,
            consent,
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends at a character boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A call signed by its account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedTransaction {
    /// The signer (pays, owns).
    pub account: PublicKey,
    /// Must equal the account's current nonce.
    pub nonce: u64,
    /// What to do.
    pub call: Call,
    /// Hex 64-byte signature over [`signing_bytes`].
    pub signature: String,
}

/// The bytes an account signs (see the module doc).
pub fn signing_bytes(
    genesis_hash: &[u8; 32],
    account: &PublicKey,
    nonce: u64,
    call: &Call,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"zos-ledger/tx/v1");
    out.extend_from_slice(genesis_hash);
    out.push(match account.key_type {
        KeyType::Ed25519 => 0,
        KeyType::Sr25519 => 1,
    });
    out.extend_from_slice(&account.bytes);
    out.extend_from_slice(&nonce.to_be_bytes());
    serde_json::to_writer(&mut out, call).expect("calls always serialise");
    out
}

impl SignedTransaction {
    /// Signs `call` with `key` for the ledger identified by `genesis_hash`.
    pub fn sign(key: &KeyPair, genesis_hash: &[u8; 32], nonce: u64, call: Call) -> Self {
        let account = key.public();
        let sig = key.sign(&signing_bytes(genesis_hash, &account, nonce, &call));
        SignedTransaction {
            account,
            nonce,
            call,
            signature: hex::encode(sig),
        }
    }

    /// Whether the signature is valid for this ledger.
    pub fn verify(&self, genesis_hash: &[u8; 32]) -> bool {
        let Ok(sig) = hex::decode(&self.signature) else {
            return false;
        };
        // Exactly 64 bytes for both schemes, checked here whatever a verifier would accept:
        // a signature with bytes appended would verify under a different transaction hash.
        if sig.len() != 64 {
            return false;
        }
        self.account.verify(
            &signing_bytes(genesis_hash, &self.account, self.nonce, &self.call),
            &sig,
        )
    }

    /// `sha256(signing_bytes ‖ signature bytes)`; an undecodable signature hashes as its text.
    pub fn hash(&self, genesis_hash: &[u8; 32]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(signing_bytes(
            genesis_hash,
            &self.account,
            self.nonce,
            &self.call,
        ));
        match hex::decode(&self.signature) {
            Ok(sig) => h.update(sig),
            Err(_) => h.update(self.signature.as_bytes()),
        }
        h.finalize().into()
    }
}

/// Something that changed, emitted by a transaction or by billing.
// Plain (unboxed) payloads keep events easy to match on for every consumer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// Balance moved.
    Transfer {
        /// Sender.
        from: PublicKey,
        /// Receiver.
        to: PublicKey,
        /// Amount.
        amount: Balance,
    },
    /// A twin was created or updated.
    TwinStored {
        /// The twin as stored.
        twin: Twin,
    },
    /// A farm was created or its pool changed.
    FarmStored {
        /// The farm as stored.
        farm: Farm,
    },
    /// A node was created or updated.
    NodeStored {
        /// The node as stored.
        node: Node,
    },
    /// A node reported its uptime.
    NodeUptimeReported {
        /// Node.
        node_id: u32,
        /// Ledger time of the report.
        timestamp: u64,
        /// Reported uptime.
        uptime: u64,
    },
    /// A farmer set or cleared a node's public config.
    NodePublicConfigStored {
        /// Node.
        node_id: u32,
        /// New config.
        config: Option<PublicConfig>,
    },
    /// A node contract was created.
    NodeContractCreated {
        /// Contract.
        contract_id: u64,
        /// Node.
        node_id: u32,
        /// Owner.
        twin_id: u32,
        /// Deployment hash.
        deployment_hash: String,
        /// Reserved addresses.
        public_ips_list: Vec<PublicIp>,
    },
    /// A node contract's hash changed.
    NodeContractUpdated {
        /// Contract.
        contract_id: u64,
        /// Node.
        node_id: u32,
        /// Owner.
        twin_id: u32,
        /// New deployment hash.
        deployment_hash: String,
    },
    /// A node contract ended (by its owner or out of funds); its IPs are free again.
    NodeContractCanceled {
        /// Contract.
        contract_id: u64,
        /// Node.
        node_id: u32,
        /// Owner.
        twin_id: u32,
    },
    /// The owner could not pay: pause the workloads.
    ContractGracePeriodStarted {
        /// Contract.
        contract_id: u64,
        /// Node (0 for a name contract).
        node_id: u32,
        /// Owner.
        twin_id: u32,
    },
    /// The owner paid again: resume the workloads.
    ContractGracePeriodEnded {
        /// Contract.
        contract_id: u64,
        /// Node (0 for a name contract).
        node_id: u32,
        /// Owner.
        twin_id: u32,
    },
    /// A name was reserved.
    NameContractCreated {
        /// Contract.
        contract_id: u64,
        /// Owner.
        twin_id: u32,
        /// Name.
        name: String,
    },
    /// A name reservation ended.
    NameContractCanceled {
        /// Contract.
        contract_id: u64,
        /// Owner.
        twin_id: u32,
        /// Name.
        name: String,
    },
    /// A node reported used resources for a contract.
    ContractResourcesReported {
        /// Contract.
        contract_id: u64,
        /// Used capacity.
        used: Resources,
    },
    /// A node reported network consumption for a contract.
    NruReported {
        /// Contract.
        contract_id: u64,
        /// Bytes.
        nru: u64,
    },
    /// Fair billing: the node reported the deployment up; charges run from now.
    ContractBillingStarted {
        /// Contract.
        contract_id: u64,
        /// Node.
        node_id: u32,
        /// Owner.
        twin_id: u32,
    },
    /// A farmer put a node in maintenance or took it out.
    NodeMaintenanceSet {
        /// Node.
        node_id: u32,
        /// In maintenance now.
        on: bool,
        /// Workloads paused.
        pause: bool,
    },
    /// Notice to a contract's owner that its node entered (`on`) or left maintenance.
    ContractNodeMaintenance {
        /// Contract.
        contract_id: u64,
        /// Node.
        node_id: u32,
        /// Owner.
        twin_id: u32,
        /// In maintenance now.
        on: bool,
        /// Workloads paused.
        pause: bool,
    },
    /// A farmer moved node `from`'s record to the identity of node `to` (removed).
    NodeMoved {
        /// The kept node id.
        from: u32,
        /// The removed node id.
        to: u32,
        /// The twin that now runs node `from`.
        twin_id: u32,
    },
    /// A contract was charged.
    ContractBilled {
        /// Contract.
        contract_id: u64,
        /// Ledger time of the charge.
        timestamp: u64,
        /// Amount charged.
        amount: Balance,
    },
    /// The council set the target software version (any halt is cleared).
    ZosVersionUpdated {
        /// Version.
        version: String,
        /// May nodes upgrade now.
        safe_to_upgrade: bool,
        /// Stage farms (empty: every farm); not written when empty, as before staging existed.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        farms: Vec<u32>,
        /// Stage share; not written when `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        share_percent: Option<u8>,
    },
    /// A node rolled back from the target version: the rollout is halted.
    RolloutHalted {
        /// The node.
        node_id: u32,
        /// The target version it rolled back from.
        version: String,
        /// Its reason.
        reason: String,
    },
    /// A node rolled back from a version that is not the target (or the rollout is already
    /// halted): recorded here only.
    RollbackReported {
        /// The node.
        node_id: u32,
        /// The version it rolled back from.
        version: String,
        /// Its reason.
        reason: String,
    },
    /// The council replaced the pricing policy.
    PricingPolicyStored {
        /// New prices.
        policy: PricingPolicy,
    },
}

/// An event with its position: block height and index within the block's events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Block height.
    pub height: u64,
    /// Index among the block's events (0, 1, …).
    pub index: u32,
    /// The event.
    pub event: Event,
}

/// The answer to an accepted transaction, sent once its block is durable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// Hex transaction hash.
    pub tx_hash: String,
    /// Block that holds it.
    pub height: u64,
    /// Position in the block's transactions.
    pub index: u32,
    /// Events it emitted.
    pub events: Vec<EventRecord>,
}

/// Where a transaction landed (answer of `ledger_tx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxLocation {
    /// Block height.
    pub height: u64,
    /// Position in the block.
    pub index: u32,
    /// This transaction's events: `[first, end)` indexes into the block's event list (absent
    /// on blocks written before they were recorded). With it, a client that lost the answer
    /// to a submission rebuilds the exact receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<[u32; 2]>,
}

/// The hashed part of a block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHeader {
    /// 0 for genesis.
    pub height: u64,
    /// Hex hash of the previous block (64 zeros for genesis).
    pub parent_hash: String,
    /// Ledger time (seconds) at which billing ran and the transactions applied; never decreases.
    pub timestamp: u64,
    /// Hex hashes of the transactions, in order.
    pub tx_hashes: Vec<String>,
    /// Hex sha256 of the JSON list of the block's events (genesis: the genesis hash).
    pub events_hash: String,
    /// Hex commitment over the whole state after this block (see [`crate::proof`]).
    pub state_root: String,
}

/// A block: header, its hash, and the transactions it commits to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Block {
    /// Hashed header.
    pub header: BlockHeader,
    /// Hex [`BlockHeader::hash`].
    pub hash: String,
    /// Hex ed25519 signature of the producer over the block hash ([`crate::proof::head_message`]);
    /// absent only on a ledger whose genesis names no producer (tests, replays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The transactions, in `header.tx_hashes` order.
    pub transactions: Vec<SignedTransaction>,
}

impl BlockHeader {
    /// The block hash (see the module doc); `None` if a hex field is malformed.
    pub fn hash(&self) -> Option<[u8; 32]> {
        let mut h = Sha256::new();
        h.update(b"zos-ledger/block/v2");
        h.update(self.height.to_be_bytes());
        h.update(decode32(&self.parent_hash)?);
        h.update(self.timestamp.to_be_bytes());
        h.update((self.tx_hashes.len() as u64).to_be_bytes());
        for t in &self.tx_hashes {
            h.update(decode32(t)?);
        }
        h.update(decode32(&self.events_hash)?);
        h.update(decode32(&self.state_root)?);
        Some(h.finalize().into())
    }
}

/// Hash of a block's event list, committed in its header.
pub fn events_hash(events: &[Event]) -> [u8; 32] {
    Sha256::digest(serde_json::to_vec(events).expect("events always serialise")).into()
}

/// Decodes 32 bytes of lowercase or uppercase hex.
pub fn decode32(s: &str) -> Option<[u8; 32]> {
    hex::decode(s).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_binds_nonce_call_and_ledger() {
        let key = KeyPair::from_seed(KeyType::Ed25519, [7; 32]);
        let g = [1u8; 32];
        let tx = SignedTransaction::sign(&key, &g, 3, Call::CreateFarm { name: "f".into() });
        assert!(tx.verify(&g));
        assert!(!tx.verify(&[2u8; 32]), "other ledger");
        let mut t2 = tx.clone();
        t2.nonce = 4;
        assert!(!t2.verify(&g));
        let mut t3 = tx.clone();
        t3.call = Call::CreateFarm { name: "g".into() };
        assert!(!t3.verify(&g));
        assert_ne!(tx.hash(&g), t2.hash(&g));
    }

    #[test]
    fn sr25519_transactions_verify() {
        let key = KeyPair::from_seed(KeyType::Sr25519, [9; 32]);
        let tx = SignedTransaction::sign(&key, &[0; 32], 0, Call::ReportUptime { uptime: 5 });
        assert!(tx.verify(&[0; 32]));
    }

    #[test]
    fn signatures_of_the_wrong_length_are_refused() {
        for kt in [KeyType::Ed25519, KeyType::Sr25519] {
            let key = KeyPair::from_seed(kt, [5; 32]);
            let tx = SignedTransaction::sign(&key, &[0; 32], 0, Call::ReportUptime { uptime: 1 });
            assert!(tx.verify(&[0; 32]));
            for sig in [
                format!("{}00", tx.signature),
                format!("{}{}", tx.signature, "ab".repeat(32)),
                tx.signature[..126].to_string(),
                String::new(),
            ] {
                let mut bad = tx.clone();
                bad.signature = sig;
                assert!(!bad.verify(&[0; 32]), "{kt:?} {}", bad.signature.len());
            }
        }
    }

    #[test]
    fn unstaged_set_zos_version_signs_the_old_bytes() {
        // JSON of the call before staging existed: it still decodes, and re-encodes to the
        // same bytes, so old transactions keep their signatures and hashes.
        let old = r#"{"set_zos_version":{"version":"1.2.3","safe_to_upgrade":true}}"#;
        let call: Call = serde_json::from_str(old).unwrap();
        assert_eq!(
            call,
            Call::SetZosVersion {
                version: "1.2.3".into(),
                safe_to_upgrade: true,
                farms: vec![],
                share_percent: None,
            }
        );
        assert_eq!(serde_json::to_string(&call).unwrap(), old);
        let staged: Call = serde_json::from_str(
            r#"{"set_zos_version":{"version":"2","safe_to_upgrade":false,"farms":[1,2],"share_percent":10}}"#,
        )
        .unwrap();
        assert!(matches!(
            staged,
            Call::SetZosVersion { ref farms, share_percent: Some(10), .. } if farms == &[1, 2]
        ));
        let ev = Event::ZosVersionUpdated {
            version: "1.2.3".into(),
            safe_to_upgrade: true,
            farms: vec![],
            share_percent: None,
        };
        assert_eq!(
            serde_json::to_string(&ev).unwrap(),
            r#"{"zos_version_updated":{"version":"1.2.3","safe_to_upgrade":true}}"#
        );
    }

    #[test]
    fn report_rollback_cuts_at_char_boundaries() {
        let long = "é".repeat(400); // 800 bytes
        let Call::ReportRollback {
            node_id,
            version,
            reason,
        } = Call::report_rollback(3, &"v".repeat(100), &long)
        else {
            panic!("not a rollback report");
        };
        assert_eq!((node_id, version.len()), (3, MAX_VERSION_LEN));
        assert_eq!(reason.len(), MAX_ROLLBACK_REASON);
        assert!(long.starts_with(&reason));
        let odd = format!("x{long}");
        let Call::ReportRollback { reason, .. } = Call::report_rollback(1, "v", &odd) else {
            panic!("not a rollback report");
        };
        assert_eq!(reason.len(), MAX_ROLLBACK_REASON - 1, "no half character");
        let Call::ReportRollback { reason, .. } = Call::report_rollback(1, "v", "short") else {
            panic!("not a rollback report");
        };
        assert_eq!(reason, "short");
    }

    #[test]
    fn block_hash_rejects_malformed_hex() {
        let h = BlockHeader {
            height: 1,
            parent_hash: "zz".into(),
            timestamp: 0,
            tx_hashes: vec![],
            events_hash: hex::encode([0u8; 32]),
            state_root: hex::encode([0u8; 32]),
        };
        assert!(h.hash().is_none());
    }
}
