//! Signature checks where zos is stricter than upstream: a twin listed twice, weights that
//! overflow, signatures of the wrong length (issue 13).
#![allow(clippy::unwrap_used, missing_docs)]

use proptest::prelude::*;
use zos_types::{Deployment, KeyPair, KeyType, SignatureRequest};

fn key(kt: KeyType, n: u8) -> KeyPair {
    KeyPair::from_seed(kt, [n; 32])
}

/// A deployment of twin 1 signed by twin 1 with `kt`, weight 1 of 1.
fn signed(kt: KeyType) -> Deployment {
    let mut d = Deployment {
        twin_id: 1,
        ..Deployment::default()
    };
    d.signature_requirement.requests.push(SignatureRequest {
        twin_id: 1,
        required: true,
        weight: 1,
    });
    d.signature_requirement.weight_required = 1;
    d.sign(1, &key(kt, 1)).unwrap();
    d
}

fn keys(twin: u32) -> Result<Vec<u8>, String> {
    // Twin n's key is the ed25519 or sr25519 key of seed [n; 32]: the caller picks the scheme
    // through the signature type, so both are answered from one table.
    Ok(key(KeyType::Ed25519, twin as u8).public().bytes.to_vec())
}

fn sr_keys(twin: u32) -> Result<Vec<u8>, String> {
    Ok(key(KeyType::Sr25519, twin as u8).public().bytes.to_vec())
}

#[test]
fn a_twin_listed_twice_is_refused() {
    let mut d = signed(KeyType::Ed25519);
    d.verify(keys).unwrap();
    // Upstream would count the one signature twice: weight 2 of 2.
    d.signature_requirement.requests.push(SignatureRequest {
        twin_id: 1,
        required: false,
        weight: 1,
    });
    d.signature_requirement.weight_required = 2;
    d.sign(1, &key(KeyType::Ed25519, 1)).unwrap();
    let err = d.verify(keys).unwrap_err().to_string();
    assert_eq!(
        err,
        "twin '1' is listed more than once in the signature requests"
    );
}

#[test]
fn weights_that_overflow_are_an_error_not_a_wrap() {
    let mut d = signed(KeyType::Ed25519);
    d.signature_requirement.requests[0].weight = u64::MAX;
    d.signature_requirement.requests.push(SignatureRequest {
        twin_id: 2,
        required: true,
        weight: 2,
    });
    // Wrapped, the sum would be 1: enough for weight_required 1.
    d.signature_requirement.weight_required = 1;
    d.sign(1, &key(KeyType::Ed25519, 1)).unwrap();
    d.sign(2, &key(KeyType::Ed25519, 2)).unwrap();
    let err = d.verify(keys).unwrap_err().to_string();
    assert!(err.contains("signature weights overflow"), "{err}");
    // The same deployment with weights that fit verifies.
    d.signature_requirement.requests[0].weight = 1;
    d.sign(1, &key(KeyType::Ed25519, 1)).unwrap();
    d.sign(2, &key(KeyType::Ed25519, 2)).unwrap();
    d.verify(keys).unwrap();
}

#[test]
fn sr25519_with_junk_appended_does_not_verify() {
    let mut d = signed(KeyType::Sr25519);
    d.verify(sr_keys).unwrap();
    let good = d.signature_requirement.signatures[0].signature.clone();
    // Upstream truncates to 64 bytes, so this verifies there.
    d.signature_requirement.signatures[0].signature = format!("{good}00ff");
    assert_eq!(
        d.verify(sr_keys).unwrap_err().to_string(),
        "invalid signature: expected 64 bytes, got 66"
    );
    // Upstream pads short ones with zeros: refused here by length, too.
    d.signature_requirement.signatures[0].signature = good[..126].to_string();
    assert_eq!(
        d.verify(sr_keys).unwrap_err().to_string(),
        "invalid signature: expected 64 bytes, got 63"
    );
}

#[test]
fn ed25519_of_the_wrong_length_is_refused() {
    let mut d = signed(KeyType::Ed25519);
    let good = d.signature_requirement.signatures[0].signature.clone();
    d.signature_requirement.signatures[0].signature = format!("{good}ab");
    assert_eq!(
        d.verify(keys).unwrap_err().to_string(),
        "invalid signature: expected 64 bytes, got 65"
    );
    d.signature_requirement.signatures[0].signature = good[..2].to_string();
    assert_eq!(
        d.verify(keys).unwrap_err().to_string(),
        "invalid signature: expected 64 bytes, got 1"
    );
}

#[test]
fn raw_verify_needs_exact_lengths() {
    for kt in [KeyType::Ed25519, KeyType::Sr25519] {
        let k = key(kt, 7);
        let sig = k.sign(b"m");
        let pk = k.public().bytes;
        assert!(zos_types::crypto::verify(kt, &pk, b"m", &sig), "{kt}");
        let mut long = sig.to_vec();
        long.push(0);
        assert!(!zos_types::crypto::verify(kt, &pk, b"m", &long), "{kt}");
        assert!(
            !zos_types::crypto::verify(kt, &pk[..31], b"m", &sig),
            "{kt}"
        );
        let mut long_pk = pk.to_vec();
        long_pk.push(0);
        assert!(!zos_types::crypto::verify(kt, &long_pk, b"m", &sig), "{kt}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any junk appended to (or bytes cut from) a valid signature is refused, for both schemes.
    #[test]
    fn any_other_length_is_refused(sr in any::<bool>(), extra in proptest::collection::vec(any::<u8>(), 0..8), cut in 0usize..64) {
        let kt = if sr { KeyType::Sr25519 } else { KeyType::Ed25519 };
        let lookup = if sr { sr_keys } else { keys };
        let mut d = signed(kt);
        let good = d.signature_requirement.signatures[0].signature.clone();
        prop_assert!(d.verify(lookup).is_ok());
        let mut bytes = hex::decode(&good).unwrap();
        if extra.is_empty() {
            bytes.truncate(cut);
        } else {
            bytes.extend_from_slice(&extra);
        }
        d.signature_requirement.signatures[0].signature = hex::encode(&bytes);
        prop_assert!(d.verify(lookup).is_err());
    }

    /// Weights never wrap: verification succeeds exactly when the true sum reaches the need.
    #[test]
    fn weight_sum_is_exact(w1 in any::<u64>(), w2 in any::<u64>(), need in any::<u64>()) {
        let mut d = signed(KeyType::Ed25519);
        d.signature_requirement.requests[0].weight = w1;
        d.signature_requirement.requests.push(SignatureRequest { twin_id: 2, required: true, weight: w2 });
        d.signature_requirement.weight_required = need;
        d.sign(1, &key(KeyType::Ed25519, 1)).unwrap();
        d.sign(2, &key(KeyType::Ed25519, 2)).unwrap();
        let sum = u128::from(w1) + u128::from(w2);
        let r = d.verify(keys);
        if sum > u128::from(u64::MAX) {
            prop_assert!(r.unwrap_err().to_string().contains("overflow"));
        } else {
            prop_assert_eq!(r.is_ok(), sum >= u128::from(need));
        }
    }
}
