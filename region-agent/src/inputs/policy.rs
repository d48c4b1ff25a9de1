//! Which addresses the agent may fetch media from: every address is checked after DNS
//! resolution (and an IP-literal host as it is written). Refused unless the operator allows
//! them (`[input_urls] allow`): loopback, private (RFC 1918, IPv6 ULA), shared
//! (carrier-grade NAT, 100.64.0.0/10), link-local, unspecified, multicast, broadcast,
//! documentation and other reserved ranges, and cloud metadata addresses — IPv4 ones in
//! their IPv6 forms too (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`, NAT64 and 6to4).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A cloud provider's instance metadata service (169.254.169.254, fd00:ec2::254).
    CloudMetadata,
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918 (10/8, 172.16/12, 192.168/16) and IPv6 unique local (fc00::/7).
    Private,
    /// Carrier-grade NAT, 100.64.0.0/10.
    Shared,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// 0.0.0.0, ::.
    Unspecified,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// Any other special-purpose range (0/8, 192.0.0/24, 198.18/15, 240/4, fec0::/10,
    /// 100::/64).
    Reserved,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CloudMetadata => "a cloud metadata address",
            Self::Loopback => "a loopback address",
            Self::Private => "a private address",
            Self::Shared => "a shared (carrier-grade NAT) address",
            Self::LinkLocal => "a link-local address",
            Self::Unspecified => "the unspecified address",
            Self::Multicast => "a multicast address",
            Self::Broadcast => "the broadcast address",
            Self::Documentation => "a documentation address",
            Self::Reserved => "a reserved address",
        })
    }
}

/// An address the policy refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{address} is {reason}")]
pub struct RefusedAddress {
    /// The address.
    pub address: IpAddr,
    /// Why it is refused.
    pub reason: Reason,
}

/// Why `address` is refused by default, or `None` for an address on the public internet.
pub fn classify(address: IpAddr) -> Option<Reason> {
    match address {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(a: Ipv4Addr) -> Option<Reason> {
    let in_net = |net: [u8; 4], prefix: u8| Cidr::v4(net, prefix).contains_v4(a);
    let reason = if a == Ipv4Addr::new(169, 254, 169, 254) {
        Reason::CloudMetadata
    } else if a.is_unspecified() {
        Reason::Unspecified
    } else if a.is_loopback() {
        Reason::Loopback
    } else if a.is_private() {
        Reason::Private
    } else if in_net([100, 64, 0, 0], 10) {
        Reason::Shared
    } else if a.is_link_local() {
        Reason::LinkLocal
    } else if a.is_broadcast() {
        Reason::Broadcast
    } else if a.is_multicast() {
        Reason::Multicast
    } else if a.is_documentation() {
        Reason::Documentation
    } else if in_net([0, 0, 0, 0], 8)
        || in_net([192, 0, 0, 0], 24)
        || in_net([198, 18, 0, 0], 15)
        || in_net([240, 0, 0, 0], 4)
    {
        Reason::Reserved
    } else {
        return None;
    };
    Some(reason)
}

fn classify_v6(a: Ipv6Addr) -> Option<Reason> {
    let in_net = |first: u16, second: u16, prefix: u8| {
        let net = Ipv6Addr::new(first, second, 0, 0, 0, 0, 0, 0);
        Cidr::new(IpAddr::V6(net), prefix).contains(IpAddr::V6(a))
    };
    // Checked before the IPv4 forms: `::` and `::1` also read as IPv4-compatible.
    let reason = if a == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        Reason::CloudMetadata
    } else if a.is_unspecified() {
        Reason::Unspecified
    } else if a.is_loopback() {
        Reason::Loopback
    } else if let Some(v4) = embedded_v4(a) {
        return classify_v4(v4);
    } else if in_net(0xfc00, 0, 7) {
        Reason::Private
    } else if in_net(0xfe80, 0, 10) {
        Reason::LinkLocal
    } else if a.is_multicast() {
        Reason::Multicast
    } else if in_net(0x2001, 0xdb8, 32) || in_net(0x3fff, 0, 20) {
        Reason::Documentation
    } else if in_net(0xfec0, 0, 10) || in_net(0x100, 0, 64) {
        Reason::Reserved
    } else {
        return None;
    };
    Some(reason)
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped (`::ffff:0:0/96`),
/// IPv4-compatible (`::/96`), NAT64 (`64:ff9b::/96`) and 6to4 (`2002::/16`).
fn embedded_v4(a: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = a.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0, 0, _, _] => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// A block of addresses, `address/prefix` (an address alone is one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn new(network: IpAddr, prefix: u8) -> Self {
        Self { network, prefix }
    }

    fn v4(network: [u8; 4], prefix: u8) -> Self {
        Self::new(IpAddr::from(network), prefix)
    }

    /// Whether `address` is in the block; an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`,
    /// which a dual-stack socket connects to as IPv4) is in the IPv4 blocks of its IPv4
    /// address.
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, address) {
            (IpAddr::V4(_), IpAddr::V4(a)) => self.contains_v4(a),
            (IpAddr::V4(_), IpAddr::V6(a)) => {
                a.to_ipv4_mapped().is_some_and(|a| self.contains_v4(a))
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = self.mask_v6();
                u128::from(net) & mask == u128::from(a) & mask
            }
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }

    fn contains_v4(&self, a: Ipv4Addr) -> bool {
        let IpAddr::V4(net) = self.network else {
            return false;
        };
        let mask = self.mask_v4();
        u32::from(net) & mask == u32::from(a) & mask
    }

    fn mask_v4(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    fn mask_v6(&self) -> u128 {
        u128::MAX
            .checked_shl(128 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    /// Whether the address has no bits set after the prefix.
    fn is_network(&self) -> bool {
        match self.network {
            IpAddr::V4(a) => u32::from(a) & !self.mask_v4() == 0,
            IpAddr::V6(a) => u128::from(a) & !self.mask_v6() == 0,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("{address:?} is not an IP address"))?;
        let most = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => most,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= most)
                .ok_or_else(|| format!("the prefix length {p:?} is not 0 to {most}"))?,
        };
        let cidr = Self::new(network, prefix);
        if !cidr.is_network() {
            return Err(format!(
                "{text} has bits set after its /{prefix} prefix; write its network address"
            ));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The destinations the agent fetches from: the public internet, and the blocks the
/// operator allows despite the default refusals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationPolicy {
    allow: Vec<Cidr>,
}

impl DestinationPolicy {
    /// The default refusals, less the blocks in `allow`.
    pub fn new(allow: Vec<Cidr>) -> Self {
        Self { allow }
    }

    /// Whether the agent may connect to `address`.
    pub fn check(&self, address: IpAddr) -> Result<(), RefusedAddress> {
        match classify(address) {
            Some(_) if self.allow.iter().any(|c| c.contains(address)) => Ok(()),
            Some(reason) => Err(RefusedAddress { address, reason }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn reason(text: &str) -> Option<Reason> {
        classify(text.parse().unwrap())
    }

    #[test]
    fn addresses_are_classified() {
        use Reason::*;
        let cases: &[(&str, Option<Reason>)] = &[
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("172.32.0.1", None),
            ("100.128.0.1", None),
            ("2606:4700::1111", None),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.0.9", Some(Loopback)),
            ("10.0.0.1", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("192.168.1.1", Some(Private)),
            ("100.64.0.1", Some(Shared)),
            ("100.127.255.254", Some(Shared)),
            ("169.254.169.254", Some(CloudMetadata)),
            ("169.254.1.1", Some(LinkLocal)),
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Reserved)),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.250", Some(Multicast)),
            ("255.255.255.255", Some(Broadcast)),
            ("192.0.2.1", Some(Documentation)),
            ("198.51.100.1", Some(Documentation)),
            ("203.0.113.1", Some(Documentation)),
            ("192.0.0.192", Some(Reserved)),
            ("198.18.0.1", Some(Reserved)),
            ("240.0.0.1", Some(Reserved)),
            ("::", Some(Unspecified)),
            ("::1", Some(Loopback)),
            ("fd00:ec2::254", Some(CloudMetadata)),
            ("fd12:3456::1", Some(Private)),
            ("fc00::1", Some(Private)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            ("fec0::1", Some(Reserved)),
            ("ff02::1", Some(Multicast)),
            ("2001:db8::1", Some(Documentation)),
            ("3fff::1", Some(Documentation)),
            ("100::1", Some(Reserved)),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:169.254.169.254", Some(CloudMetadata)),
            ("::ffff:10.1.2.3", Some(Private)),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some(Loopback)),
            ("::169.254.169.254", Some(CloudMetadata)),
            ("::8.8.8.8", None),
            ("64:ff9b::a9fe:a9fe", Some(CloudMetadata)),
            ("64:ff9b::808:808", None),
            ("2002:7f00:1::", Some(Loopback)),
            ("2002:c0a8:101::1", Some(Private)),
            ("2002:808:808::1", None),
        ];
        for (address, expected) in cases {
            assert_eq!(reason(address), *expected, "{address}");
        }
    }

    #[test]
    fn blocks_are_parsed_and_checked() {
        let cases: &[(&str, &str, bool)] = &[
            ("127.0.0.1/32", "127.0.0.1", true),
            ("127.0.0.1/32", "127.0.0.2", false),
            ("127.0.0.1/32", "::ffff:127.0.0.1", true),
            ("127.0.0.1/32", "::127.0.0.1", false),
            ("127.0.0.1", "127.0.0.1", true),
            ("10.0.0.0/8", "10.255.1.2", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("0.0.0.0/0", "8.8.8.8", true),
            ("0.0.0.0/0", "::1", false),
            ("fd00::/8", "fd12::1", true),
            ("fd00::/8", "fe80::1", false),
            ("::1/128", "::1", true),
            ("::/0", "2001:db8::1", true),
        ];
        for (block, address, inside) in cases {
            let cidr: Cidr = block.parse().unwrap();
            assert_eq!(
                cidr.contains(address.parse().unwrap()),
                *inside,
                "{block} ∋ {address}"
            );
        }
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/x",
            "host/8",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
    }

    #[test]
    fn the_operator_s_blocks_are_allowed_and_nothing_else() {
        let policy = DestinationPolicy::new(vec!["127.0.0.1/32".parse().unwrap()]);
        assert!(policy.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(policy.check("::ffff:127.0.0.1".parse().unwrap()).is_ok());
        assert!(policy.check("93.184.216.34".parse().unwrap()).is_ok());
        let refused = policy.check("127.0.0.2".parse().unwrap()).unwrap_err();
        assert_eq!(refused.to_string(), "127.0.0.2 is a loopback address");
        let refused = policy.check("::1".parse().unwrap()).unwrap_err();
        assert_eq!(refused.reason, Reason::Loopback);
        let default = DestinationPolicy::default();
        let refused = default
            .check("169.254.169.254".parse().unwrap())
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "169.254.169.254 is a cloud metadata address"
        );
    }
}
