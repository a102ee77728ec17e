//! Network patterns: `scheme://host[:port]` for sockets and HTTP, and name patterns for DNS.
//!
//! Each pattern is parsed once into a closed type whose `Display` parses back to the same
//! value, and matched with exact rules: names are compared case-insensitively, `*.suffix`
//! matches exactly one more label (never the bare suffix, `*` never crosses a dot), addresses
//! are compared after IPv4-mapped IPv6 addresses are turned back into IPv4. This module knows
//! nothing of policies or decisions.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;

/// Why a pattern did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{found}` is not a valid {what}: {reason}")]
pub struct PatternError {
    /// The text found.
    pub found: String,
    /// What kind of pattern was expected.
    pub what: &'static str,
    /// What is wrong with it.
    pub reason: String,
    /// How to fix it, if obvious.
    pub hint: Option<String>,
}

fn perr(found: &str, what: &'static str, reason: impl Into<String>) -> PatternError {
    PatternError {
        found: found.to_owned(),
        what,
        reason: reason.into(),
        hint: None,
    }
}

/// Canonical form of an address: IPv4-mapped IPv6 (`::ffff:a.b.c.d`) becomes IPv4, so a guest
/// cannot dodge an IPv4 rule by spelling the address differently.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The host part of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Any host.
    Any,
    /// Exactly this DNS name (lowercase).
    Name(String),
    /// Any name with exactly one more label before this suffix (stored without `*.`).
    Subdomain(String),
    /// Exactly this address.
    Ip(IpAddr),
    /// Any address in this range.
    Cidr(IpNet),
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl HostPattern {
    fn parse(s: &str, what: &'static str) -> Result<Self, PatternError> {
        if s == "*" {
            return Ok(Self::Any);
        }
        let bare = s
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(s);
        if bare.contains('/') {
            let net: IpNet = bare
                .parse()
                .map_err(|_| perr(s, what, "not a CIDR range"))?;
            if net.trunc() != net {
                let mut e = perr(s, what, "the range has host bits set");
                e.hint = Some(format!("write `{}`", net.trunc()));
                return Err(e);
            }
            return Ok(Self::Cidr(net));
        }
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Self::Ip(canonical_ip(ip)));
        }
        let lower = s.to_ascii_lowercase();
        if let Some(suffix) = lower.strip_prefix("*.") {
            if !valid_name(suffix) {
                return Err(perr(s, what, "the part after `*.` is not a DNS name"));
            }
            return Ok(Self::Subdomain(suffix.to_owned()));
        }
        if lower.contains('*') {
            let mut e = perr(s, what, "`*` may only be the whole host or a leading `*.`");
            e.hint = Some("write `*.example.com` for the subdomains of example.com".into());
            return Err(e);
        }
        if !valid_name(&lower) {
            return Err(perr(
                s,
                what,
                "the host is not a DNS name, an IP address, a CIDR range or `*`",
            ));
        }
        Ok(Self::Name(lower))
    }

    /// True for patterns that name addresses rather than DNS names.
    pub fn is_address(&self) -> bool {
        matches!(self, Self::Any | Self::Ip(_) | Self::Cidr(_))
    }

    /// Does a DNS name match? Address patterns never match names.
    pub fn matches_name(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match self {
            Self::Any => true,
            Self::Name(n) => *n == name,
            Self::Subdomain(suffix) => name
                .strip_suffix(suffix.as_str())
                .and_then(|head| head.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
            Self::Ip(_) | Self::Cidr(_) => {
                name.parse::<IpAddr>().is_ok_and(|ip| self.matches_ip(ip))
            }
        }
    }

    /// Does an address match? Name patterns never match addresses.
    pub fn matches_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        match self {
            Self::Any => true,
            Self::Ip(a) => *a == ip,
            Self::Cidr(net) => net.contains(&ip),
            Self::Name(_) | Self::Subdomain(_) => false,
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Name(n) => f.write_str(n),
            Self::Subdomain(s) => write!(f, "*.{s}"),
            Self::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
            Self::Ip(a) => write!(f, "{a}"),
            Self::Cidr(n @ IpNet::V6(_)) => write!(f, "[{n}]"),
            Self::Cidr(n) => write!(f, "{n}"),
        }
    }
}

/// The port part of a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortPattern {
    /// Any port.
    Any,
    /// An inclusive range; a single port is a range of one.
    Range(u16, u16),
}

impl PortPattern {
    fn parse(s: &str, whole: &str, what: &'static str) -> Result<Self, PatternError> {
        if s == "*" {
            return Ok(Self::Any);
        }
        let port = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| perr(whole, what, format!("`{p}` is not a port number (0-65535)")))
        };
        match s.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (port(lo)?, port(hi)?);
                if lo > hi {
                    return Err(perr(
                        whole,
                        what,
                        format!("the port range {lo}-{hi} is empty"),
                    ));
                }
                Ok(Self::Range(lo, hi))
            }
            None => {
                let p = port(s)?;
                Ok(Self::Range(p, p))
            }
        }
    }

    /// Does `port` match?
    pub fn matches(&self, port: u16) -> bool {
        match *self {
            Self::Any => true,
            Self::Range(lo, hi) => (lo..=hi).contains(&port),
        }
    }
}

impl fmt::Display for PortPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Any => f.write_str("*"),
            Self::Range(lo, hi) if lo == hi => write!(f, "{lo}"),
            Self::Range(lo, hi) => write!(f, "{lo}-{hi}"),
        }
    }
}

/// Splits `host[:port]`, honouring `[v6]` brackets. The port is `None` when absent.
fn split_host_port<'a>(
    rest: &'a str,
    whole: &str,
    what: &'static str,
) -> Result<(&'a str, Option<&'a str>), PatternError> {
    if rest.starts_with('[') {
        let close = rest
            .find(']')
            .ok_or_else(|| perr(whole, what, "`[` without `]`"))?;
        let (host, after) = rest.split_at(close + 1);
        return match after {
            "" => Ok((host, None)),
            _ => after
                .strip_prefix(':')
                .map(|p| (host, Some(p)))
                .ok_or_else(|| perr(whole, what, "expected `:port` after `]`")),
        };
    }
    if rest.matches(':').count() > 1 {
        let mut e = perr(whole, what, "an IPv6 address must be in brackets");
        e.hint = Some("write e.g. `tcp://[::1]:8080`".into());
        return Err(e);
    }
    Ok(match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    })
}

/// Socket schemes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `tcp://`
    Tcp,
    /// `udp://`
    Udp,
}

/// A socket grant: `tcp://ADDR:PORT` or `udp://ADDR:PORT`, where ADDR is an IP, a CIDR range
/// or `*`. wasi:sockets deals in addresses, so names are refused here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SocketPattern {
    transport: Transport,
    host: HostPattern,
    port: PortPattern,
}

impl SocketPattern {
    /// The transport.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Does this address match?
    pub fn matches(&self, addr: SocketAddr) -> bool {
        self.host.matches_ip(addr.ip()) && self.port.matches(addr.port())
    }
}

impl FromStr for SocketPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const WHAT: &str = "socket pattern";
        let (transport, rest) = if let Some(r) = s.strip_prefix("tcp://") {
            (Transport::Tcp, r)
        } else if let Some(r) = s.strip_prefix("udp://") {
            (Transport::Udp, r)
        } else {
            let mut e = perr(s, WHAT, "expected `tcp://` or `udp://`");
            e.hint = Some("write e.g. `tcp://127.0.0.1:5432`".into());
            return Err(e);
        };
        let (host, port) = split_host_port(rest, s, WHAT)?;
        let host = HostPattern::parse(host, WHAT)?;
        if !host.is_address() {
            let mut e = perr(s, WHAT, "sockets connect to addresses, not names");
            e.hint = Some(format!(
                "use an IP address or CIDR range; grant names under `http:`, or add `{host}` to `lookup:` and grant the addresses it resolves to"
            ));
            return Err(e);
        }
        let port = port.ok_or_else(|| {
            let mut e = perr(s, WHAT, "a socket pattern needs a port");
            e.hint = Some(format!(
                "write `{s}:PORT`, a range `{s}:8000-8999`, or `{s}:*`"
            ));
            e
        })?;
        let port = PortPattern::parse(port, s, WHAT)?;
        Ok(Self {
            transport,
            host,
            port,
        })
    }
}

impl fmt::Display for SocketPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.transport {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// A DNS name pattern for `lookup:`: an exact name or `*.suffix`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamePattern(HostPattern);

impl NamePattern {
    /// Does `name` match?
    pub fn matches(&self, name: &str) -> bool {
        self.0.matches_name(name)
    }
}

impl FromStr for NamePattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match HostPattern::parse(s, "name pattern")? {
            h @ (HostPattern::Name(_) | HostPattern::Subdomain(_)) => Ok(Self(h)),
            _ => Err(perr(
                s,
                "name pattern",
                "expected a DNS name or `*.suffix`; addresses need no lookup",
            )),
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// HTTP schemes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpScheme {
    /// `http://`, default port 80.
    Http,
    /// `https://`, default port 443.
    Https,
}

impl HttpScheme {
    /// The scheme's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    /// The scheme's default port.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

/// An outbound HTTP grant's URL part: `scheme://host[:port][/path-prefix]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UrlPattern {
    scheme: HttpScheme,
    host: HostPattern,
    port: PortPattern,
    path: String,
}

impl UrlPattern {
    /// The host pattern.
    pub fn host(&self) -> &HostPattern {
        &self.host
    }

    /// The path prefix (`/` for any path).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Does a request to `scheme://host:port/path` match? `host` is the name or address in
    /// the URL's authority.
    pub fn matches(&self, scheme: HttpScheme, host: &str, port: u16, path: &str) -> bool {
        scheme == self.scheme
            && self.port.matches(port)
            && self.host.matches_name(host)
            && path_has_prefix(path, &self.path)
    }
}

/// Path prefix matching on whole segments when the prefix ends in `/`, and on the exact path
/// or a following `/` otherwise, so `/repos` matches `/repos` and `/repos/x`, not `/reposx`.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => {
            prefix.ends_with('/')
                || rest.is_empty()
                || rest.starts_with('/')
                || rest.starts_with('?')
        }
        None => false,
    }
}

impl FromStr for UrlPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const WHAT: &str = "HTTP pattern";
        let (scheme, rest) = if let Some(r) = s.strip_prefix("https://") {
            (HttpScheme::Https, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (HttpScheme::Http, r)
        } else {
            let mut e = perr(s, WHAT, "expected `http://` or `https://`");
            e.hint = Some("write e.g. `https://api.example.com`".into());
            return Err(e);
        };
        let (authority, path) = match rest.find('/') {
            // A `/` inside brackets or a CIDR belongs to the host.
            Some(i) if !rest[..i].contains('[') && !looks_like_cidr(rest) => {
                (&rest[..i], &rest[i..])
            }
            _ => match rest.find("]/") {
                Some(i) => (&rest[..=i], &rest[i + 1..]),
                None => cidr_split(rest),
            },
        };
        if path.contains(['?', '#', '*']) {
            return Err(perr(
                s,
                WHAT,
                "the path is a plain prefix: no `?`, `#` or `*`",
            ));
        }
        let (host, port) = split_host_port(authority, s, WHAT)?;
        let host = HostPattern::parse(host, WHAT)?;
        let port = match port {
            None => PortPattern::Range(scheme.default_port(), scheme.default_port()),
            Some(p) => PortPattern::parse(p, s, WHAT)?,
        };
        let path = if path.is_empty() {
            "/".to_owned()
        } else {
            path.to_owned()
        };
        Ok(Self {
            scheme,
            host,
            port,
            path,
        })
    }
}

/// For `http://10.0.0.0/8:8080/x`: the CIDR's `/8` is part of the host.
fn looks_like_cidr(rest: &str) -> bool {
    let head = rest.split(':').next().unwrap_or(rest);
    head.split_once('/').is_some_and(|(a, bits)| {
        a.parse::<IpAddr>().is_ok() && bits.bytes().all(|b| b.is_ascii_digit()) && !bits.is_empty()
    })
}

fn cidr_split(rest: &str) -> (&str, &str) {
    if looks_like_cidr(rest) {
        // Skip the CIDR's own `/bits`, then split at the next `/`.
        let first = rest.find('/').unwrap_or(rest.len());
        match rest[first + 1..].find('/') {
            Some(j) => rest.split_at(first + 1 + j),
            None => (rest, ""),
        }
    } else {
        (rest, "")
    }
}

impl fmt::Display for UrlPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
        if self.port != PortPattern::Range(self.scheme.default_port(), self.scheme.default_port()) {
            write!(f, ":{}", self.port)?;
        }
        if self.path != "/" {
            f.write_str(&self.path)?;
        }
        Ok(())
    }
}

/// The IPv4 address embedded in an IPv6 address by NAT64 (`64:ff9b::/96`, `64:ff9b:1::/48`),
/// 6to4 (`2002::/16`) or the deprecated IPv4-compatible form (`::a.b.c.d`), if any.
fn embedded_v4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let s = v6.segments();
    let o = v6.octets();
    let from = |a: u8, b: u8, c: u8, d: u8| Some(std::net::Ipv4Addr::new(a, b, c, d));
    match s {
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => from(o[12], o[13], o[14], o[15]),
        [0x64, 0xff9b, 1, ..] => from(o[12], o[13], o[14], o[15]),
        [0x2002, ..] => from(o[2], o[3], o[4], o[5]),
        [0, 0, 0, 0, 0, 0, _, _] if s[6] != 0 || s[7] > 1 => from(o[12], o[13], o[14], o[15]),
        _ => None,
    }
}

/// Is `ip` anything but a global unicast address? Loopback, private, link-local (which holds
/// the cloud metadata address 169.254.169.254), shared (CGNAT), benchmarking, reserved,
/// unspecified, unique-local (which holds `fd00:ec2::254`), site-local, Alibaba's metadata
/// address 100.100.100.200, and IPv6 addresses that embed such an IPv4 address (NAT64, 6to4,
/// IPv4-compatible). These are never reached through an HTTP grant by name (the SSRF guard).
pub fn is_internal(ip: IpAddr) -> bool {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || a == 0 // 0.0.0.0/8
                || (a == 100 && (64..128).contains(&b)) // 100.64.0.0/10, holds 100.100.100.200
                || (a == 192 && b == 0 && c == 0) // 192.0.0.0/24
                || (a == 198 && (b == 18 || b == 19)) // 198.18.0.0/15
                || a >= 240 // 240.0.0.0/4 and broadcast
                || v4.is_multicast()
        }
        IpAddr::V6(v6) => {
            let seg0 = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg0 & 0xfe00) == 0xfc00 // fc00::/7
                || (seg0 & 0xffc0) == 0xfe80 // fe80::/10
                || (seg0 & 0xffc0) == 0xfec0 // fec0::/10 (site-local)
                || embedded_v4(v6).is_some_and(|v4| is_internal(IpAddr::V4(v4)))
        }
    }
}

#[cfg(test)]
mod tests;
