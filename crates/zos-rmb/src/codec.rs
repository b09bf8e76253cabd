//! Bounded binary primitives shared by the envelope and frame codecs.
//!
//! Every length on the wire is checked against both a per-field maximum and the bytes actually
//! left in the input *before* anything is allocated, so a claimed length can never make the
//! decoder allocate more than the input it was handed.

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The input ended inside `field`.
    #[error("truncated input while reading {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// A length prefix exceeded the field's limit.
    #[error("{field} is {len} bytes, limit is {max}")]
    TooLong {
        /// The field being read.
        field: &'static str,
        /// The claimed length.
        len: usize,
        /// The limit for this field.
        max: usize,
    },
    /// A string field was not UTF-8.
    #[error("{field} is not valid UTF-8")]
    Utf8 {
        /// The field being read.
        field: &'static str,
    },
    /// A tag, flag or version byte had an unknown value.
    #[error("invalid {field}: {value}")]
    Invalid {
        /// The field being read.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// Bytes were left after the last field.
    #[error("{0} trailing bytes after the last field")]
    Trailing(usize),
}

/// A cursor over untrusted bytes; every read is bounds-checked.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn bytes(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(CodecError::Truncated { field });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], CodecError> {
        let b = self.bytes(field, N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, CodecError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A `u8` length then that many bytes of UTF-8 (at most `max`).
    pub(crate) fn str8(&mut self, field: &'static str, max: usize) -> Result<String, CodecError> {
        let len = usize::from(self.u8(field)?);
        self.string(field, len, max)
    }

    /// A `u16` length then that many bytes of UTF-8 (at most `max`).
    pub(crate) fn str16(&mut self, field: &'static str, max: usize) -> Result<String, CodecError> {
        let len = usize::from(self.u16(field)?);
        self.string(field, len, max)
    }

    fn string(
        &mut self,
        field: &'static str,
        len: usize,
        max: usize,
    ) -> Result<String, CodecError> {
        if len > max {
            return Err(CodecError::TooLong { field, len, max });
        }
        let b = self.bytes(field, len)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| CodecError::Utf8 { field })
    }

    /// A `u32` length then that many bytes (at most `max`), borrowed from the input.
    pub(crate) fn blob32(
        &mut self,
        field: &'static str,
        max: usize,
    ) -> Result<&'a [u8], CodecError> {
        let len = usize::try_from(self.u32(field)?).unwrap_or(usize::MAX);
        if len > max {
            return Err(CodecError::TooLong { field, len, max });
        }
        self.bytes(field, len)
    }

    /// Bytes consumed so far relative to `start` (the full input).
    pub(crate) fn offset_in(&self, start: &[u8]) -> usize {
        start.len() - self.buf.len()
    }

    pub(crate) fn finish(self) -> Result<(), CodecError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(CodecError::Trailing(self.buf.len()))
        }
    }
}

/// Append-only writer; callers validate lengths before writing (see `check_len`).
#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(n),
        }
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// Caller guarantees `s.len() <= 255` (checked by `check_len`).
    pub(crate) fn str8(&mut self, s: &str) {
        self.u8(u8::try_from(s.len()).unwrap_or(u8::MAX));
        self.bytes(s.as_bytes());
    }

    /// Caller guarantees `s.len() <= 65535` (checked by `check_len`).
    pub(crate) fn str16(&mut self, s: &str) {
        self.u16(u16::try_from(s.len()).unwrap_or(u16::MAX));
        self.bytes(s.as_bytes());
    }

    /// Caller guarantees `b.len() <= u32::MAX` (checked by `check_len`).
    pub(crate) fn blob32(&mut self, b: &[u8]) {
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.bytes(b);
    }
}

/// Rejects a field longer than its wire limit before encoding it.
pub(crate) fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), CodecError> {
    if len > max {
        Err(CodecError::TooLong { field, len, max })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claimed_length_beyond_input_is_truncated_not_allocated() {
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 1, 2]);
        assert_eq!(
            r.blob32("payload", usize::MAX),
            Err(CodecError::Truncated { field: "payload" })
        );
    }

    #[test]
    fn limits_apply_before_reading() {
        let mut r = Reader::new(&[0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(
            r.blob32("payload", 8),
            Err(CodecError::TooLong { len: 9, max: 8, .. })
        ));
    }

    #[test]
    fn strings_round_trip() {
        let mut w = Writer::default();
        w.str8("sess");
        w.str16("zos.deployment.deploy");
        let mut r = Reader::new(&w.buf);
        assert_eq!(r.str8("a", 64).unwrap(), "sess");
        assert_eq!(r.str16("b", 256).unwrap(), "zos.deployment.deploy");
        r.finish().unwrap();
    }
}
