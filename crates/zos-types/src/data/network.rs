//! network, network-light, ip and ipv4.

use serde::{Deserialize, Serialize};

use crate::challenge::Challenge;
use crate::error::ValidationError;
use crate::gofmt::{GoIp, HexBytes, IpNet};

/// Length of a network's mycelium key.
pub const MYCELIUM_KEY_LEN: usize = 32;

/// A WireGuard peer of a network resource.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Peer {
    /// The peer's subnet.
    pub subnet: IpNet,
    /// The peer's WireGuard public key (base64).
    pub wireguard_public_key: String,
    /// Routes through this peer.
    pub allowed_ips: Vec<IpNet>,
    /// `host:port` of the peer, may be empty.
    pub endpoint: String,
}

impl Peer {
    fn challenge(&self, c: &mut Challenge) {
        c.s(&self.wireguard_public_key)
            .s(&self.endpoint)
            .d(self.subnet);
        c.list(self.allowed_ips.len());
        for ip in &self.allowed_ips {
            c.d(ip);
        }
    }

    fn validate(&self) -> Result<(), ValidationError> {
        if self.subnet.is_nil() {
            return Err(ValidationError::new("peer wireguard subnet cannot empty"));
        }
        if self.allowed_ips.is_empty() {
            return Err(ValidationError::new(
                "peer wireguard allowedIPs cannot empty",
            ));
        }
        if self.wireguard_public_key.is_empty() {
            return Err(ValidationError::new(
                "peer wireguard public key cannot empty",
            ));
        }
        Ok(())
    }
}

/// The mycelium settings of a network.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Mycelium {
    /// 32-byte key (hex in JSON).
    pub hex_key: HexBytes,
    /// Extra peers (upstream refuses any for now).
    pub peers: Vec<String>,
}

impl Mycelium {
    fn challenge(&self, c: &mut Challenge) {
        c.x(&self.hex_key.0).list(self.peers.len());
        for p in &self.peers {
            c.s(p);
        }
    }

    fn validate(&self) -> Result<(), ValidationError> {
        if self.hex_key.0.len() != MYCELIUM_KEY_LEN {
            return Err(ValidationError::new(format!(
                "invalid mycelium key length, expected {MYCELIUM_KEY_LEN}"
            )));
        }
        if !self.peers.is_empty() {
            return Err(ValidationError::new(
                "user defined peers list is not supported right now",
            ));
        }
        Ok(())
    }
}

/// The WireGuard part both network types hash the same way: range, subnet, key, port, peers.
fn wireguard_challenge(
    c: &mut Challenge,
    ip_range: &IpNet,
    subnet: &IpNet,
    private_key: &str,
    port: u16,
    peers: &[Peer],
) {
    c.d(ip_range)
        .d(subnet)
        .s(private_key)
        .d(port)
        .list(peers.len());
    for p in peers {
        p.challenge(c);
    }
}

/// A private network resource on this node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Network {
    /// The whole network range (an IPv4 /16).
    pub ip_range: IpNet,
    /// This node's subnet of the range.
    pub subnet: IpNet,
    /// This node's WireGuard private key.
    pub wireguard_private_key: String,
    /// This node's WireGuard port.
    pub wireguard_listen_port: u16,
    /// Other peers.
    pub peers: Vec<Peer>,
    /// Optional mycelium overlay settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mycelium: Option<Mycelium>,
}

impl Network {
    pub(crate) fn challenge(&self, c: &mut Challenge) {
        wireguard_challenge(
            c,
            &self.ip_range,
            &self.subnet,
            &self.wireguard_private_key,
            self.wireguard_listen_port,
            &self.peers,
        );
        c.list(usize::from(self.mycelium.is_some()));
        if let Some(m) = &self.mycelium {
            m.challenge(c);
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ValidationError> {
        if self.ip_range.is_nil() {
            return Err(ValidationError::new("network IP range cannot be empty"));
        }
        if self.subnet.is_nil() {
            return Err(ValidationError::new("network resource subnet cannot empty"));
        }
        if self.wireguard_private_key.is_empty() {
            return Err(ValidationError::new(
                "network resource wireguard private key cannot empty",
            ));
        }
        for p in &self.peers {
            p.validate()?;
        }
        if let Some(m) = &self.mycelium {
            m.validate()?;
        }
        Ok(())
    }
}

/// A network resource on zos-light: mycelium is mandatory.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkLight {
    /// This node's subnet.
    pub subnet: IpNet,
    /// Mycelium settings (always present).
    pub mycelium: Mycelium,
    /// The whole network range.
    pub ip_range: IpNet,
    /// WireGuard private key.
    pub wireguard_private_key: String,
    /// WireGuard port.
    pub wireguard_listen_port: u16,
    /// Other peers.
    pub peers: Vec<Peer>,
}

impl NetworkLight {
    pub(crate) fn challenge(&self, c: &mut Challenge) {
        wireguard_challenge(
            c,
            &self.ip_range,
            &self.subnet,
            &self.wireguard_private_key,
            self.wireguard_listen_port,
            &self.peers,
        );
        self.mycelium.challenge(c);
    }

    pub(crate) fn validate(&self) -> Result<(), ValidationError> {
        if self.subnet.is_nil() {
            return Err(ValidationError::new("network resource subnet cannot empty"));
        }
        self.mycelium.validate()
    }
}

/// A public IP for a VM.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PublicIp {
    /// Take one of the contract's reserved IPv4 addresses.
    pub v4: bool,
    /// Take an IPv6 address (SLAAC in the node's public /64).
    pub v6: bool,
}

impl PublicIp {
    pub(crate) fn challenge(&self, c: &mut Challenge) {
        c.t(self.v4).t(self.v6);
    }

    pub(crate) fn validate(&self) -> Result<(), ValidationError> {
        if !self.v4 && !self.v6 {
            return Err(ValidationError::new(
                "public ip workload with no selections",
            ));
        }
        Ok(())
    }
}

/// The deprecated `ipv4` workload: no data, one IPv4.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PublicIp4 {}

/// Result of `ip`/`ipv4`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PublicIpResult {
    /// The IPv4 with prefix.
    pub ip: IpNet,
    /// The IPv6 with prefix.
    pub ip6: IpNet,
    /// The IPv4 gateway.
    pub gateway: GoIp,
}
