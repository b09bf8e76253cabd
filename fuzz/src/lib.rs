//! The bodies of the fuzz targets, one function per untrusted parser. Each must return without
//! panicking whatever the bytes; where a parser accepts its input, the result is checked
//! against the encoder (round trip) so that "parses" also means "parses right".

use bytes::{Bytes, BytesMut};

/// RESP requests as a ZeroDB connection reads them: frames parsed off the front of a buffer,
/// each turned into a command.
pub fn resp(data: &[u8]) {
    let mut buf = data;
    for _ in 0..64 {
        let skip = zos_zdb::resp::blank_prefix(buf);
        buf = &buf[skip..];
        // The size hint the server reads ahead with must never be absurd for what it saw.
        let _ = zos_zdb::resp::needed_len(buf);
        match zos_zdb::resp::parse_request(buf) {
            Ok(Some(frame)) => {
                let used = frame.len;
                assert!(
                    used > 0 && used <= buf.len(),
                    "frame length {used} of {}",
                    buf.len()
                );
                let args: Vec<Bytes> = frame
                    .args
                    .iter()
                    .map(|r| Bytes::copy_from_slice(&buf[r.clone()]))
                    .collect();
                let _ = zos_zdb::command::parse(&args);
                buf = &buf[used..];
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// ZeroDB's on-disk records (data and index files a restarted server reads back).
pub fn zdb_records(data: &[u8]) {
    use zos_zdb::format;
    let _ = format::FileHeader::decode(data, *b"DAT0");
    let _ = format::FileHeader::decode(data, *b"IDX0");
    let _ = format::decode_data_header(data);
    let _ = format::IndexEntry::decode(data);
}

/// A deployment as the node receives it: JSON, then its hash, signature check and every
/// workload's typed data.
pub fn deployment(data: &[u8]) {
    let Ok(d) = serde_json::from_slice::<zos_types::Deployment>(data) else {
        return;
    };
    let _ = d.challenge_hash();
    let _ = d.validate();
    for w in &d.workloads {
        let _ = zos_types::data::WorkloadData::decode(&w.workload_type, &w.data);
    }
    // What we accept we can write back and read again to the same hash.
    let again = serde_json::to_vec(&d).expect("a parsed deployment serialises");
    let d2: zos_types::Deployment = serde_json::from_slice(&again).expect("our own output parses");
    assert_eq!(d.challenge_hash().ok(), d2.challenge_hash().ok());
}

/// RMB: relay frames, envelopes and (decrypted) bodies.
pub fn rmb_frame(data: &[u8]) {
    let b = Bytes::copy_from_slice(data);
    let _ = zos_rmb::frame::Frame::decode(&b);
    let _ = zos_rmb::envelope::Envelope::decode(&b);
    let _ = zos_rmb::envelope::Envelope::decode_header(data);
    let _ = zos_rmb::envelope::Body::decode(data);
}

/// A ledger transaction as the server receives it (JSON), verified and hashed.
pub fn ledger_tx(data: &[u8]) {
    let Ok(tx) = serde_json::from_slice::<zos_ledger::tx::SignedTransaction>(data) else {
        return;
    };
    let genesis = [7u8; 32];
    let _ = tx.verify(&genesis);
    let _ = tx.hash(&genesis);
}

/// Mycelium peer-link frames off a byte stream, control TLVs and discovery beacons.
pub fn mycelium_packet(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    for _ in 0..64 {
        match zos_mycelium::packet::decode(&mut buf) {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let _ = zos_mycelium::packet::decode_tlv(data);
    let _ = zos_mycelium::packet::decode_beacon(data);
}

/// A legacy flist data block (XXTEA + snappy) under a key from the input.
pub fn flist_block(data: &[u8]) {
    if data.len() < 16 {
        return;
    }
    let (key, blob) = data.split_at(16);
    let _ = zos_flist::legacy::decode_block(blob, key);
    let _ = zos_flist::legacy::xxtea_decrypt(blob, key);
}
