//! Property tests: the envelope, body and frame decoders never panic on arbitrary bytes, never
//! allocate from a claimed length (a huge length prefix on a short input is refused before
//! any allocation), and round-trip every valid value.
#![allow(clippy::unwrap_used, missing_docs)]

use bytes::Bytes;
use proptest::prelude::*;
use zos_rmb::codec::CodecError;
use zos_rmb::envelope::{Address, Body, Envelope, ErrorBody, Header, MAX_SEALED};
use zos_rmb::frame::Frame;

fn address() -> impl Strategy<Value = Address> {
    (any::<u32>(), proptest::option::of("[a-z0-9-]{1,64}"))
        .prop_map(|(twin, session)| Address { twin, session })
}

fn header() -> impl Strategy<Value = Header> {
    (
        any::<[u8; 16]>(),
        address(),
        address(),
        any::<u64>(),
        any::<u32>(),
    )
        .prop_map(|(id, source, destination, timestamp, ttl)| Header {
            id,
            source,
            destination,
            timestamp,
            ttl,
        })
}

fn body() -> impl Strategy<Value = Body> {
    (
        "[a-z.]{0,40}",
        proptest::option::of(any::<[u8; 16]>()),
        proptest::option::of((any::<u32>(), ".{0,50}")),
        proptest::collection::vec(any::<u8>(), 0..512),
    )
        .prop_map(|(command, reference, error, payload)| Body {
            command,
            error: reference
                .and(error)
                .map(|(code, message)| ErrorBody { code, message }),
            reference,
            payload,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let b = Bytes::from(data.clone());
        let _ = Envelope::decode(&b);
        let _ = Envelope::decode_header(&data);
        let _ = Body::decode(&data);
        let _ = Frame::decode(&b);
    }

    #[test]
    fn decoded_sizes_are_bounded_by_the_input(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let b = Bytes::from(data.clone());
        if let Ok(e) = Envelope::decode(&b) {
            prop_assert!(e.sealed.len() <= data.len());
        }
        if let Ok(body) = Body::decode(&data) {
            prop_assert!(body.payload.len() + body.command.len() <= data.len());
        }
    }

    #[test]
    fn envelope_round_trip(h in header(), sealed in proptest::collection::vec(any::<u8>(), 0..1024), sig in proptest::collection::vec(any::<u8>(), 64)) {
        let env = Envelope {
            header: h,
            sealed: Bytes::from(sealed),
            signature: sig.try_into().unwrap(),
        };
        let bytes = Bytes::from(env.encode().unwrap());
        prop_assert_eq!(Envelope::decode(&bytes).unwrap(), env.clone());
        // Every strict prefix is refused (no partial parse is ever accepted).
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            prop_assert!(Envelope::decode(&bytes.slice(..cut)).is_err());
        }
    }

    #[test]
    fn body_round_trip(b in body()) {
        prop_assert_eq!(Body::decode(&b.encode().unwrap()).unwrap(), b);
    }

    #[test]
    fn mutated_envelopes_never_panic(h in header(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let env = Envelope { header: h, sealed: Bytes::from_static(&[7; 80]), signature: [1; 64] };
        let mut bytes = env.encode().unwrap();
        for (pos, val) in flips {
            let n = bytes.len();
            bytes[pos % n] = val;
        }
        let _ = Envelope::decode(&Bytes::from(bytes));
    }
}

#[test]
fn huge_claimed_lengths_are_refused_without_allocating() {
    // A minimal header followed by a body length of 4 GiB - 1 and nothing else.
    let env = Envelope {
        header: Header {
            id: [0; 16],
            source: Address::twin(1),
            destination: Address::twin(2),
            timestamp: 0,
            ttl: 0,
        },
        sealed: Bytes::new(),
        signature: [0; 64],
    };
    let mut bytes = env.encode().unwrap();
    let len_at = bytes.len() - 64 - 4;
    bytes[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    match Envelope::decode(&Bytes::from(bytes.clone())) {
        Err(CodecError::TooLong { len, max, .. }) => {
            assert_eq!((len, max), (u32::MAX as usize, MAX_SEALED))
        }
        other => panic!("{other:?}"),
    }
    // Within the limit but beyond the input: truncated, still no allocation.
    bytes[len_at..len_at + 4].copy_from_slice(&(MAX_SEALED as u32).to_be_bytes());
    assert!(matches!(
        Envelope::decode(&Bytes::from(bytes)),
        Err(CodecError::Truncated { .. })
    ));
}
