//! `zos image keygen|sign|verify`: a bundle signed by a pinned key verifies; an unpinned key, a
//! changed byte or another network is refused with exit 1 (no root, no network).
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Command;

fn zos(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn signed_bundles_verify_and_bad_ones_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n).to_str().unwrap().to_string();
    let k1 = zos(&["image", "keygen", &p("k1")]);
    assert!(k1.status.success());
    let pin1 = String::from_utf8_lossy(&k1.stdout).trim().to_string();
    let k2 = zos(&["image", "keygen", &p("k2")]);
    let pin2 = String::from_utf8_lossy(&k2.stdout).trim().to_string();
    assert_eq!(pin1.len(), 64);
    // keygen never overwrites a key
    assert!(!zos(&["image", "keygen", &p("k1")]).status.success());
    std::fs::create_dir(d.path().join("v2")).unwrap();
    std::fs::write(d.path().join("v2/zos"), b"release two").unwrap();
    let s = zos(&[
        "image",
        "sign",
        &p("v2"),
        "--release",
        "v2",
        "--network",
        "dev",
        "--key",
        &p("k1"),
    ]);
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    let ok = zos(&[
        "image",
        "verify",
        &p("v2"),
        "--network",
        "dev",
        "--pin",
        &pin1,
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let other = zos(&[
        "image",
        "verify",
        &p("v2"),
        "--network",
        "dev",
        "--pin",
        &pin2,
    ]);
    assert_eq!(other.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&other.stderr).contains("no valid signature"));
    let net = zos(&[
        "image",
        "verify",
        &p("v2"),
        "--network",
        "main",
        "--pin",
        &pin1,
    ]);
    assert_eq!(net.status.code(), Some(1));
    std::fs::write(d.path().join("v2/zos"), b"release tw0").unwrap();
    let tampered = zos(&[
        "image",
        "verify",
        &p("v2"),
        "--network",
        "dev",
        "--pin",
        &pin1,
    ]);
    assert_eq!(tampered.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&tampered.stderr).contains("does not match its hash"));
}
