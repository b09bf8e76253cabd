//! Dev mode: well-known keys and a genesis with a funded faucet, for tests and `zos up`.
//! Never use these keys on a real grid: their seeds are public.

use sha2::{Digest as _, Sha256};
use zos_types::crypto::{KeyPair, KeyType};

use crate::types::{Genesis, GenesisAccount, PricingPolicy};

/// Balance of the dev faucet at genesis (10^10 TFT in units of 1e-7).
pub const FAUCET_BALANCE: u64 = 100_000_000_000_000_000;

fn key(label: &str) -> KeyPair {
    KeyPair::from_seed(KeyType::Ed25519, Sha256::digest(label.as_bytes()).into())
}

/// The dev faucet (seed = sha256("zos-ledger dev faucet")); `dev_fund` transfers from it.
pub fn faucet_key() -> KeyPair {
    key("zos-ledger dev faucet")
}

/// The dev council (seed = sha256("zos-ledger dev council")).
pub fn council_key() -> KeyPair {
    key("zos-ledger dev council")
}

/// A dev genesis at ledger time `timestamp`: faucet and council funded, default prices,
/// hourly billing, 14-day grace period, a random chain nonce, no producer key (the server
/// fills in its own).
pub fn genesis(timestamp: u64) -> Genesis {
    Genesis {
        chain_name: "zos-dev".into(),
        timestamp,
        accounts: vec![
            GenesisAccount {
                account: faucet_key().public(),
                balance: FAUCET_BALANCE,
            },
            GenesisAccount {
                account: council_key().public(),
                balance: 1_000_000_000,
            },
        ],
        council: council_key().public(),
        pricing: PricingPolicy::default(),
        billing_interval_secs: 3600,
        grace_period_secs: 14 * 24 * 3600,
        nonce: Some(Genesis::random_nonce()),
        producer: None,
        offline_cutoff_secs: None,
    }
}
