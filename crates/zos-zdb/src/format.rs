//! On-disk records: file headers, data entries and index entries (all little-endian).
//!
//! Every entry starts with a CRC32 over the rest of the entry (header fields, key and
//! payload), so a torn or corrupted entry is always detected. The exact layout is in
//! docs/zdb.md; decoding never trusts a length before checking it against the bytes at hand.

/// Magic of a data file.
pub const DATA_MAGIC: [u8; 4] = *b"ZDBd";
/// Magic of an index file.
pub const INDEX_MAGIC: [u8; 4] = *b"ZDBi";
/// Format version written in both headers.
pub const FORMAT_VERSION: u32 = 1;
/// Size of a file header: magic, version, fileid, mode, 3 reserved bytes, created.
pub const FILE_HEADER_LEN: usize = 24;
/// Size of a data entry header (before key and payload).
pub const DATA_HDR_LEN: usize = 20;
/// Size of an index entry header (before the key).
pub const INDEX_HDR_LEN: usize = 36;

/// Entry flag: this entry is a tombstone.
pub const FLAG_DELETED: u8 = 1;
/// Entry flag: the payload is `nonce || ciphertext || tag`.
pub const FLAG_ENCRYPTED: u8 = 2;

/// A position in the index files: file id and byte offset. Offset 0 (the header) means none.
/// Encoded as 8 bytes (fileid LE, offset LE), it is the binary cursor of SCAN/KEYCUR/HISTORY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Loc {
    /// Index (and data) file id.
    pub file: u32,
    /// Byte offset of the entry inside the file.
    pub off: u32,
}

impl Loc {
    /// The "no entry" position.
    pub const NONE: Loc = Loc { file: 0, off: 0 };

    /// Whether this points to an entry.
    pub fn is_some(self) -> bool {
        self.off != 0
    }

    /// 8-byte cursor encoding.
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&self.file.to_le_bytes());
        b[4..].copy_from_slice(&self.off.to_le_bytes());
        b
    }

    /// Decodes a cursor; `None` if it is not exactly 8 bytes.
    pub fn from_bytes(b: &[u8]) -> Option<Loc> {
        let b: &[u8; 8] = b.try_into().ok()?;
        Some(Loc {
            file: le32(&b[..4]),
            off: le32(&b[4..]),
        })
    }
}

/// Reads a little-endian u32 from a 4-byte slice.
pub fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// A file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    /// [`DATA_MAGIC`] or [`INDEX_MAGIC`].
    pub magic: [u8; 4],
    /// File id (the `N` of `dN` / `iN`).
    pub fileid: u32,
    /// Index mode of the namespace when the file was created (0 user, 1 seq).
    pub mode: u8,
    /// Creation time, seconds since the epoch.
    pub created: u64,
}

impl FileHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; FILE_HEADER_LEN] {
        let mut b = [0u8; FILE_HEADER_LEN];
        b[..4].copy_from_slice(&self.magic);
        b[4..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[8..12].copy_from_slice(&self.fileid.to_le_bytes());
        b[12] = self.mode;
        b[16..24].copy_from_slice(&self.created.to_le_bytes());
        b
    }

    /// Decodes and checks magic and version.
    pub fn decode(b: &[u8], magic: [u8; 4]) -> Option<FileHeader> {
        if b.len() < FILE_HEADER_LEN || b[..4] != magic || le32(&b[4..8]) != FORMAT_VERSION {
            return None;
        }
        let mut created = [0u8; 8];
        created.copy_from_slice(&b[16..24]);
        Some(FileHeader {
            magic,
            fileid: le32(&b[8..12]),
            mode: b[12],
            created: u64::from_le_bytes(created),
        })
    }
}

/// Header fields of a data entry (key and payload follow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    /// [`FLAG_DELETED`], [`FLAG_ENCRYPTED`].
    pub flags: u8,
    /// Key length (at most 255).
    pub key_len: u8,
    /// Stored payload bytes (ciphertext size when encrypted).
    pub stored_len: u32,
    /// Seconds since the epoch.
    pub timestamp: u32,
    /// CRC32 of the plaintext value.
    pub value_crc: u32,
}

impl DataHeader {
    /// Total entry size on disk.
    pub fn entry_len(&self) -> usize {
        DATA_HDR_LEN + self.key_len as usize + self.stored_len as usize
    }
}

/// Appends a data entry to `out`.
pub fn encode_data(out: &mut Vec<u8>, h: &DataHeader, key: &[u8], payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    out.push(h.flags);
    out.push(h.key_len);
    out.extend_from_slice(&[0u8; 2]);
    out.extend_from_slice(&h.stored_len.to_le_bytes());
    out.extend_from_slice(&h.timestamp.to_le_bytes());
    out.extend_from_slice(&h.value_crc.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes a data entry header from at least [`DATA_HDR_LEN`] bytes (CRC not yet checked).
pub fn decode_data_header(b: &[u8]) -> Option<DataHeader> {
    if b.len() < DATA_HDR_LEN {
        return None;
    }
    Some(DataHeader {
        flags: b[4],
        key_len: b[5],
        stored_len: le32(&b[8..12]),
        timestamp: le32(&b[12..16]),
        value_crc: le32(&b[16..20]),
    })
}

/// Checks a complete data entry's CRC. `entry` must be exactly one entry.
pub fn data_entry_valid(entry: &[u8]) -> bool {
    match decode_data_header(entry) {
        Some(h) if h.entry_len() == entry.len() => {
            crc32fast::hash(&entry[4..]) == le32(&entry[..4])
        }
        _ => false,
    }
}

/// An index entry (the key follows its header on disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// [`FLAG_DELETED`], [`FLAG_ENCRYPTED`].
    pub flags: u8,
    /// The key.
    pub key: Vec<u8>,
    /// Offset of the data entry in the data file with the same id.
    pub data_off: u32,
    /// Plaintext value length.
    pub length: u32,
    /// Seconds since the epoch.
    pub timestamp: u32,
    /// CRC32 of the plaintext value.
    pub value_crc: u32,
    /// Offset of the previous index entry in this file (0 for the first), for backward scans.
    pub prev: u32,
    /// The previous version of this key (history chain), [`Loc::NONE`] if none.
    pub parent: Loc,
}

impl IndexEntry {
    /// Entry size on disk.
    pub fn encoded_len(&self) -> usize {
        INDEX_HDR_LEN + self.key.len()
    }

    /// Appends the encoded entry to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0u8; 4]);
        out.push(self.flags);
        out.push(self.key.len() as u8);
        out.extend_from_slice(&[0u8; 2]);
        for v in [
            self.data_off,
            self.length,
            self.timestamp,
            self.value_crc,
            self.prev,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.parent.to_bytes());
        out.extend_from_slice(&self.key);
        let crc = crc32fast::hash(&out[start + 4..]);
        out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    }

    /// Key length announced by an index entry header.
    pub fn key_len_of(hdr: &[u8]) -> usize {
        hdr[5] as usize
    }

    /// Decodes one complete entry (header + key) and checks its CRC.
    pub fn decode(b: &[u8]) -> Option<IndexEntry> {
        if b.len() < INDEX_HDR_LEN || b.len() != INDEX_HDR_LEN + Self::key_len_of(b) {
            return None;
        }
        if crc32fast::hash(&b[4..]) != le32(&b[..4]) {
            return None;
        }
        let f = |i: usize| le32(&b[8 + 4 * i..12 + 4 * i]);
        Some(IndexEntry {
            flags: b[4],
            data_off: f(0),
            length: f(1),
            timestamp: f(2),
            value_crc: f(3),
            prev: f(4),
            parent: Loc::from_bytes(&b[28..36])?,
            key: b[INDEX_HDR_LEN..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn data_entry_roundtrip_and_torn_detection() {
        let h = DataHeader {
            flags: 0,
            key_len: 3,
            stored_len: 5,
            timestamp: 7,
            value_crc: 9,
        };
        let mut v = Vec::new();
        encode_data(&mut v, &h, b"key", b"value");
        assert_eq!(v.len(), h.entry_len());
        assert!(data_entry_valid(&v));
        assert_eq!(decode_data_header(&v), Some(h));
        for cut in 0..v.len() {
            assert!(!data_entry_valid(&v[..cut]));
        }
        v[25] ^= 1;
        assert!(!data_entry_valid(&v));
    }

    proptest! {
        #[test]
        fn index_entry_roundtrip(key in proptest::collection::vec(any::<u8>(), 0..255),
                                 flags in any::<u8>(), n in any::<[u32; 7]>()) {
            let e = IndexEntry { flags, key, data_off: n[0], length: n[1], timestamp: n[2],
                value_crc: n[3], prev: n[4], parent: Loc { file: n[5], off: n[6] } };
            let mut v = Vec::new();
            e.encode(&mut v);
            prop_assert_eq!(v.len(), e.encoded_len());
            prop_assert_eq!(IndexEntry::decode(&v), Some(e));
            v[4] ^= 0x80;
            prop_assert_eq!(IndexEntry::decode(&v), None);
        }

        #[test]
        fn decoders_never_panic(b in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = IndexEntry::decode(&b);
            let _ = data_entry_valid(&b);
            let _ = FileHeader::decode(&b, DATA_MAGIC);
            let _ = Loc::from_bytes(&b);
        }
    }
}
