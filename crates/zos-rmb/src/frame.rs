//! Frames on a peer↔relay or relay↔relay WebSocket: one binary message = one frame.
//!
//! ```text
//! 0x01 Challenge  [32] nonce | str8 relay domain                      relay → client
//! 0x02 Auth       u8 role | u32 twin | str8 session | str8 host | [64] signature
//!                                                                      client → relay
//! 0x03 Welcome    str8 session                                        relay → client
//! 0x04 Rejected   str16 reason                                        relay → client, then close
//! 0x05 Envelope   the rest of the message is an encoded Envelope      both ways
//! 0x06 Bounce     [16] id | u32 src twin | str8 src session | u16 code | str16 message
//!                 (the relay could not take the envelope `id`; sent to its source)
//! ```
//!
//! The Auth signature is the twin key over [`AUTH_LABEL`](crate::frame::AUTH_LABEL) `|| nonce || str8 domain ||
//! str8 host || channel || role || twin || str8 session`: fresh per connection, so it cannot
//! be replayed to the same relay. `host` is the `host[:port]` of the URL the client dialed;
//! the relay refuses a login whose host is not one of its own, so a relay that passes another
//! relay's challenge through to its clients (or anyone on a `ws://` path) cannot log in as
//! them there. `channel` is `0x00` on plain `ws://` and `0x01 || [32]` on `wss://`: the TLS
//! exporter value ([`crate::tls::channel_binding`]); the relay verifies with the value of its
//! own end, so a login passed through a man in the middle that terminates TLS (even one
//! holding the relay's certificate and key) is refused.

use bytes::Bytes;

use crate::codec::{CodecError, Reader, Writer, check_len};
use crate::envelope::{Address, MAX_ERROR_MESSAGE, MAX_SESSION, MessageId};

/// Domain separation for the relay login signature.
pub const AUTH_LABEL: &[u8] = b"zos-rmb-auth-v3";
/// Longest relay domain name.
pub const MAX_DOMAIN: usize = 255;

/// Who is logging in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A twin's session: may only send envelopes whose source is itself.
    Peer,
    /// Another relay (authenticated by its own twin): may forward envelopes of any source; the
    /// receiving relay verifies each envelope's signature against the source's ledger key.
    Federation,
}

/// Why a relay refused an envelope (sent back in a `Bounce`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum BounceCode {
    /// The frame or envelope did not decode.
    Malformed = 1,
    /// `envelope.source` is not the authenticated twin.
    ForgedSource = 2,
    /// Larger than the relay's envelope limit.
    TooLarge = 3,
    /// The source twin exceeded its message or byte rate.
    RateLimited = 4,
    /// The destination twin is unknown, or on a relay this one cannot reach.
    NoRoute = 5,
    /// The destination is offline and its queue is full.
    QueueFull = 6,
    /// Expired, TTL too long, or timestamp in the future.
    Expired = 7,
    /// Forwarding to the destination's relay failed.
    Federation = 8,
    /// The signature did not verify (checked on federated envelopes).
    BadSignature = 9,
    /// The destination expired in the relay's queue before it came online.
    Undelivered = 10,
    /// Any other code (forward compatibility).
    Other = 0xffff,
}

impl BounceCode {
    /// The wire value.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// Parses a wire value; unknown values become [`BounceCode::Other`].
    pub fn from_u16(v: u16) -> Self {
        use BounceCode::*;
        match v {
            1 => Malformed,
            2 => ForgedSource,
            3 => TooLarge,
            4 => RateLimited,
            5 => NoRoute,
            6 => QueueFull,
            7 => Expired,
            8 => Federation,
            9 => BadSignature,
            10 => Undelivered,
            _ => Other,
        }
    }
}

/// A relay's refusal of one envelope, routed back to its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounce {
    /// The refused envelope's id.
    pub id: MessageId,
    /// Its source (so a relay can route the bounce on to a federated sender).
    pub source: Address,
    /// Why.
    pub code: BounceCode,
    /// Human-readable detail.
    pub message: String,
}

/// One WebSocket message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Relay's login challenge.
    Challenge {
        /// Fresh random bytes.
        nonce: [u8; 32],
        /// The relay's domain (signed into the answer).
        domain: String,
    },
    /// Client's answer.
    Auth {
        /// Peer or federation link.
        role: Role,
        /// Twin id.
        twin: u32,
        /// Session name (`None` = default session).
        session: Option<String>,
        /// `host[:port]` of the URL the client dialed (signed).
        host: String,
        /// Signature, see [`auth_message`].
        signature: [u8; 64],
    },
    /// Login accepted.
    Welcome {
        /// The session as registered.
        session: Option<String>,
    },
    /// Login refused.
    Rejected {
        /// Why.
        reason: String,
    },
    /// An encoded envelope (decode with [`crate::envelope::Envelope::decode`]).
    Envelope(Bytes),
    /// An envelope was refused.
    Bounce(Bounce),
}

impl Frame {
    /// Encodes the frame.
    pub fn encode(&self) -> Result<Bytes, CodecError> {
        let mut w = Writer::default();
        match self {
            Frame::Challenge { nonce, domain } => {
                check_len("domain", domain.len(), MAX_DOMAIN)?;
                w.u8(1);
                w.bytes(nonce);
                w.str8(domain);
            }
            Frame::Auth {
                role,
                twin,
                session,
                host,
                signature,
            } => {
                let s = session.as_deref().unwrap_or("");
                check_len("session", s.len(), MAX_SESSION)?;
                check_len("host", host.len(), MAX_DOMAIN)?;
                w.u8(2);
                w.u8(role_byte(*role));
                w.u32(*twin);
                w.str8(s);
                w.str8(host);
                w.bytes(signature);
            }
            Frame::Welcome { session } => {
                let s = session.as_deref().unwrap_or("");
                check_len("session", s.len(), MAX_SESSION)?;
                w.u8(3);
                w.str8(s);
            }
            Frame::Rejected { reason } => {
                w.u8(4);
                w.str16(truncate(reason, MAX_ERROR_MESSAGE));
            }
            Frame::Envelope(b) => {
                let mut v = Vec::with_capacity(b.len() + 1);
                v.push(5);
                v.extend_from_slice(b);
                return Ok(Bytes::from(v));
            }
            Frame::Bounce(b) => {
                let s = b.source.session.as_deref().unwrap_or("");
                check_len("session", s.len(), MAX_SESSION)?;
                w.u8(6);
                w.bytes(&b.id);
                w.u32(b.source.twin);
                w.str8(s);
                w.u16(b.code.as_u16());
                w.str16(truncate(&b.message, MAX_ERROR_MESSAGE));
            }
        }
        Ok(Bytes::from(w.buf))
    }

    /// Decodes one frame from untrusted bytes; the envelope case is a zero-copy slice.
    pub fn decode(input: &Bytes) -> Result<Frame, CodecError> {
        let mut r = Reader::new(input);
        let tag = r.u8("frame tag")?;
        let frame = match tag {
            1 => Frame::Challenge {
                nonce: r.array("nonce")?,
                domain: r.str8("domain", MAX_DOMAIN)?,
            },
            2 => {
                let role = match r.u8("role")? {
                    1 => Role::Peer,
                    2 => Role::Federation,
                    v => {
                        return Err(CodecError::Invalid {
                            field: "role",
                            value: u64::from(v),
                        });
                    }
                };
                Frame::Auth {
                    role,
                    twin: r.u32("twin")?,
                    session: opt(r.str8("session", MAX_SESSION)?),
                    host: r.str8("host", MAX_DOMAIN)?,
                    signature: r.array("signature")?,
                }
            }
            3 => Frame::Welcome {
                session: opt(r.str8("session", MAX_SESSION)?),
            },
            4 => Frame::Rejected {
                reason: r.str16("reason", MAX_ERROR_MESSAGE)?,
            },
            5 => return Ok(Frame::Envelope(input.slice(1..))),
            6 => Frame::Bounce(Bounce {
                id: r.array("id")?,
                source: Address {
                    twin: r.u32("source twin")?,
                    session: opt(r.str8("source session", MAX_SESSION)?),
                },
                code: BounceCode::from_u16(r.u16("code")?),
                message: r.str16("message", MAX_ERROR_MESSAGE)?,
            }),
            v => {
                return Err(CodecError::Invalid {
                    field: "frame tag",
                    value: u64::from(v),
                });
            }
        };
        r.finish()?;
        Ok(frame)
    }
}

fn role_byte(r: Role) -> u8 {
    match r {
        Role::Peer => 1,
        Role::Federation => 2,
    }
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The bytes a client signs to log in: the relay's challenge (`nonce`, `domain`), the
/// `host` the client dialed and its TLS channel binding (`None` on plain `ws://`).
pub fn auth_message(
    nonce: &[u8; 32],
    domain: &str,
    host: &str,
    channel: Option<&[u8; 32]>,
    role: Role,
    twin: u32,
    session: Option<&str>,
) -> Vec<u8> {
    let mut w = Writer::default();
    w.bytes(AUTH_LABEL);
    w.bytes(nonce);
    w.str8(truncate(domain, MAX_DOMAIN));
    w.str8(truncate(host, MAX_DOMAIN));
    // The channel binding: what the signer's TLS connection exported, or nothing on plain
    // `ws://`. The relay puts what *its* end of the connection exported here.
    match channel {
        None => w.u8(0),
        Some(b) => {
            w.u8(1);
            w.bytes(b);
        }
    }
    w.u8(role_byte(role));
    w.u32(twin);
    w.str8(truncate(session.unwrap_or(""), MAX_SESSION));
    w.buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Challenge {
                nonce: [3; 32],
                domain: "relay.example".into(),
            },
            Frame::Auth {
                role: Role::Federation,
                twin: 9,
                session: Some("s".into()),
                host: "127.0.0.1:8080".into(),
                signature: [4; 64],
            },
            Frame::Welcome { session: None },
            Frame::Rejected {
                reason: "bad".into(),
            },
            Frame::Envelope(Bytes::from_static(b"abc")),
            Frame::Bounce(Bounce {
                id: [1; 16],
                source: Address::twin(4),
                code: BounceCode::RateLimited,
                message: "slow down".into(),
            }),
        ];
        for f in frames {
            assert_eq!(Frame::decode(&f.encode().unwrap()).unwrap(), f);
        }
    }

    #[test]
    fn unknown_tag_and_trailing_bytes_fail() {
        assert!(Frame::decode(&Bytes::from_static(&[9])).is_err());
        assert!(Frame::decode(&Bytes::from_static(&[3, 0, 0])).is_err());
        assert!(Frame::decode(&Bytes::new()).is_err());
    }
}
