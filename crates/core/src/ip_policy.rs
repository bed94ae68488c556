//! IP rules: allow and block lists of addresses and CIDR ranges, IPv4 and
//! IPv6, for a company and per user. Compared as networks, never as string
//! prefixes.
//!
//! The decision: a block entry (company or user) always wins. Otherwise,
//! if the user has allow entries, the address must be in one of them; else,
//! if the company has allow entries, in one of those; with no allow entries
//! at all, everything not blocked is allowed.

use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    Allow,
    Block,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Allow => "allow",
            RuleKind::Block => "block",
        }
    }

    pub fn parse(s: &str) -> Option<RuleKind> {
        match s {
            "allow" => Some(RuleKind::Allow),
            "block" => Some(RuleKind::Block),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpRule {
    pub kind: RuleKind,
    pub network: IpNet,
    pub label: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpDecision {
    Allowed,
    /// A block entry matched.
    Blocked,
    /// Allow entries exist and none matched.
    NotAllowed,
}

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) are IPv4 addresses.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

pub fn decide(ip: IpAddr, company: &[IpRule], user: &[IpRule]) -> IpDecision {
    let ip = canonical(ip);
    let hit = |r: &&IpRule| r.network.contains(&ip);
    if company
        .iter()
        .chain(user)
        .filter(|r| r.kind == RuleKind::Block)
        .any(|r| hit(&r))
    {
        return IpDecision::Blocked;
    }
    let allows = |rules: &[IpRule]| -> Vec<IpRule> {
        rules
            .iter()
            .filter(|r| r.kind == RuleKind::Allow)
            .cloned()
            .collect()
    };
    let user_allow = allows(user);
    let list = if !user_allow.is_empty() {
        user_allow
    } else {
        allows(company)
    };
    if list.is_empty() || list.iter().any(|r| r.network.contains(&ip)) {
        IpDecision::Allowed
    } else {
        IpDecision::NotAllowed
    }
}

/// Parses `10.0.0.0/8`, `2001:db8::/32` or a single address (as /32 or /128);
/// the network is normalised (host bits cleared).
pub fn parse_network(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: RuleKind, net: &str) -> IpRule {
        IpRule {
            kind,
            network: parse_network(net).unwrap(),
            label: String::new(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_are_networks_not_prefixes() {
        let company = [rule(RuleKind::Allow, "10.1.0.0/16")];
        assert_eq!(
            decide(ip("10.1.255.255"), &company, &[]),
            IpDecision::Allowed
        );
        assert_eq!(
            decide(ip("10.2.0.0"), &company, &[]),
            IpDecision::NotAllowed
        );
        // "10.1" as a string prefix would wrongly match 10.10.x.x.
        assert_eq!(
            decide(ip("10.10.0.1"), &company, &[]),
            IpDecision::NotAllowed
        );
        assert_eq!(
            decide(ip("::ffff:10.1.2.3"), &company, &[]),
            IpDecision::Allowed
        );
    }

    #[test]
    fn block_wins_and_user_allow_overrides_company_allow() {
        let company = [
            rule(RuleKind::Allow, "192.0.2.0/24"),
            rule(RuleKind::Block, "192.0.2.66"),
        ];
        assert_eq!(decide(ip("192.0.2.66"), &company, &[]), IpDecision::Blocked);
        let user = [rule(RuleKind::Allow, "198.51.100.0/24")];
        assert_eq!(
            decide(ip("198.51.100.7"), &company, &user),
            IpDecision::Allowed
        );
        assert_eq!(
            decide(ip("192.0.2.10"), &company, &user),
            IpDecision::NotAllowed
        );
        assert_eq!(decide(ip("203.0.113.1"), &[], &[]), IpDecision::Allowed);
    }

    #[test]
    fn ipv6() {
        let company = [rule(RuleKind::Allow, "2001:db8:abcd::/48")];
        assert_eq!(
            decide(ip("2001:db8:abcd:ffff::1"), &company, &[]),
            IpDecision::Allowed
        );
        assert_eq!(
            decide(ip("2001:db8:abce::1"), &company, &[]),
            IpDecision::NotAllowed
        );
        assert_eq!(
            parse_network("2001:db8::1/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert!(parse_network("10.0.0").is_none());
    }
}
