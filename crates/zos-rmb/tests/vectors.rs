//! Golden vectors: the wire format and key derivation are pinned, so a change is a visible,
//! deliberate break. `tests/vectors/ok/*.hex` must decode, verify and open; `err/*.hex` must be
//! refused with the named error. The ok vector was made once with `Envelope::seal(header(),
//! body, ed25519 key of seed [1; 32], e2e_public_key(&[2; 32]))`; the err vectors are edits of it.
#![allow(clippy::unwrap_used, missing_docs)]

use bytes::Bytes;
use zos_rmb::codec::CodecError;
use zos_rmb::e2e::{e2e_public_key, e2e_secret};
use zos_rmb::envelope::{Address, Body, Envelope, ErrorBody, Header};
use zos_rmb::frame::{Frame, Role, auth_message};
use zos_types::crypto::{KeyPair, KeyType};

fn vector(path: &str) -> Bytes {
    let p = format!("{}/tests/vectors/{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&p).unwrap();
    Bytes::from(hex::decode(text.trim()).unwrap())
}

fn header() -> Header {
    Header {
        id: [0x11; 16],
        source: Address {
            twin: 1,
            session: Some("cli".into()),
        },
        destination: Address::twin(2),
        timestamp: 1_700_000_000,
        ttl: 60,
    }
}

#[test]
fn ok_request_decodes_verifies_and_opens() {
    let bytes = vector("ok/01_request_ed25519.hex");
    let env = Envelope::decode(&bytes).unwrap();
    assert_eq!(env.header, header());
    let key = KeyPair::from_seed(KeyType::Ed25519, [1; 32]);
    assert!(env.verify(&key.public()));
    let body = env.open(&e2e_secret(&[2; 32])).unwrap();
    assert_eq!(
        body,
        Body {
            command: "zos.ping".into(),
            reference: None,
            error: None,
            payload: b"{\"x\":1}".to_vec(),
        }
    );
    // Canonical: re-encoding gives the same bytes.
    assert_eq!(env.encode().unwrap(), bytes.to_vec());
}

#[test]
fn err_vectors_are_refused_with_the_right_error() {
    type Check = fn(&CodecError) -> bool;
    let cases: [(&str, Check); 5] = [
        ("err/01_truncated_signature.hex", |e| {
            matches!(e, CodecError::Truncated { field: "signature" })
        }),
        ("err/02_unknown_version.hex", |e| {
            matches!(
                e,
                CodecError::Invalid {
                    field: "version",
                    value: 2
                }
            )
        }),
        ("err/03_trailing_byte.hex", |e| {
            matches!(e, CodecError::Trailing(1))
        }),
        ("err/04_session_too_long.hex", |e| {
            matches!(
                e,
                CodecError::TooLong {
                    len: 65,
                    max: 64,
                    ..
                }
            )
        }),
        ("err/05_body_length_over_limit.hex", |e| {
            matches!(
                e,
                CodecError::TooLong {
                    len: 16_777_217,
                    ..
                }
            )
        }),
    ];
    for (path, expected) in cases {
        let err = Envelope::decode(&vector(path)).unwrap_err();
        assert!(expected(&err), "{path}: {err:?}");
    }
}

#[test]
fn pinned_encodings() {
    assert_eq!(
        hex::encode(e2e_public_key(&[0; 32])),
        "4e23d9e2be7ec01143010215c34b08131485bf8f8aff1b2b666bef6870570944"
    );
    assert_eq!(
        hex::encode(header().encode().unwrap()),
        "01111111111111111111111111111111110000000103636c690000000200000000006553f1000000003c"
    );
    let reply = Body {
        command: "c".into(),
        reference: Some([0xaa; 16]),
        error: Some(ErrorBody {
            code: 404,
            message: "no".into(),
        }),
        payload: vec![],
    };
    assert_eq!(
        hex::encode(reply.encode().unwrap()),
        "030163aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa000001940002 6e6f00000000".replace(' ', "")
    );
    assert_eq!(
        hex::encode(auth_message(
            &[7; 32],
            "r1",
            "h",
            None,
            Role::Peer,
            5,
            Some("s")
        )),
        format!(
            "{}{}027231 0168 00 010000000501 73",
            hex::encode(b"zos-rmb-auth-v3"),
            "07".repeat(32)
        )
        .replace(' ', "")
    );
    assert_eq!(
        hex::encode(auth_message(
            &[7; 32],
            "r1",
            "h",
            Some(&[9; 32]),
            Role::Peer,
            5,
            None
        )),
        format!(
            "{}{}027231 0168 01{} 010000000500",
            hex::encode(b"zos-rmb-auth-v3"),
            "07".repeat(32),
            "09".repeat(32)
        )
        .replace(' ', "")
    );
    let challenge = Frame::Challenge {
        nonce: [0; 32],
        domain: "d".into(),
    };
    assert_eq!(
        hex::encode(challenge.encode().unwrap()),
        format!("01{}0164", "00".repeat(32))
    );
}
