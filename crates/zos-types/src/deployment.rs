//! The deployment: its challenge hash, signatures, validation and update diff.

use std::collections::{HashMap, HashSet};

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::challenge::Challenge;
use crate::crypto::{KeyPair, KeyType};
use crate::error::{DecodeError, ValidationError, VerifyError};
use crate::gofmt::go_hex_decode;
use crate::workload::{Capacity, Timestamp, Workload};

/// `signature_style` of wallets that wrap the hash in `<Bytes>…</Bytes>` before signing.
pub const SIGNATURE_STYLE_POLKA: &str = "polka-wallet";

/// A twin that may (or must) sign the deployment.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SignatureRequest {
    /// The twin.
    pub twin_id: u32,
    /// Whether its signature is required (forced for the deployment's own twin).
    pub required: bool,
    /// The weight its signature adds.
    pub weight: u64,
}

/// A signature over the deployment hash.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Signature {
    /// The signing twin.
    pub twin_id: u32,
    /// Lowercase hex of the signature bytes.
    pub signature: String,
    /// `ed25519` or `sr25519` (anything else is treated as ed25519).
    pub signature_type: String,
}

/// Who must sign, and the signatures collected so far.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SignatureRequirement {
    /// The twins that sign.
    pub requests: Vec<SignatureRequest>,
    /// The total weight needed.
    pub weight_required: u64,
    /// The signatures (not part of the hash).
    pub signatures: Vec<Signature>,
    /// `""` or `"polka-wallet"`.
    pub signature_style: String,
}

/// A deployment: the unit a user signs, the ledger pins by hash and a node runs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Deployment {
    /// 0 on creation, +1 on each update.
    pub version: u32,
    /// The owner twin.
    pub twin_id: u32,
    /// The node contract holding this deployment's hash (not hashed).
    pub contract_id: u64,
    /// User metadata.
    pub metadata: String,
    /// Human description.
    pub description: String,
    /// Deprecated and unused, but hashed.
    pub expiration: Timestamp,
    /// Signers and signatures.
    pub signature_requirement: SignatureRequirement,
    /// The workloads.
    pub workloads: Vec<Workload>,
    /// Which deployment hash the contract holds and the signatures cover: 0 (absent, upstream)
    /// or 1 = MD5 of the unseparated challenge; [`HASH_V2`] = SHA-256 of the length-prefixed
    /// challenge (zos nodes announcing it, see [`VERSION_HASH_KEY`]). Left out of the JSON when 0, so
    /// upstream deployments are byte-for-byte what they were.
    #[serde(skip_serializing_if = "is_zero")]
    pub hash_version: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// `hash_version` of the SHA-256, length-prefixed deployment hash.
pub const HASH_V2: u32 = 2;
/// The member of a zos node's `zos.system.version` answer that lists the `hash_version`s it
/// accepts (`[1, 2]`); upstream nodes have none, so a client sends [`HASH_V2`] only when it is
/// there. (Not a `node_features_get` entry: those name workload types.)
pub const VERSION_HASH_KEY: &str = "deployment_hash";
/// The hash versions this crate computes, as announced under [`VERSION_HASH_KEY`].
pub const HASH_VERSIONS: [u32; 2] = [1, HASH_V2];

/// One step of an update, from upstream `Deployment.Upgrade`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeOp {
    /// The workload disappears.
    Remove,
    /// A new workload.
    Add,
    /// An existing workload changed (its version is the new deployment version).
    Update,
}

/// Upstream `IsValidName`: `^[a-zA-Z0-9_]+$`, 1 to 36 bytes, not `ygg`.
pub fn is_valid_name(name: &str) -> Result<(), ValidationError> {
    if name.is_empty() {
        return Err(ValidationError::new("name cannot be empty"));
    }
    if name.len() > 36 {
        return Err(ValidationError::new("name cannot exceed 36 characters"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(ValidationError::new(
            "unsupported character in workload name",
        ));
    }
    if name == "ygg" {
        return Err(ValidationError::new(format!(
            "invalid name '{name}' is reserved"
        )));
    }
    Ok(())
}

impl Deployment {
    /// Parses a deployment with Go's leniency: unknown members ignored, `null` means unset.
    pub fn from_json(bytes: &[u8]) -> Result<Deployment, DecodeError> {
        let value: serde_json::Value = serde_json::from_slice(bytes)?;
        Ok(serde_json::from_value(crate::json::strip_nulls(value))?)
    }

    /// The challenge byte stream (§3.1 of the reference) of the declared `hash_version`.
    pub fn challenge(&self) -> Result<Vec<u8>, ValidationError> {
        let v2 = match self.hash_version {
            0 | 1 => false,
            HASH_V2 => true,
            v => {
                return Err(ValidationError::new(format!(
                    "unsupported hash_version {v} (0/1: MD5, 2: SHA-256 v2)"
                )));
            }
        };
        let mut c = if v2 {
            Challenge::v2()
        } else {
            Challenge::new()
        };
        c.d(self.version)
            .d(self.twin_id)
            .s(&self.metadata)
            .s(&self.description)
            .d(self.expiration.0)
            .list(self.workloads.len());
        for wl in &self.workloads {
            wl.write_challenge(&mut c)?;
        }
        let req = &self.signature_requirement;
        c.list(req.requests.len());
        for r in &req.requests {
            c.d(r.twin_id).t(r.required).d(r.weight);
        }
        c.d(req.weight_required).s(&req.signature_style);
        Ok(c.into_bytes())
    }

    /// The deployment hash of the declared `hash_version`: what the user signs and the contract
    /// stores. MD5 (16 bytes) for 0/1, SHA-256 (32 bytes) for [`HASH_V2`].
    pub fn challenge_hash(&self) -> Result<Vec<u8>, ValidationError> {
        let c = self.challenge()?;
        Ok(if self.hash_version == HASH_V2 {
            Sha256::digest(c).to_vec()
        } else {
            Md5::digest(c).to_vec()
        })
    }

    /// The hash as lowercase hex (the contract's `deployment_hash`): 32 characters for MD5,
    /// 64 for v2, so a contract hash of one scheme never matches the other.
    pub fn challenge_hash_hex(&self) -> Result<String, ValidationError> {
        Ok(hex::encode(self.challenge_hash()?))
    }

    /// The bytes a signature covers: the raw digest, or `<Bytes>hex</Bytes>` for polka-wallet.
    pub fn signing_message(&self) -> Result<Vec<u8>, ValidationError> {
        let hash = self.challenge_hash()?;
        Ok(
            if self.signature_requirement.signature_style == SIGNATURE_STYLE_POLKA {
                format!("<Bytes>{}</Bytes>", hex::encode(hash)).into_bytes()
            } else {
                hash.to_vec()
            },
        )
    }

    /// Adds (or replaces) `twin`'s signature.
    pub fn sign(&mut self, twin: u32, key: &KeyPair) -> Result<(), ValidationError> {
        let signature = hex::encode(key.sign(&self.signing_message()?));
        let sigs = &mut self.signature_requirement.signatures;
        match sigs.iter_mut().find(|s| s.twin_id == twin) {
            // Upstream updates only the signature bytes of an existing entry.
            Some(existing) => {
                existing.signature = signature;
                existing.signature_type = key.key_type().as_str().to_string();
            }
            None => sigs.push(Signature {
                twin_id: twin,
                signature,
                signature_type: key.key_type().as_str().to_string(),
            }),
        }
        Ok(())
    }

    /// Verifies the signatures exactly as upstream does. `key_of(twin)` returns the twin's raw
    /// public key (the ledger account) or an error text.
    ///
    /// Upstream behaviour worth knowing: every listed twin must sign. A request that is not
    /// `required` and has no signature is still checked against an empty signature, which
    /// fails with `failed to verify signature`. The originator check runs after the loop.
    pub fn verify<F>(&self, key_of: F) -> Result<(), VerifyError>
    where
        F: Fn(u32) -> Result<Vec<u8>, String>,
    {
        let message = self.signing_message()?;
        let req = &self.signature_requirement;
        // Upstream counts a twin listed twice twice (one signature, double weight): refused.
        let mut seen = HashSet::new();
        for request in &req.requests {
            if !seen.insert(request.twin_id) {
                return Err(VerifyError(format!(
                    "twin '{}' is listed more than once in the signature requests",
                    request.twin_id
                )));
            }
        }
        let mut originator_found = false;
        let mut weight: u64 = 0;
        for request in &req.requests {
            let mut required = request.required;
            if request.twin_id == self.twin_id {
                originator_found = true;
                required = true;
            }
            let signature = req.signatures.iter().find(|s| s.twin_id == request.twin_id);
            if signature.is_none() && required {
                return Err(VerifyError(format!(
                    "missing required signature for twin '{}'",
                    request.twin_id
                )));
            }
            let pk = key_of(request.twin_id).map_err(|e| {
                VerifyError(format!(
                    "failed to get public key for twin '{}': {e}",
                    request.twin_id
                ))
            })?;
            let default = Signature::default();
            let signature = signature.unwrap_or(&default);
            let bytes = go_hex_decode(&signature.signature)
                .map_err(|e| VerifyError(format!("invalid signature: {e}")))?;
            // An absent optional signature is checked against empty bytes, as upstream does
            // (and fails with its text); present bytes of the wrong length are named.
            if !bytes.is_empty() && bytes.len() != SIGNATURE_LEN {
                return Err(VerifyError(format!(
                    "invalid signature: expected {SIGNATURE_LEN} bytes, got {}",
                    bytes.len()
                )));
            }
            if !verify_strict(&signature.signature_type, &pk, &message, &bytes) {
                return Err(VerifyError("failed to verify signature".into()));
            }
            // Upstream adds with wrap-around, so huge weights could sum to anything.
            weight = weight.checked_add(request.weight).ok_or_else(|| {
                VerifyError("signature weights overflow: their sum exceeds 2^64-1".into())
            })?;
        }
        if !originator_found {
            return Err(VerifyError(
                "originator twin id must be in the signature requests".into(),
            ));
        }
        if weight < req.weight_required {
            return Err(VerifyError(
                "required signature weight is not reached".into(),
            ));
        }
        Ok(())
    }

    /// Upstream `Deployment.Valid()`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut names = HashSet::new();
        for wl in &self.workloads {
            if wl.version > self.version {
                return Err(ValidationError::new(format!(
                    "workload '{}' version '{}' cannot be higher than deployment version '{}'",
                    wl.name, wl.version, self.version
                )));
            }
            is_valid_name(&wl.name)
                .map_err(|e| e.wrap(format!("name '{}' is invalid", wl.name)))?;
            if !names.insert(wl.name.as_str()) {
                return Err(ValidationError::new(format!(
                    "multiple workloads with the same name '{}'",
                    wl.name
                )));
            }
            wl.typed_data()?.validate(&self.workloads)?;
        }
        Ok(())
    }

    /// Total capacity of all workloads.
    pub fn capacity(&self) -> Result<Capacity, ValidationError> {
        let mut total = Capacity::default();
        for wl in &self.workloads {
            total += wl.capacity()?;
        }
        Ok(total)
    }

    /// The workload named `name`.
    pub fn get(&self, name: &str) -> Option<&Workload> {
        self.workloads.iter().find(|w| w.name == name)
    }

    /// The global id of one of this deployment's workloads.
    pub fn workload_id(&self, name: &str) -> String {
        crate::ids::workload_id(self.twin_id, self.contract_id, name)
    }

    /// Upstream `Upgrade`: checks `new` as the next version of `self` and lists the steps.
    /// Results of workloads that exist in both are carried over to `new`.
    pub fn upgrade(
        &self,
        new: &mut Deployment,
    ) -> Result<Vec<(String, UpgradeOp)>, ValidationError> {
        new.validate()
            .map_err(|e| e.wrap("new deployment is invalid"))?;
        if self.twin_id != new.twin_id || self.contract_id != new.contract_id {
            return Err(ValidationError::new("cannot change deployment or twin id"));
        }
        let expected = self.version.wrapping_add(1);
        if expected != new.version {
            return Err(ValidationError::new(format!(
                "expecting deployment version {expected}, got {}",
                new.version
            )));
        }
        let mut current: HashMap<&str, &Workload> = self
            .workloads
            .iter()
            .map(|w| (w.name.as_str(), w))
            .collect();
        let mut ops = Vec::new();
        for wl in &mut new.workloads {
            match current.remove(wl.name.as_str()) {
                None if wl.version == expected => ops.push((wl.name.clone(), UpgradeOp::Add)),
                None => {
                    return Err(ValidationError::new(format!(
                        "invalid version number for workload '{}' expected '{expected}'",
                        wl.name
                    )));
                }
                Some(older) => {
                    if older.workload_type != wl.workload_type {
                        return Err(ValidationError::new(format!(
                            "cannot change workload type '{}'",
                            wl.name
                        )));
                    }
                    wl.result = older.result.clone();
                    if wl.version == expected {
                        ops.push((wl.name.clone(), UpgradeOp::Update));
                    }
                }
            }
        }
        // Keep removals in the old deployment's order (upstream iterates a map: random).
        for old in &self.workloads {
            if current.contains_key(old.name.as_str()) {
                ops.push((old.name.clone(), UpgradeOp::Remove));
            }
        }
        Ok(ops)
    }
}

/// Both schemes sign with 64 bytes.
const SIGNATURE_LEN: usize = 64;

/// Upstream's sr25519 verifier copies the bytes into a 64-byte array (padding or truncating),
/// so a signature with junk appended verifies there; here every scheme needs exactly 64
/// signature bytes and a 32-byte key (docs/deployment.md, "Deliberate differences").
fn verify_strict(signature_type: &str, pk: &[u8], message: &[u8], sig: &[u8]) -> bool {
    sig.len() == SIGNATURE_LEN
        && crate::crypto::verify(KeyType::from_wire(signature_type), pk, message, sig)
}

#[cfg(test)]
mod hash_v2_tests {
    use super::*;

    fn with(metadata: &str, description: &str, version: u32) -> Deployment {
        Deployment {
            twin_id: 1,
            metadata: metadata.into(),
            description: description.into(),
            hash_version: version,
            ..Deployment::default()
        }
    }

    #[test]
    fn field_boundaries_are_part_of_the_v2_hash() {
        // "1"+"23" and "12"+"3": one MD5 challenge, two v2 hashes.
        let (a, b) = (with("1", "23", 0), with("12", "3", 0));
        assert_eq!(a.challenge().unwrap(), b.challenge().unwrap());
        assert_eq!(a.challenge_hash().unwrap(), b.challenge_hash().unwrap());
        assert_eq!(a.challenge_hash().unwrap().len(), 16);
        let (a2, b2) = (with("1", "23", HASH_V2), with("12", "3", HASH_V2));
        assert_ne!(a2.challenge_hash().unwrap(), b2.challenge_hash().unwrap());
        assert_eq!(a2.challenge_hash().unwrap().len(), 32);
        // 1 is MD5 like 0; the schemes never give the same hex; unknown versions are refused.
        assert_eq!(
            with("1", "23", 1).challenge_hash_hex().unwrap(),
            a.challenge_hash_hex().unwrap()
        );
        assert_ne!(
            a.challenge_hash_hex().unwrap(),
            a2.challenge_hash_hex().unwrap()
        );
        assert!(
            with("1", "23", 3)
                .challenge_hash()
                .unwrap_err()
                .to_string()
                .contains("unsupported hash_version 3")
        );
        // The field stays out of upstream JSON, and a v2 signature does not verify as MD5.
        let json = serde_json::to_value(&a).unwrap();
        assert!(json.get("hash_version").is_none());
        assert_eq!(serde_json::to_value(&a2).unwrap()["hash_version"], 2);
        let key = KeyPair::from_seed(KeyType::Ed25519, [3; 32]);
        let mut signed = a2.clone();
        signed.signature_requirement.requests = vec![SignatureRequest {
            twin_id: 1,
            required: true,
            weight: 1,
        }];
        signed.signature_requirement.weight_required = 1;
        signed.sign(1, &key).unwrap();
        let pk = key.public().bytes.to_vec();
        assert!(signed.verify(|_| Ok(pk.clone())).is_ok());
        let mut downgraded = signed.clone();
        downgraded.hash_version = 0;
        assert!(downgraded.verify(|_| Ok(pk.clone())).is_err());
    }
}
