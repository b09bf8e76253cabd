//! The challenge byte stream: Go `fmt.Fprintf` items written back to back, no separators.

use std::fmt::Display;

/// Accumulates challenge bytes. Strings are written as their raw bytes (`%s`).
#[derive(Debug, Default, Clone)]
pub struct Challenge(Vec<u8>);

impl Challenge {
    /// An empty challenge.
    pub fn new() -> Self {
        Challenge(Vec::new())
    }

    /// `%s` of a string.
    pub fn s(&mut self, v: &str) -> &mut Self {
        self.0.extend_from_slice(v.as_bytes());
        self
    }

    /// `%d` (or `%s` of a Stringer): the value's `Display` form.
    pub fn d(&mut self, v: impl Display) -> &mut Self {
        self.0.extend_from_slice(v.to_string().as_bytes());
        self
    }

    /// `%t` of a bool.
    pub fn t(&mut self, v: bool) -> &mut Self {
        self.s(if v { "true" } else { "false" })
    }

    /// `%x` of a byte slice: lowercase hex, two digits per byte.
    pub fn x(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(hex::encode(v).as_bytes());
        self
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Takes the bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}
