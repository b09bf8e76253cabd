//! The challenge byte stream.
//!
//! Version 1 (upstream): Go `fmt.Fprintf` items written back to back, no separators, so
//! `"1"+"23"` and `"12"+"3"` give the same bytes. Version 2 ([`Challenge::v2`]): the label
//! [`V2_LABEL`], then every item as `u32 BE length ‖ bytes`, and every list as an item
//! `count(u64 BE)` tagged with `0xff` before its elements, so item and list boundaries are part
//! of the stream.

use std::fmt::Display;

/// First bytes of a version-2 challenge (domain separation from everything else signed).
pub const V2_LABEL: &[u8] = b"zos-deployment-hash-v2\0";

/// Accumulates challenge bytes. Strings are written as their raw bytes (`%s`).
#[derive(Debug, Default, Clone)]
pub struct Challenge {
    buf: Vec<u8>,
    prefixed: bool,
}

impl Challenge {
    /// An empty version-1 (upstream, unseparated) challenge.
    pub fn new() -> Self {
        Challenge::default()
    }

    /// An empty version-2 challenge: length-prefixed items after [`V2_LABEL`].
    pub fn v2() -> Self {
        Challenge {
            buf: V2_LABEL.to_vec(),
            prefixed: true,
        }
    }

    fn item(&mut self, bytes: &[u8]) -> &mut Self {
        if self.prefixed {
            // Fields are bounded far below 4 GiB (the whole deployment is a JSON request).
            let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
            self.buf.extend_from_slice(&len.to_be_bytes());
        }
        self.buf.extend_from_slice(bytes);
        self
    }

    /// The number of elements of a list that follows: nothing in version 1 (upstream writes
    /// none), a tagged count in version 2.
    pub fn list(&mut self, count: usize) -> &mut Self {
        if self.prefixed {
            self.buf.push(0xff);
            self.buf.extend_from_slice(&(count as u64).to_be_bytes());
        }
        self
    }

    /// `%s` of a string.
    pub fn s(&mut self, v: &str) -> &mut Self {
        self.item(v.as_bytes())
    }

    /// `%d` (or `%s` of a Stringer): the value's `Display` form.
    pub fn d(&mut self, v: impl Display) -> &mut Self {
        self.item(v.to_string().as_bytes())
    }

    /// `%t` of a bool.
    pub fn t(&mut self, v: bool) -> &mut Self {
        self.s(if v { "true" } else { "false" })
    }

    /// `%x` of a byte slice: lowercase hex, two digits per byte.
    pub fn x(&mut self, v: &[u8]) -> &mut Self {
        self.item(hex::encode(v).as_bytes())
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Takes the bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}
