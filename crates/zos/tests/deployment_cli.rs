//! `zos deployment challenge|hash|sign|check` through the real binary.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::Write;
use std::process::{Command, Stdio};

const SEED: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const PUB: &str = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8";
const V1: &str = r#"{"version":0,"twin_id":1,"contract_id":0,"metadata":"","description":"","expiration":0,"signature_requirement":{"requests":[{"twin_id":1,"required":false,"weight":1}],"weight_required":1,"signatures":null,"signature_style":""},"workloads":null}"#;

fn zos(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn challenge_and_hash_from_stdin() {
    assert_eq!(
        zos(&["deployment", "challenge", "-"], V1).1,
        "0101false11\n"
    );
    assert_eq!(
        zos(&["deployment", "hash", "-"], V1).1,
        "294895ef363fb7c894041c7054384d81\n"
    );
}

#[test]
fn sign_then_check() {
    let (code, signed, _) = zos(&["deployment", "sign", "-", "--seed", SEED], V1);
    assert_eq!(code, 0);
    assert!(signed.contains("998bc3013db3996207705a7a224f38d3d6d0512ecc3ac8b1b6b5ffb4fa36e173978aeb70431084f7a09ceb20c4b98597a9045c69551061d26246204bf6c79904"));
    let key = format!("1={PUB}");
    let (code, out, err) = zos(&["deployment", "check", "-", "--key", &key], &signed);
    assert_eq!((code, out.as_str(), err.as_str()), (0, "ok\n", ""));

    // Wrong key: upstream's text on stderr, exit 1.
    let wrong = format!("1={}", "11".repeat(32));
    let (code, out, err) = zos(&["deployment", "check", "-", "--key", &wrong], &signed);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (1, "", "failed to verify signature\n")
    );

    // Unsigned.
    let (code, _, err) = zos(&["deployment", "check", "-", "--key", &key], V1);
    assert_eq!(
        (code, err.as_str()),
        (1, "missing required signature for twin '1'\n")
    );
}

#[test]
fn sr25519_and_polka_wallet_round_trip() {
    let sr_pub = {
        let kp = zos_types::KeyPair::from_seed(
            zos_types::KeyType::Sr25519,
            std::array::from_fn(|i| i as u8),
        );
        kp.public().to_hex()
    };
    let (code, signed, err) = zos(
        &[
            "deployment",
            "sign",
            "-",
            "--seed",
            SEED,
            "--sr25519",
            "--style",
            "polka-wallet",
        ],
        V1,
    );
    assert_eq!(code, 0, "{err}");
    assert!(signed.contains("polka-wallet") && signed.contains("sr25519"));
    let key = format!("1={sr_pub}");
    assert_eq!(
        zos(&["deployment", "check", "-", "--key", &key], &signed).1,
        "ok\n"
    );
}

#[test]
fn malformed_input_is_a_clear_error() {
    let (code, _, err) = zos(&["deployment", "hash", "-"], "{not json");
    assert_eq!(code, 1);
    assert!(err.contains("invalid deployment json"), "{err}");
    let (code, _, err) = zos(
        &["deployment", "check", "-"],
        r#"{"twin_id":1,"workloads":[{"name":"a","type":"zmount","data":{"size":0}}],"signature_requirement":{"requests":[{"twin_id":1}]}}"#,
    );
    assert_eq!((code, err.as_str()), (1, "invalid size\n"));
}
