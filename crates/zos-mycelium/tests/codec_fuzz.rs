//! Property tests: the stream decoder never panics on arbitrary bytes, always makes progress
//! or waits, and every TLV we encode decodes to itself.

use bytes::BytesMut;
use proptest::prelude::*;
use zos_mycelium::Subnet;
use zos_mycelium::packet::{
    Metric, Packet, RouterId, SeqNo, Tlv, decode, decode_tlv, encode_control,
};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut buf = BytesMut::from(&data[..]);
        // Bounded: every Ok(Some) consumes at least the 4-byte header.
        for _ in 0..200 {
            let before = buf.len();
            match decode(&mut buf) {
                Ok(Some(_)) => prop_assert!(buf.len() < before),
                Ok(None) | Err(_) => break,
            }
        }
    }

    #[test]
    fn control_frames_with_valid_header_never_panic(
        ty in 0u8..16, body in proptest::collection::vec(any::<u8>(), 0..120)
    ) {
        let mut frame = vec![1u8, 1, 0, 0, 42, 3];
        frame.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
        frame.push(ty);
        frame.push(body.len() as u8);
        frame.extend_from_slice(&body);
        let mut buf = BytesMut::from(&frame[..]);
        let r = decode(&mut buf);
        prop_assert!(matches!(r, Ok(Some(_))));
        prop_assert!(buf.is_empty());
        let _ = decode_tlv(&frame[8..]);
    }

    #[test]
    fn update_round_trip(
        addr in any::<u128>(), plen in 0u8..=128, seqno in any::<u16>(), metric in any::<u16>(),
        interval in any::<u16>(), rid in proptest::array::uniform32(any::<u8>()),
    ) {
        let subnet = Subnet::new(addr.into(), plen).expect("plen ≤ 128");
        let mut r = [0u8; 40];
        r[..32].copy_from_slice(&rid);
        let tlvs = [
            Tlv::Update { flags: 0, interval, seqno: SeqNo(seqno), metric: Metric(metric), subnet, router_id: RouterId(r) },
            Tlv::RouteRequest { generation: (seqno & 0xff) as u8, subnet: Some(subnet) },
            Tlv::SeqnoRequest { seqno: SeqNo(seqno), hop_count: 1 + (metric % 64) as u8, router_id: RouterId(r), subnet },
            Tlv::Hello { flags: 0x8000, seqno: SeqNo(seqno), interval },
        ];
        for tlv in tlvs {
            let mut out = BytesMut::new();
            encode_control(&tlv, &mut out);
            prop_assert_eq!(decode(&mut out), Ok(Some(Packet::Control(tlv))));
        }
    }
}
