//! Unit tests of the patterns: parsing, display round trips, matching.
use super::*;

fn sock(s: &str) -> SocketPattern {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

fn url(s: &str) -> UrlPattern {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn socket_patterns_match_addresses_and_ports() {
    let p = sock("tcp://10.0.0.0/8:5432");
    assert!(p.matches("10.1.2.3:5432".parse().unwrap()));
    assert!(!p.matches("10.1.2.3:5433".parse().unwrap()));
    assert!(!p.matches("11.0.0.1:5432".parse().unwrap()));
    // IPv4-mapped IPv6 is the same address.
    assert!(p.matches("[::ffff:10.0.0.1]:5432".parse().unwrap()));
    let r = sock("tcp://127.0.0.1:8000-8999");
    assert!(r.matches("127.0.0.1:8500".parse().unwrap()));
    assert!(!r.matches("127.0.0.1:9000".parse().unwrap()));
    assert!(!r.matches("[::1]:8500".parse().unwrap()));
    let v6 = sock("tcp://[::1]:80");
    assert!(v6.matches("[::1]:80".parse().unwrap()));
    assert!(sock("udp://*:*").matches("8.8.8.8:53".parse().unwrap()));
}

#[test]
fn socket_pattern_errors_explain() {
    let e = "tcp://db.internal:5432"
        .parse::<SocketPattern>()
        .unwrap_err();
    assert!(e.reason.contains("not names"), "{e}");
    assert!(
        "tcp://1.2.3.4"
            .parse::<SocketPattern>()
            .unwrap_err()
            .reason
            .contains("needs a port")
    );
    assert!("tcp://1.2.3.4:70000".parse::<SocketPattern>().is_err());
    assert!("tcp://1.2.3.4:9-1".parse::<SocketPattern>().is_err());
    assert!(
        "tcp://::1:80"
            .parse::<SocketPattern>()
            .unwrap_err()
            .reason
            .contains("brackets")
    );
    assert_eq!(
        "tcp://10.0.0.1/8:1"
            .parse::<SocketPattern>()
            .unwrap_err()
            .hint
            .as_deref(),
        Some("write `10.0.0.0/8`")
    );
    assert!("ftp://1.2.3.4:1".parse::<SocketPattern>().is_err());
}

#[test]
fn subdomain_wildcard_is_one_label_and_never_the_bare_suffix() {
    let u = url("https://*.github.com/repos/");
    assert!(u.matches(HttpScheme::Https, "api.github.com", 443, "/repos/x"));
    assert!(u.matches(HttpScheme::Https, "API.GitHub.com", 443, "/repos/x"));
    assert!(!u.matches(HttpScheme::Https, "github.com", 443, "/repos/x"));
    assert!(!u.matches(HttpScheme::Https, "a.b.github.com", 443, "/repos/x"));
    assert!(!u.matches(HttpScheme::Https, "evilgithub.com", 443, "/repos/x"));
    assert!(!u.matches(HttpScheme::Https, "api.github.com", 443, "/user"));
    assert!(!u.matches(HttpScheme::Http, "api.github.com", 443, "/repos/x"));
    assert!(!u.matches(HttpScheme::Https, "api.github.com", 8443, "/repos/x"));
}

#[test]
fn path_prefixes_respect_segments() {
    let u = url("http://example.com/repos");
    assert!(u.matches(HttpScheme::Http, "example.com", 80, "/repos"));
    assert!(u.matches(HttpScheme::Http, "example.com", 80, "/repos/1"));
    assert!(!u.matches(HttpScheme::Http, "example.com", 80, "/reposx"));
    assert!(url("http://example.com").matches(HttpScheme::Http, "example.com", 80, "/anything"));
}

#[test]
fn display_round_trips() {
    for s in [
        "tcp://10.0.0.0/8:5432",
        "tcp://127.0.0.1:8000-8999",
        "udp://*:*",
        "tcp://[::1]:80",
        "tcp://[fc00::/7]:1-2",
    ] {
        assert_eq!(sock(s).to_string(), s);
        assert_eq!(sock(&sock(s).to_string()), sock(s));
    }
    for s in [
        "https://api.example.com",
        "https://*.github.com/repos/",
        "http://127.0.0.1:8080/x",
        "http://10.0.0.0/8:8080/api",
        "http://[::1]:8080",
        "https://*:*",
    ] {
        assert_eq!(url(s).to_string(), s, "{s}");
    }
}

#[test]
fn internal_addresses() {
    for a in [
        "127.0.0.1",
        "10.1.1.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "::1",
        "fc00::1",
        "fe80::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "0.1.2.3",
        "100.64.0.1",
        "100.100.100.200",
        "192.0.0.8",
        "198.18.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "64:ff9b::a00:1",
        "64:ff9b:1::7f00:1",
        "2002:7f00:1::",
        "::127.0.0.1",
        "fec0::1",
        "fd00:ec2::254",
        "ff02::1",
        "224.0.0.1",
    ] {
        assert!(is_internal(a.parse().unwrap()), "{a}");
    }
    for a in [
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700::1111",
        "172.32.0.1",
        "64:ff9b::808:808",
        "2002:808:808::",
        "100.128.0.1",
    ] {
        assert!(!is_internal(a.parse().unwrap()), "{a}");
    }
}
