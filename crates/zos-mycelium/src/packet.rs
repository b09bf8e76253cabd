//! The link protocol's wire format (upstream `docs/packet.md`, `packet.rs`, `babel.rs`): pure
//! encoders and a stream decoder that never panics on untrusted bytes.
//!
//! Every frame starts with `version 1 ‖ type (0 data, 1 control) ‖ reserved u16`. A data frame
//! carries `0 ‖ length u16 ‖ hop_limit ‖ src (16) ‖ dst (16) ‖ body`; a control frame is a Babel
//! packet (`magic 42 ‖ version 3 ‖ body_length u16`) holding exactly one TLV. All integers are
//! big-endian.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{Buf, BufMut, BytesMut};

use crate::crypto::PublicKey;
use crate::subnet::Subnet;

/// Packet header version.
pub const PACKET_VERSION: u8 = 1;
/// Packet type of a data packet.
pub const TYPE_DATA: u8 = 0;
/// Packet type of a control packet.
pub const TYPE_CONTROL: u8 = 1;
/// Babel magic byte.
pub const BABEL_MAGIC: u8 = 42;
/// Babel version.
pub const BABEL_VERSION: u8 = 3;
/// Packet header length.
pub const HEADER_LEN: usize = 4;
/// Data packet header after the packet header: flags/len/hop (4) + src (16) + dst (16).
pub const DATA_HEADER_LEN: usize = 36;

const TLV_HELLO: u8 = 4;
const TLV_IHU: u8 = 5;
const TLV_UPDATE: u8 = 8;
const TLV_ROUTE_REQUEST: u8 = 9;
const TLV_SEQNO_REQUEST: u8 = 10;

/// A hard decode error: upstream drops the connection on these.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The packet header's version byte is not 1.
    #[error("unknown packet version {0}")]
    Version(u8),
    /// The packet header's type byte is neither data nor control.
    #[error("unknown packet type {0}")]
    Type(u8),
}

/// A Babel sequence number: u16 with RFC 8966 §3.2.1 modular comparison.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SeqNo(pub u16);

impl SeqNo {
    /// `self < other` modulo 2^16 (values exactly 32768 apart compare neither way).
    pub fn lt(self, other: SeqNo) -> bool {
        let d = other.0.wrapping_sub(self.0);
        d != 0 && d < 32768
    }

    /// `self > other` modulo 2^16.
    pub fn gt(self, other: SeqNo) -> bool {
        other.lt(self)
    }

    /// The next sequence number (wrapping).
    pub fn next(self) -> SeqNo {
        SeqNo(self.0.wrapping_add(1))
    }
}

impl fmt::Debug for SeqNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A route metric; `0xFFFF` is infinite (a retraction), sums saturate at `0xFFFE`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Metric(pub u16);

impl Metric {
    /// The infinite metric (retraction).
    pub const INFINITE: Metric = Metric(0xFFFF);

    /// Whether this is a retraction.
    pub fn is_infinite(self) -> bool {
        self == Self::INFINITE
    }

    /// Saturating sum that never produces infinity from finite parts.
    pub fn plus(self, cost: u16) -> Metric {
        if self.is_infinite() {
            return self;
        }
        Metric(self.0.saturating_add(cost).min(0xFFFE))
    }
}

impl fmt::Debug for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_infinite() {
            f.write_str("inf")
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// A router id: public key (32) ‖ zone (2) ‖ random (6), new random part at every start.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouterId(pub [u8; 40]);

impl RouterId {
    /// A router id for `pk` with zone 0 and the given random part.
    pub fn new(pk: PublicKey, rnd: [u8; 6]) -> Self {
        let mut b = [0u8; 40];
        b[..32].copy_from_slice(&pk.0);
        b[34..].copy_from_slice(&rnd);
        Self(b)
    }

    /// The public key part.
    pub fn public_key(&self) -> PublicKey {
        let mut k = [0u8; 32];
        k.copy_from_slice(&self.0[..32]);
        PublicKey(k)
    }
}

impl fmt::Display for RouterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}-{}",
            hex::encode(&self.0[..32]),
            hex::encode(&self.0[32..34]),
            hex::encode(&self.0[34..])
        )
    }
}

impl fmt::Debug for RouterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RouterId({})", &hex::encode(&self.0[..4]))
    }
}

/// One Babel TLV (mycelium sends exactly one per control packet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tlv {
    /// Hello (4): flags (always unicast 0x8000), per-peer seqno, interval in centiseconds.
    Hello {
        /// Flags.
        flags: u16,
        /// Per-peer hello counter.
        seqno: SeqNo,
        /// Interval in centiseconds.
        interval: u16,
    },
    /// IHU (5): the sender's link cost towards the receiver.
    Ihu {
        /// Receive cost.
        rx_cost: u16,
        /// Interval in centiseconds (never 0).
        interval: u16,
        /// Optional address (upstream sends none, AE 0).
        address: Option<IpAddr>,
    },
    /// Update (8) with the embedded router id.
    Update {
        /// Flags (masked to 0xC0; always 0 on send).
        flags: u8,
        /// Interval in centiseconds.
        interval: u16,
        /// Source sequence number.
        seqno: SeqNo,
        /// Metric (infinite = retraction).
        metric: Metric,
        /// The announced prefix.
        subnet: Subnet,
        /// The originating router.
        router_id: RouterId,
    },
    /// Route request (9); `subnet: None` is the wildcard request.
    RouteRequest {
        /// Forwarding generation (mycelium addition).
        generation: u8,
        /// The requested prefix, or `None` for all routes.
        subnet: Option<Subnet>,
    },
    /// Seqno request (10).
    SeqnoRequest {
        /// Requested sequence number.
        seqno: SeqNo,
        /// Remaining hops (starts at 64, 0 rejected).
        hop_count: u8,
        /// The source the request is about.
        router_id: RouterId,
        /// The prefix.
        subnet: Subnet,
    },
}

/// A decoded data packet; `body` is the E2E ciphertext (never decrypted when forwarding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPacket {
    /// Remaining hops.
    pub hop_limit: u8,
    /// Overlay source address.
    pub src: Ipv6Addr,
    /// Overlay destination address.
    pub dst: Ipv6Addr,
    /// Ciphertext body (`ciphertext ‖ tag ‖ nonce`).
    pub body: BytesMut,
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// A data packet.
    Data(DataPacket),
    /// A control packet with a TLV we understand.
    Control(Tlv),
    /// A control packet skipped as upstream does (bad Babel magic/version, unknown or malformed
    /// TLV, address families the overlay never carries).
    Ignored,
}

/// Decodes one frame from the front of `buf`, consuming it; `Ok(None)` when more bytes are
/// needed. Never panics, whatever the bytes.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    if buf[0] != PACKET_VERSION {
        return Err(DecodeError::Version(buf[0]));
    }
    match buf[1] {
        TYPE_DATA => {
            if buf.len() < HEADER_LEN + DATA_HEADER_LEN {
                return Ok(None);
            }
            let len = usize::from(u16::from_be_bytes([buf[5], buf[6]]));
            if buf.len() < HEADER_LEN + DATA_HEADER_LEN + len {
                buf.reserve(HEADER_LEN + DATA_HEADER_LEN + len - buf.len());
                return Ok(None);
            }
            let hop_limit = buf[7];
            let mut src = [0u8; 16];
            src.copy_from_slice(&buf[8..24]);
            let mut dst = [0u8; 16];
            dst.copy_from_slice(&buf[24..40]);
            buf.advance(HEADER_LEN + DATA_HEADER_LEN);
            let body = buf.split_to(len);
            Ok(Some(Packet::Data(DataPacket {
                hop_limit,
                src: src.into(),
                dst: dst.into(),
                body,
            })))
        }
        TYPE_CONTROL => {
            if buf.len() < HEADER_LEN + 4 {
                return Ok(None);
            }
            let magic = buf[4];
            let version = buf[5];
            let body_len = usize::from(u16::from_be_bytes([buf[6], buf[7]]));
            if buf.len() < HEADER_LEN + 4 + body_len {
                return Ok(None);
            }
            buf.advance(HEADER_LEN + 4);
            let body = buf.split_to(body_len);
            if magic != BABEL_MAGIC || version != BABEL_VERSION {
                return Ok(Some(Packet::Ignored));
            }
            Ok(Some(
                decode_tlv(&body).map_or(Packet::Ignored, Packet::Control),
            ))
        }
        t => Err(DecodeError::Type(t)),
    }
}

/// Parses the first TLV of a Babel body; `None` for unknown or malformed TLVs.
pub fn decode_tlv(body: &[u8]) -> Option<Tlv> {
    let (&ty, rest) = body.split_first()?;
    let (&len, rest) = rest.split_first()?;
    let v = rest.get(..usize::from(len))?;
    let mut r = Reader(v);
    let tlv = match ty {
        TLV_HELLO => Tlv::Hello {
            flags: r.u16()?,
            seqno: SeqNo(r.u16()?),
            interval: r.u16()?,
        },
        TLV_IHU => {
            let ae = r.u8()?;
            let _reserved = r.u8()?;
            let rx_cost = r.u16()?;
            let interval = r.u16()?;
            if interval == 0 {
                return None;
            }
            let address = match ae {
                0 => None,
                1 => Some(IpAddr::V4(Ipv4Addr::from(r.array::<4>()?))),
                2 => Some(IpAddr::V6(Ipv6Addr::from(r.array::<16>()?))),
                3 => {
                    let low = r.array::<8>()?;
                    let mut a = [0u8; 16];
                    a[0] = 0xfe;
                    a[1] = 0x80;
                    a[8..].copy_from_slice(&low);
                    Some(IpAddr::V6(Ipv6Addr::from(a)))
                }
                _ => return None,
            };
            Tlv::Ihu {
                rx_cost,
                interval,
                address,
            }
        }
        TLV_UPDATE => {
            let ae = r.u8()?;
            let flags = r.u8()? & 0xC0;
            let plen = r.u8()?;
            let _omitted = r.u8()?;
            let interval = r.u16()?;
            let seqno = SeqNo(r.u16()?);
            let metric = Metric(r.u16()?);
            let subnet = r.prefix(ae, plen)?;
            let router_id = RouterId(r.array::<40>()?);
            Tlv::Update {
                flags,
                interval,
                seqno,
                metric,
                subnet,
                router_id,
            }
        }
        TLV_ROUTE_REQUEST => {
            let generation = r.u8()?;
            let ae = r.u8()?;
            let plen = r.u8()?;
            let subnet = if ae == 0 {
                None
            } else {
                Some(r.prefix(ae, plen)?)
            };
            Tlv::RouteRequest { generation, subnet }
        }
        TLV_SEQNO_REQUEST => {
            let ae = r.u8()?;
            let plen = r.u8()?;
            let seqno = SeqNo(r.u16()?);
            let hop_count = r.u8()?;
            let _reserved = r.u8()?;
            let router_id = RouterId(r.array::<40>()?);
            let subnet = r.prefix(ae, plen)?;
            if hop_count == 0 {
                return None;
            }
            Tlv::SeqnoRequest {
                seqno,
                hop_count,
                router_id,
                subnet,
            }
        }
        _ => return None,
    };
    Some(tlv)
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.array::<2>()?))
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (a, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*a)
    }
    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        let (a, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(a)
    }
    /// An AE 2 prefix of `ceil(plen/8)` bytes; IPv4 (AE 1) and link-local (AE 3) prefixes are
    /// consumed but yield `None`: the overlay only routes `400::/7`.
    fn prefix(&mut self, ae: u8, plen: u8) -> Option<Subnet> {
        match ae {
            2 if plen <= 128 => {
                let p = self.bytes(usize::from(plen).div_ceil(8))?;
                let mut a = [0u8; 16];
                a[..p.len()].copy_from_slice(p);
                Subnet::new(a.into(), plen).ok()
            }
            _ => None,
        }
    }
}

fn put_packet_header(out: &mut BytesMut, ty: u8) {
    out.put_u8(PACKET_VERSION);
    out.put_u8(ty);
    out.put_u16(0);
}

/// Appends one control frame holding `tlv`.
pub fn encode_control(tlv: &Tlv, out: &mut BytesMut) {
    let mut body = [0u8; 256];
    let len = encode_tlv_body(tlv, &mut body[..]);
    put_packet_header(out, TYPE_CONTROL);
    out.put_u8(BABEL_MAGIC);
    out.put_u8(BABEL_VERSION);
    out.put_u16(len as u16 + 2);
    out.put_u8(match tlv {
        Tlv::Hello { .. } => TLV_HELLO,
        Tlv::Ihu { .. } => TLV_IHU,
        Tlv::Update { .. } => TLV_UPDATE,
        Tlv::RouteRequest { .. } => TLV_ROUTE_REQUEST,
        Tlv::SeqnoRequest { .. } => TLV_SEQNO_REQUEST,
    });
    out.put_u8(len as u8);
    out.put_slice(&body[..len]);
}

/// Writes the TLV body into `b` (at most 98 bytes for our TLVs) and returns its length.
fn encode_tlv_body(tlv: &Tlv, mut b: &mut [u8]) -> usize {
    let start = b.len();
    match tlv {
        Tlv::Hello {
            flags,
            seqno,
            interval,
        } => {
            b.put_u16(*flags);
            b.put_u16(seqno.0);
            b.put_u16(*interval);
        }
        Tlv::Ihu {
            rx_cost,
            interval,
            address,
        } => {
            b.put_u8(match address {
                None => 0,
                Some(IpAddr::V4(_)) => 1,
                Some(IpAddr::V6(_)) => 2,
            });
            b.put_u8(0);
            b.put_u16(*rx_cost);
            b.put_u16(*interval);
            match address {
                None => {}
                Some(IpAddr::V4(a)) => b.put_slice(&a.octets()),
                Some(IpAddr::V6(a)) => b.put_slice(&a.octets()),
            }
        }
        Tlv::Update {
            flags,
            interval,
            seqno,
            metric,
            subnet,
            router_id,
        } => {
            b.put_u8(2);
            b.put_u8(*flags & 0xC0);
            b.put_u8(subnet.prefix_len());
            b.put_u8(0);
            b.put_u16(*interval);
            b.put_u16(seqno.0);
            b.put_u16(metric.0);
            b.put_slice(subnet.prefix_bytes());
            b.put_slice(&router_id.0);
        }
        Tlv::RouteRequest { generation, subnet } => {
            b.put_u8(*generation);
            match subnet {
                None => {
                    b.put_u8(0);
                    b.put_u8(0);
                }
                Some(s) => {
                    b.put_u8(2);
                    b.put_u8(s.prefix_len());
                    b.put_slice(s.prefix_bytes());
                }
            }
        }
        Tlv::SeqnoRequest {
            seqno,
            hop_count,
            router_id,
            subnet,
        } => {
            b.put_u8(2);
            b.put_u8(subnet.prefix_len());
            b.put_u16(seqno.0);
            b.put_u8(*hop_count);
            b.put_u8(0);
            b.put_slice(&router_id.0);
            b.put_slice(subnet.prefix_bytes());
        }
    }
    start - b.len()
}

/// Appends a data frame header for a body of `body_len` bytes; the caller appends the body.
pub fn encode_data_header(
    hop_limit: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    body_len: u16,
    out: &mut BytesMut,
) {
    put_packet_header(out, TYPE_DATA);
    out.put_u8(0);
    out.put_u16(body_len);
    out.put_u8(hop_limit);
    out.put_slice(&src.octets());
    out.put_slice(&dst.octets());
}

/// Appends a whole data frame.
pub fn encode_data(p: &DataPacket, out: &mut BytesMut) {
    // Bodies over 65535 bytes cannot be framed; callers never build them (TUN MTU 1400).
    let len = u16::try_from(p.body.len()).unwrap_or(u16::MAX);
    encode_data_header(p.hop_limit, p.src, p.dst, len, out);
    out.put_slice(&p.body[..usize::from(len)]);
}

/// The link-local discovery beacon: `"mycelium" ‖ tcp port u16 ‖ router id (40)`.
pub const BEACON_LEN: usize = 50;

/// Encodes a discovery beacon.
pub fn encode_beacon(port: u16, rid: &RouterId) -> [u8; BEACON_LEN] {
    let mut b = [0u8; BEACON_LEN];
    b[..8].copy_from_slice(b"mycelium");
    b[8..10].copy_from_slice(&port.to_be_bytes());
    b[10..].copy_from_slice(&rid.0);
    b
}

/// Decodes a discovery beacon (exact size and magic).
pub fn decode_beacon(b: &[u8]) -> Option<(u16, RouterId)> {
    let b: &[u8; BEACON_LEN] = b.try_into().ok()?;
    if &b[..8] != b"mycelium" {
        return None;
    }
    let mut rid = [0u8; 40];
    rid.copy_from_slice(&b[10..]);
    Some((u16::from_be_bytes([b[8], b[9]]), RouterId(rid)))
}

/// The E2E plaintext header: `version 1 ‖ type ‖ 0 ‖ 0`.
pub const USER_HEADER_LEN: usize = 4;
/// User data type: an IPv6 packet for the TUN.
pub const USER_TYPE_L3: u8 = 0;
/// User data type: a message (not implemented here).
pub const USER_TYPE_MESSAGE: u8 = 1;
/// User data type: out-of-band ICMP.
pub const USER_TYPE_OOB_ICMP: u8 = 2;
