//! Every vector of the mycelium reference (§13): keys, addresses, shared secret, the encrypted
//! frame and the control frames.

use bytes::BytesMut;
use zos_mycelium::crypto::{gateway, vm_address};
use zos_mycelium::packet::{
    self, DataPacket, Metric, Packet, RouterId, SeqNo, Tlv, decode, decode_beacon, encode_beacon,
    encode_control, encode_data,
};
use zos_mycelium::{PublicKey, SecretKey, Subnet};

fn seq(start: u8) -> [u8; 32] {
    std::array::from_fn(|i| start + i as u8)
}

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).expect("test hex")
}

#[test]
fn key_a_public_address_subnet() {
    let a = SecretKey::from_bytes(seq(0));
    let pk = a.public_key();
    assert_eq!(
        pk.to_string(),
        "8f40c5adb68f25624ae5b214ea767a6ec94d829d3d7b5e1ad1ba6f3e2138285f"
    );
    assert_eq!(
        &blake3::hash(&pk.0).as_bytes()[..16],
        &h("c3309364d8d884a9dd60de78c767d361")[..]
    );
    assert_eq!(
        pk.address().to_string(),
        "430:9364:d8d8:84a9:dd60:de78:c767:d361"
    );
    assert_eq!(pk.subnet().to_string(), "430:9364:d8d8:84a9::/64");
}

#[test]
fn key_b_and_shared_secret() {
    let a = SecretKey::from_bytes(seq(0));
    let b = SecretKey::from_bytes(seq(0x20));
    assert_eq!(
        b.public_key().to_string(),
        "358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd166254"
    );
    assert_eq!(
        b.public_key().address().to_string(),
        "437:5106:5530:1589:7c53:fa73:c63e:1ddb"
    );
    let k = a.shared_secret(&b.public_key());
    assert_eq!(
        hex::encode(k.as_bytes()),
        "9663aa1da97e848a914a436d04163dfbb89178f107f1b5b77ed3854203382854"
    );
    // Symmetric.
    assert_eq!(b.shared_secret(&a.public_key()).as_bytes(), k.as_bytes());
}

#[test]
fn encrypted_body_and_full_frame() {
    let a = SecretKey::from_bytes(seq(0));
    let b = SecretKey::from_bytes(seq(0x20));
    let k = a.shared_secret(&b.public_key());
    let mut body = h("01000000");
    body.extend_from_slice(b"ping");
    k.encrypt_with_nonce(&mut body, [0; 12]);
    assert_eq!(
        hex::encode(&body),
        "9ce891d1e10722a69b9f2aa1dba99f8ed731c1d78f3b2f94000000000000000000000000"
    );
    let mut frame = BytesMut::new();
    encode_data(
        &DataPacket {
            hop_limit: 64,
            src: a.public_key().address(),
            dst: b.public_key().address(),
            body: BytesMut::from(&body[..]),
        },
        &mut frame,
    );
    let want = format!(
        "0100000000002440{}{}{}",
        "04309364d8d884a9dd60de78c767d361",
        "04375106553015897c53fa73c63e1ddb",
        hex::encode(&body)
    );
    assert_eq!(hex::encode(&frame), want);
    // Decoding the frame and decrypting with B's side gives the plaintext back.
    let Some(Packet::Data(mut p)) = decode(&mut frame).expect("decodes") else {
        panic!("not a data packet")
    };
    assert!(frame.is_empty());
    let kb = b.shared_secret(&a.public_key());
    let (n, nonce) = kb.decrypt_in_place(&mut p.body).expect("decrypts");
    assert_eq!(nonce, [0; 12]);
    assert_eq!(&p.body[..n], b"\x01\x00\x00\x00ping");
    // A flipped ciphertext bit fails.
    let mut bad = body.clone();
    bad[0] ^= 1;
    assert!(kb.decrypt(&mut bad).is_err());
    assert!(kb.decrypt(&mut vec![0; 27]).is_err());
}

#[test]
fn random_nonce_round_trip() {
    let a = SecretKey::generate();
    let b = SecretKey::generate();
    let k = a.shared_secret(&b.public_key());
    let mut m = b"hello overlay".to_vec();
    k.encrypt(&mut m);
    assert_eq!(m.len(), 13 + 28);
    b.shared_secret(&a.public_key())
        .decrypt(&mut m)
        .expect("decrypts");
    assert_eq!(m, b"hello overlay");
}

#[test]
fn zos_host_key_from_ed25519_seed() {
    let k = SecretKey::from_ed25519_seed(&[b'0'; 32]);
    assert_eq!(
        hex::encode(k.to_bytes()),
        "98b6d128682e280b74b324ca82a6bae6e8a3f7174e0605bfd52eb9948fad8944"
    );
    let pk = k.public_key();
    assert_eq!(
        pk.to_string(),
        "167315f5a03796214692d3a74b0a48d630f7fa5e5257730da0415dc7af7ab260"
    );
    assert_eq!(
        pk.address().to_string(),
        "4ab:a202:a8e9:5e01:4e3e:48c0:6fba:6527"
    );
    assert_eq!(gateway(&pk.subnet()).to_string(), "4ab:a202:a8e9:5e01::1");
}

#[test]
fn zos_network_resource_and_vm_address() {
    let k = SecretKey::from_bytes(seq(0xa0));
    let pk = k.public_key();
    assert_eq!(
        pk.to_string(),
        "605a725d2a4adfeeb1a29e17edd621c1b7593ee8cdbc44ac6c4ab6e2f805d23c"
    );
    assert_eq!(
        pk.address().to_string(),
        "593:f932:c049:6b1:5568:4cf4:6b8a:19ef"
    );
    assert_eq!(gateway(&pk.subnet()).to_string(), "593:f932:c049:6b1::1");
    assert_eq!(
        vm_address(&pk.subnet(), [1, 2, 3, 4, 5, 6])
            .expect("valid seed")
            .to_string(),
        "593:f932:c049:6b1:ff0f:102:304:506"
    );
    assert!(vm_address(&pk.subnet(), [0; 6]).is_none());
    assert!(vm_address(&pk.subnet(), [0xff; 6]).is_none());
}

#[test]
fn public_key_parse() {
    let pk: PublicKey = "8f40c5adb68f25624ae5b214ea767a6ec94d829d3d7b5e1ad1ba6f3e2138285f"
        .parse()
        .expect("valid");
    assert_eq!(pk, SecretKey::from_bytes(seq(0)).public_key());
    assert!("8f40".parse::<PublicKey>().is_err());
    assert!("zz".repeat(32).parse::<PublicKey>().is_err());
}

fn rid_1_40() -> RouterId {
    RouterId(std::array::from_fn(|i| i as u8 + 1))
}

fn subnet() -> Subnet {
    "400:1:2:3::/64".parse().expect("subnet")
}

fn check(tlv: Tlv, want: &str) {
    let mut out = BytesMut::new();
    encode_control(&tlv, &mut out);
    assert_eq!(hex::encode(&out), want, "encoding {tlv:?}");
    let mut buf = BytesMut::from(&h(want)[..]);
    assert_eq!(
        decode(&mut buf).expect("decodes"),
        Some(Packet::Control(tlv))
    );
    assert!(buf.is_empty());
}

#[test]
fn control_frames() {
    check(
        Tlv::Hello {
            flags: 0x8000,
            seqno: SeqNo(15),
            interval: 400,
        },
        "010100002a03000804068000000f0190",
    );
    check(
        Tlv::Ihu {
            rx_cost: 27,
            interval: 400,
            address: None,
        },
        "010100002a03000805060000001b0190",
    );
    let rid_hex = hex::encode(rid_1_40().0);
    check(
        Tlv::Update {
            flags: 0,
            interval: 40000,
            seqno: SeqNo(16),
            metric: Metric(25),
            subnet: subnet(),
            router_id: rid_1_40(),
        },
        &format!("010100002a03003c083a020040009c40001000190400000100020003{rid_hex}"),
    );
    check(
        Tlv::RouteRequest {
            generation: 13,
            subnet: Some(subnet()),
        },
        "010100002a03000d090b0d02400400000100020003",
    );
    check(
        Tlv::RouteRequest {
            generation: 0,
            subnet: None,
        },
        "010100002a0300050903000000",
    );
    check(
        Tlv::SeqnoRequest {
            seqno: SeqNo(16),
            hop_count: 64,
            router_id: rid_1_40(),
            subnet: subnet(),
        },
        &format!(
            "010100002a0300380a3602400010400001{}0400000100020003",
            &rid_hex[2..]
        ),
    );
}

#[test]
fn discovery_beacon() {
    let b = encode_beacon(9651, &rid_1_40());
    assert_eq!(
        hex::encode(b),
        format!("6d7963656c69756d25b3{}", hex::encode(rid_1_40().0))
    );
    assert_eq!(decode_beacon(&b), Some((9651, rid_1_40())));
    assert_eq!(decode_beacon(&b[..49]), None);
}

#[test]
fn router_id_display_and_key() {
    let pk = SecretKey::from_bytes(seq(0)).public_key();
    let rid = RouterId::new(pk, [1, 2, 3, 4, 5, 6]);
    assert_eq!(rid.public_key(), pk);
    assert_eq!(rid.to_string(), format!("{pk}-0000-010203040506"));
}

#[test]
fn seqno_and_metric_arithmetic() {
    assert!(SeqNo(1).lt(SeqNo(2)));
    assert!(SeqNo(65535).lt(SeqNo(0)));
    assert!(SeqNo(0).gt(SeqNo(65535)));
    assert!(!SeqNo(0).lt(SeqNo(32768)) && !SeqNo(32768).lt(SeqNo(0)));
    assert!(!SeqNo(5).lt(SeqNo(5)));
    assert_eq!(Metric(0xFFF0).plus(100), Metric(0xFFFE));
    assert!(Metric::INFINITE.plus(1).is_infinite());
    assert_eq!(Metric(10).plus(5), Metric(15));
}

#[test]
fn partial_frames_wait_and_bad_headers_fail() {
    let mut out = BytesMut::new();
    encode_control(
        &Tlv::Hello {
            flags: 0x8000,
            seqno: SeqNo(1),
            interval: 2000,
        },
        &mut out,
    );
    for cut in 0..out.len() {
        let mut b = BytesMut::from(&out[..cut]);
        assert_eq!(decode(&mut b), Ok(None), "prefix {cut}");
        assert_eq!(b.len(), cut, "nothing consumed");
    }
    let mut b = BytesMut::from(&[2u8, 1, 0, 0, 0][..]);
    assert_eq!(decode(&mut b), Err(packet::DecodeError::Version(2)));
    let mut b = BytesMut::from(&[1u8, 7, 0, 0, 0][..]);
    assert_eq!(decode(&mut b), Err(packet::DecodeError::Type(7)));
    // Wrong Babel magic: skipped, body consumed.
    let mut b = BytesMut::from(&h("010100002b030002ffff")[..]);
    assert_eq!(decode(&mut b), Ok(Some(Packet::Ignored)));
    assert!(b.is_empty());
}
