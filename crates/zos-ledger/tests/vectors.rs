//! Golden vectors pin the signed bytes, transaction hash and block hash: changing any of them
//! breaks every existing ledger and signature, so it must be a deliberate, versioned change.
//! Plus: decoding untrusted transaction/block JSON never panics.
#![allow(clippy::unwrap_used, missing_docs)]

use proptest::prelude::*;
use zos_ledger::tx::signing_bytes;
use zos_ledger::{BlockHeader, Call, SignedTransaction};
use zos_types::crypto::{KeyPair, KeyType};

fn vector_tx() -> SignedTransaction {
    let key = KeyPair::from_seed(KeyType::Ed25519, std::array::from_fn(|i| i as u8));
    SignedTransaction::sign(
        &key,
        &[0xab; 32],
        7,
        Call::CreateFarm {
            name: "farm".into(),
        },
    )
}

#[test]
fn signed_bytes_layout() {
    let tx = vector_tx();
    let bytes = signing_bytes(&[0xab; 32], &tx.account, 7, &tx.call);
    let mut expected = b"zos-ledger/tx/v1".to_vec();
    expected.extend([0xab; 32]);
    expected.push(0);
    expected.extend(
        hex::decode("03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8").unwrap(),
    );
    expected.extend(7u64.to_be_bytes());
    expected.extend(br#"{"create_farm":{"name":"farm"}}"#);
    assert_eq!(bytes, expected);
}

#[test]
fn transaction_json_and_hash_are_stable() {
    let tx = vector_tx();
    let json = serde_json::to_string(&tx).unwrap();
    assert_eq!(
        json,
        format!(
            r#"{{"account":{{"key_type":"ed25519","bytes":"03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"}},"nonce":7,"call":{{"create_farm":{{"name":"farm"}}}},"signature":"{}"}}"#,
            tx.signature
        )
    );
    assert_eq!(hex::encode(tx.hash(&[0xab; 32])), GOLDEN_TX_HASH);
    assert_eq!(tx.signature, GOLDEN_SIGNATURE);
}

#[test]
fn block_hash_is_stable() {
    let h = BlockHeader {
        height: 1,
        parent_hash: "11".repeat(32),
        timestamp: 1_700_000_000,
        tx_hashes: vec!["22".repeat(32)],
        events_hash: "33".repeat(32),
        state_root: "44".repeat(32),
    };
    assert_eq!(hex::encode(h.hash().unwrap()), GOLDEN_BLOCK_HASH);
}

// Cross-checked with an independent implementation (Python `cryptography` Ed25519 + hashlib).
const GOLDEN_TX_HASH: &str = "fa916072ec46618898d19627d2dfa0e4b81f9a8bed5defdc546c445419fc6353";
const GOLDEN_SIGNATURE: &str = "b3428e6591659ccd02598aab9e3ad8bf3555d4d290338a6f541f9190c80b34ac062a5b36bd73086771831bcb7240ed130bd1edd877ddbd63282f89f1af999f0d";
// Block hash v2 (with the state root), cross-checked with Python hashlib.
const GOLDEN_BLOCK_HASH: &str = "7ddcd6be5cfbf13ce3d61408944487d2e08fd91f4fd762ad3fd875d2ef0df9a8";

proptest! {
    #[test]
    fn untrusted_json_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(tx) = serde_json::from_slice::<SignedTransaction>(&bytes) {
            let _ = tx.verify(&[0; 32]);
            let _ = tx.hash(&[0; 32]);
        }
        if let Ok(h) = serde_json::from_slice::<BlockHeader>(&bytes) {
            let _ = h.hash();
        }
    }

    #[test]
    fn headers_with_arbitrary_text_fields_do_not_panic(p in ".{0,70}", t in ".{0,70}", e in ".{0,70}", r in ".{0,70}") {
        let h = BlockHeader { height: 0, parent_hash: p, timestamp: 0, tx_hashes: vec![t], events_hash: e, state_root: r };
        let _ = h.hash();
    }

    #[test]
    fn transactions_round_trip_and_still_verify(nonce in any::<u64>(), name in "[a-z]{1,20}", seed in any::<[u8; 32]>()) {
        let key = KeyPair::from_seed(KeyType::Sr25519, seed);
        let tx = SignedTransaction::sign(&key, &[1; 32], nonce, Call::CreateNameContract { name });
        let back: SignedTransaction = serde_json::from_str(&serde_json::to_string(&tx).unwrap()).unwrap();
        prop_assert!(back.verify(&[1; 32]));
        prop_assert_eq!(back.hash(&[1; 32]), tx.hash(&[1; 32]));
    }
}
