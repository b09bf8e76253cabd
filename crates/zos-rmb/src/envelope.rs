//! The envelope: a signed routing header plus a body sealed for the destination twin.
//!
//! Wire layout (all integers big-endian; `str8` = u8 length + UTF-8; `blob32` = u32 length + bytes):
//!
//! ```text
//! header   u8 version(=1) | [16] id | u32 src.twin | str8 src.session | u32 dst.twin
//!          | str8 dst.session | u64 timestamp (unix s) | u32 ttl (s)
//! body     blob32 sealed            (e2e::seal of the encoded Body, AAD = header bytes)
//! trailer  [64] signature           (sender's twin key over SIGNING_LABEL || SHA-256(header || body))
//! ```
//!
//! The relay sees only the header. Command, reference, error and payload live in the sealed
//! [`Body`](crate::envelope::Body):
//!
//! ```text
//! u8 flags (bit0 = reply: reference present, bit1 = error present; other bits must be 0)
//! str8 command | [16] reference (if reply) | u32 code + str16 message (if error) | blob32 payload
//! ```
//!
//! The encoding is canonical (one encoding per value; an empty session *is* "no session"),
//! so signing the encoded bytes signs every field.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use x25519_dalek::StaticSecret;
use zos_types::crypto::{KeyPair, PublicKey};

use crate::codec::{CodecError, Reader, Writer, check_len};
use crate::e2e::{self, E2eError};

/// Envelope format version.
pub const VERSION: u8 = 1;
/// Longest session name.
pub const MAX_SESSION: usize = 64;
/// Longest command name.
pub const MAX_COMMAND: usize = 255;
/// Longest error message in a reply.
pub const MAX_ERROR_MESSAGE: usize = 4096;
/// Absolute bound on a sealed body; relays apply their own (smaller) configured limit.
pub const MAX_SEALED: usize = 16 * 1024 * 1024;
/// Domain separation for envelope signatures.
pub const SIGNING_LABEL: &[u8] = b"zos-rmb-envelope-v1";
/// Longest TTL a relay or peer accepts (one day): bounds queues and replay caches.
pub const MAX_TTL: u32 = 86_400;
/// How far in the future a timestamp may be (clock skew between twins).
pub const MAX_CLOCK_SKEW: u64 = 60;

/// Why an envelope is outside its time window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// The TTL is above [`MAX_TTL`].
    #[error("ttl {ttl} s is above the maximum of {MAX_TTL} s")]
    TtlTooLong {
        /// The envelope's TTL.
        ttl: u32,
    },
    /// The timestamp is further ahead than [`MAX_CLOCK_SKEW`].
    #[error("timestamp is {ahead} s in the future")]
    Future {
        /// Seconds ahead of the receiver's clock.
        ahead: u64,
    },
    /// The TTL has passed.
    #[error("expired {ago} s ago")]
    Expired {
        /// Seconds since expiry.
        ago: u64,
    },
}

/// A message id: 16 random bytes chosen by the sender.
pub type MessageId = [u8; 16];

/// A twin, and optionally one of its sessions (connections).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    /// Twin id on the ledger.
    pub twin: u32,
    /// Session name; `None` is the twin's default session (or, as a destination, any session).
    pub session: Option<String>,
}

impl Address {
    /// The twin's default session.
    pub fn twin(twin: u32) -> Self {
        Address {
            twin,
            session: None,
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.session {
            Some(s) => write!(f, "{}/{s}", self.twin),
            None => write!(f, "{}", self.twin),
        }
    }
}

/// The routing fields: all the relay sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Random id; replies carry it as their `reference`.
    pub id: MessageId,
    /// Sender (checked by the relay against the authenticated session).
    pub source: Address,
    /// Receiver.
    pub destination: Address,
    /// Send time, unix seconds.
    pub timestamp: u64,
    /// Seconds after `timestamp` when the message is dropped.
    pub ttl: u32,
}

impl Header {
    /// Unix second after which the message is dead.
    pub fn expires_at(&self) -> u64 {
        self.timestamp.saturating_add(u64::from(self.ttl))
    }

    /// `Ok` if `now` is within `[timestamp - skew, timestamp + ttl]` and the TTL is allowed.
    pub fn check_time(&self, now: u64) -> Result<(), TimeError> {
        if self.ttl > MAX_TTL {
            return Err(TimeError::TtlTooLong { ttl: self.ttl });
        }
        if self.timestamp > now.saturating_add(MAX_CLOCK_SKEW) {
            return Err(TimeError::Future {
                ahead: self.timestamp - now,
            });
        }
        if now > self.expires_at() {
            return Err(TimeError::Expired {
                ago: now - self.expires_at(),
            });
        }
        Ok(())
    }

    /// Canonical bytes of the header (also the AEAD associated data).
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let mut w = Writer::with_capacity(64);
        self.write(&mut w)?;
        Ok(w.buf)
    }

    fn write(&self, w: &mut Writer) -> Result<(), CodecError> {
        w.u8(VERSION);
        w.bytes(&self.id);
        write_address(w, "source session", &self.source)?;
        write_address(w, "destination session", &self.destination)?;
        w.u64(self.timestamp);
        w.u32(self.ttl);
        Ok(())
    }

    fn read(r: &mut Reader<'_>) -> Result<Header, CodecError> {
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(CodecError::Invalid {
                field: "version",
                value: u64::from(version),
            });
        }
        Ok(Header {
            id: r.array("id")?,
            source: read_address(r, "source")?,
            destination: read_address(r, "destination")?,
            timestamp: r.u64("timestamp")?,
            ttl: r.u32("ttl")?,
        })
    }
}

fn write_address(w: &mut Writer, field: &'static str, a: &Address) -> Result<(), CodecError> {
    let s = a.session.as_deref().unwrap_or("");
    check_len(field, s.len(), MAX_SESSION)?;
    w.u32(a.twin);
    w.str8(s);
    Ok(())
}

fn read_address(r: &mut Reader<'_>, field: &'static str) -> Result<Address, CodecError> {
    let twin = r.u32(field)?;
    let s = r.str8(field, MAX_SESSION)?;
    Ok(Address {
        twin,
        session: (!s.is_empty()).then_some(s),
    })
}

/// An error reply's code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    /// Application-defined code (404 = no handler for the command).
    pub code: u32,
    /// Human-readable message.
    pub message: String,
}

/// The sealed part of an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    /// Command name (echoed in replies).
    pub command: String,
    /// For replies: the id of the request.
    pub reference: Option<MessageId>,
    /// For error replies.
    pub error: Option<ErrorBody>,
    /// Application payload (JSON in the peer API).
    pub payload: Vec<u8>,
}

impl Body {
    /// Canonical bytes.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        check_len("command", self.command.len(), MAX_COMMAND)?;
        check_len("payload", self.payload.len(), MAX_SEALED)?;
        if self.error.is_some() && self.reference.is_none() {
            return Err(CodecError::Invalid {
                field: "flags (error without reference)",
                value: 2,
            });
        }
        let mut w = Writer::with_capacity(self.payload.len() + self.command.len() + 64);
        let flags = u8::from(self.reference.is_some()) | (u8::from(self.error.is_some()) << 1);
        w.u8(flags);
        w.str8(&self.command);
        if let Some(r) = &self.reference {
            w.bytes(r);
        }
        if let Some(e) = &self.error {
            check_len("error message", e.message.len(), MAX_ERROR_MESSAGE)?;
            w.u32(e.code);
            w.str16(&e.message);
        }
        w.blob32(&self.payload);
        Ok(w.buf)
    }

    /// Decodes a body; bounded by the input length.
    pub fn decode(input: &[u8]) -> Result<Body, CodecError> {
        let mut r = Reader::new(input);
        let flags = r.u8("flags")?;
        if flags & !0b11 != 0 || flags == 0b10 {
            return Err(CodecError::Invalid {
                field: "flags",
                value: u64::from(flags),
            });
        }
        let command = r.str8("command", MAX_COMMAND)?;
        let reference = if flags & 1 != 0 {
            Some(r.array("reference")?)
        } else {
            None
        };
        let error = if flags & 2 != 0 {
            Some(ErrorBody {
                code: r.u32("error code")?,
                message: r.str16("error message", MAX_ERROR_MESSAGE)?,
            })
        } else {
            None
        };
        let payload = r.blob32("payload", MAX_SEALED)?.to_vec();
        r.finish()?;
        Ok(Body {
            command,
            reference,
            error,
            payload,
        })
    }
}

/// A signed envelope as it travels: header in clear, body sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Routing fields.
    pub header: Header,
    /// `e2e::seal(encoded Body)` for the destination.
    pub sealed: Bytes,
    /// Sender's signature (see [`SIGNING_LABEL`]).
    pub signature: [u8; 64],
}

/// Why an envelope could not be verified or opened by its receiver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The header could not be encoded (never for a decoded envelope).
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    /// The body would not decrypt.
    #[error("e2e: {0}")]
    E2e(#[from] E2eError),
}

impl Envelope {
    /// Seals `body` for `dst_e2e` (the destination's X25519 key) and signs with `key`.
    pub fn seal(
        header: Header,
        body: &Body,
        key: &KeyPair,
        dst_e2e: &[u8; 32],
    ) -> Result<Envelope, CodecError> {
        let aad = header.encode()?;
        let sealed = Bytes::from(e2e::seal(dst_e2e, &aad, &body.encode()?));
        check_len("sealed body", sealed.len(), MAX_SEALED)?;
        let mut env = Envelope {
            header,
            sealed,
            signature: [0u8; 64],
        };
        env.signature = key.sign(&signing_message(&env.digest_with(&aad)));
        Ok(env)
    }

    /// SHA-256 over the encoded header and body: what the signature covers.
    pub fn digest(&self) -> Result<[u8; 32], CodecError> {
        Ok(self.digest_with(&self.header.encode()?))
    }

    fn digest_with(&self, header: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(header);
        h.update(
            u32::try_from(self.sealed.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        h.update(&self.sealed);
        h.finalize().into()
    }

    /// Whether the signature is valid for `key` (the source twin's ledger key).
    pub fn verify(&self, key: &PublicKey) -> bool {
        match self.digest() {
            Ok(d) => key.verify(&signing_message(&d), &self.signature),
            Err(_) => false,
        }
    }

    /// Decrypts and decodes the body with the destination's X25519 secret.
    pub fn open(&self, secret: &StaticSecret) -> Result<Body, OpenError> {
        let aad = self.header.encode()?;
        let plain = e2e::open(secret, &aad, &self.sealed)?;
        Ok(Body::decode(&plain)?)
    }

    /// Canonical bytes.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let mut w = Writer::with_capacity(self.sealed.len() + 160);
        self.header.write(&mut w)?;
        check_len("sealed body", self.sealed.len(), MAX_SEALED)?;
        w.blob32(&self.sealed);
        w.bytes(&self.signature);
        Ok(w.buf)
    }

    /// Decodes an envelope; the body is a zero-copy slice of `input`. Never allocates from a
    /// claimed length: all lengths are checked against [`MAX_SEALED`] and the input first.
    pub fn decode(input: &Bytes) -> Result<Envelope, CodecError> {
        let mut r = Reader::new(input);
        let header = Header::read(&mut r)?;
        let sealed = r.blob32("sealed body", MAX_SEALED)?;
        let end = r.offset_in(input);
        let start = end - sealed.len();
        let signature = r.array("signature")?;
        r.finish()?;
        Ok(Envelope {
            header,
            sealed: input.slice(start..end),
            signature,
        })
    }

    /// Decodes only the header (what a relay needs to route).
    pub fn decode_header(input: &[u8]) -> Result<Header, CodecError> {
        Header::read(&mut Reader::new(input))
    }
}

/// The exact bytes the twin key signs.
pub fn signing_message(digest: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_LABEL.len() + 32);
    m.extend_from_slice(SIGNING_LABEL);
    m.extend_from_slice(digest);
    m
}

/// Current unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh random message id.
pub fn new_id() -> MessageId {
    use rand::RngCore;
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2e::{e2e_public_key, e2e_secret};
    use zos_types::crypto::KeyType;

    fn sample() -> (Envelope, KeyPair, [u8; 32]) {
        let key = KeyPair::from_seed(KeyType::Sr25519, [1u8; 32]);
        let dst_seed = [2u8; 32];
        let header = Header {
            id: [9u8; 16],
            source: Address {
                twin: 1,
                session: Some("cli".into()),
            },
            destination: Address::twin(2),
            timestamp: 1_700_000_000,
            ttl: 60,
        };
        let body = Body {
            command: "zos.ping".into(),
            reference: None,
            error: None,
            payload: b"{}".to_vec(),
        };
        let env = Envelope::seal(header, &body, &key, &e2e_public_key(&dst_seed)).unwrap();
        (env, key, dst_seed)
    }

    #[test]
    fn round_trip_verify_open() {
        let (env, key, dst_seed) = sample();
        let bytes = Bytes::from(env.encode().unwrap());
        let back = Envelope::decode(&bytes).unwrap();
        assert_eq!(back, env);
        assert!(back.verify(&key.public()));
        assert_eq!(
            back.open(&e2e_secret(&dst_seed)).unwrap().command,
            "zos.ping"
        );
        assert_eq!(Envelope::decode_header(&bytes).unwrap(), env.header);
    }

    #[test]
    fn every_header_field_is_signed_and_bound() {
        let (env, key, dst_seed) = sample();
        let mut variants = Vec::new();
        let mut e = env.clone();
        e.header.id[0] ^= 1;
        variants.push(e);
        let mut e = env.clone();
        e.header.source.twin = 3;
        variants.push(e);
        let mut e = env.clone();
        e.header.source.session = None;
        variants.push(e);
        let mut e = env.clone();
        e.header.destination.session = Some("x".into());
        variants.push(e);
        let mut e = env.clone();
        e.header.timestamp += 1;
        variants.push(e);
        let mut e = env.clone();
        e.header.ttl += 1;
        variants.push(e);
        for v in variants {
            assert!(!v.verify(&key.public()), "{:?}", v.header);
            assert!(v.open(&e2e_secret(&dst_seed)).is_err());
        }
        let mut sealed = env.sealed.to_vec();
        sealed[40] ^= 1;
        let mut e = env.clone();
        e.sealed = Bytes::from(sealed);
        assert!(!e.verify(&key.public()));
        assert!(matches!(
            e.open(&e2e_secret(&dst_seed)),
            Err(OpenError::E2e(E2eError::Decrypt))
        ));
    }

    #[test]
    fn body_round_trip_and_flags() {
        let b = Body {
            command: "c".into(),
            reference: Some([1; 16]),
            error: Some(ErrorBody {
                code: 7,
                message: "no".into(),
            }),
            payload: vec![1, 2, 3],
        };
        assert_eq!(Body::decode(&b.encode().unwrap()).unwrap(), b);
        assert!(Body::decode(&[0b10, 0]).is_err());
        assert!(Body::decode(&[0b100, 0]).is_err());
    }

    #[test]
    fn time_checks() {
        let (env, _, _) = sample();
        let h = env.header;
        assert!(h.check_time(h.timestamp).is_ok());
        assert!(h.check_time(h.timestamp + 60).is_ok());
        assert_eq!(
            h.check_time(h.timestamp + 61),
            Err(TimeError::Expired { ago: 1 })
        );
        assert_eq!(
            h.check_time(h.timestamp - MAX_CLOCK_SKEW - 1),
            Err(TimeError::Future {
                ahead: MAX_CLOCK_SKEW + 1
            })
        );
    }
}
