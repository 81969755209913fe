//! The client address of a request: the TCP peer, or, when the peer is one
//! of `--trusted-proxies`, the address the proxy chain reports in
//! `Forwarded` (RFC 7239, `for=`) or `X-Forwarded-For`.
//!
//! Anyone can send those headers, so they are only believed from a trusted
//! peer. The chain is read right to left (each proxy appends the address it
//! heard from) and the first address that is not itself a trusted proxy is
//! the client; everything left of it was written by the client and could be
//! anything. A header that cannot be read (not UTF-8, a hop that is not an
//! address, `for=unknown`, an obfuscated `_name`) gives the peer address:
//! a wrong guess would let one client take another's per-IP slots.
//!
//! Pure: no I/O, no state. Header sizes are bounded by hyper's limits, so
//! walking a chain is bounded too.

use std::net::{IpAddr, Ipv6Addr};

use axum::http::header::{HeaderMap, FORWARDED};
use ipnet::IpNet;

/// The non-standard header most proxies (nginx, AWS ALB, …) append to.
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The client address of a request from `peer` with `headers`, believing
/// forwarding headers only when `peer` is inside one of `trusted`. A
/// `Forwarded` header wins over `X-Forwarded-For` when both are present.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops = if headers.contains_key(FORWARDED) {
        forwarded_hops(headers)
    } else if headers.contains_key(X_FORWARDED_FOR) {
        x_forwarded_for_hops(headers)
    } else {
        return peer;
    };
    let Some(hops) = hops else {
        return peer;
    };
    // Right to left; if every hop is trusted, the left-most is the client.
    let mut client = peer;
    for hop in hops.iter().rev() {
        client = *hop;
        if !is_trusted(hop) {
            break;
        }
    }
    client
}

/// The addresses of every `X-Forwarded-For` line, in order (`None`: one
/// cannot be read).
fn x_forwarded_for_hops(headers: &HeaderMap) -> Option<Vec<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all(X_FORWARDED_FOR) {
        for hop in value.to_str().ok()?.split(',') {
            hops.push(parse_node(hop.trim())?);
        }
    }
    Some(hops)
}

/// The `for=` addresses of every `Forwarded` element, in order (`None`: an
/// element without a readable `for=`).
fn forwarded_hops(headers: &HeaderMap) -> Option<Vec<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all(FORWARDED) {
        for element in split_outside_quotes(value.to_str().ok()?, ',') {
            let mut found = None;
            for pair in split_outside_quotes(element, ';') {
                let (key, value) = pair.trim().split_once('=')?;
                if key.trim().eq_ignore_ascii_case("for") {
                    found = Some(parse_node(&unquote(value.trim())?)?);
                }
            }
            hops.push(found?);
        }
    }
    Some(hops)
}

/// `s` split at `sep` where `sep` is not inside a quoted string.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// A token, or a quoted string without its quotes and escapes (`None`: an
/// unterminated quote).
fn unquote(value: &str) -> Option<String> {
    let Some(inner) = value.strip_prefix('"') else {
        return Some(value.to_owned());
    };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next()? } else { c });
    }
    Some(out)
}

/// A node of either header: `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]`,
/// `[2001:db8::1]:4711`, or a bare `2001:db8::1` (common in X-Forwarded-For).
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Some(rest) = node.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = ip.parse().ok()?;
        if !after.is_empty() {
            is_port(after.strip_prefix(':')?).then_some(())?;
        }
        return Some(IpAddr::V6(ip).to_canonical());
    }
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    let (ip, port) = node.rsplit_once(':')?;
    let ip: std::net::Ipv4Addr = ip.parse().ok()?;
    is_port(port).then_some(IpAddr::V4(ip))
}

/// A port number, or an obfuscated port (`_abc`, RFC 7239 §6.3).
fn is_port(port: &str) -> bool {
    port.parse::<u16>().is_ok()
        || port.strip_prefix('_').is_some_and(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("cidr")).collect()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().expect("header value"));
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    const PROXY: &str = "10.0.0.5";

    fn resolve(pairs: &[(&'static str, &str)]) -> IpAddr {
        client_ip(ip(PROXY), &headers(pairs), &nets(&["10.0.0.0/8"]))
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let h = headers(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=1.2.3.4")]);
        assert_eq!(
            client_ip(ip("192.0.2.9"), &h, &nets(&["10.0.0.0/8"])),
            ip("192.0.2.9")
        );
        assert_eq!(
            client_ip(ip(PROXY), &h, &[]),
            ip(PROXY),
            "nothing trusted by default"
        );
    }

    #[test]
    fn a_trusted_peer_without_headers_is_the_client() {
        assert_eq!(resolve(&[]), ip(PROXY));
    }

    #[test]
    fn x_forwarded_for_gives_the_right_most_untrusted_hop() {
        assert_eq!(
            resolve(&[("x-forwarded-for", "203.0.113.7")]),
            ip("203.0.113.7")
        );
        // The client wrote 6.6.6.6 itself; 203.0.113.7 reached a proxy of ours.
        let chain = [("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.1.1.1")];
        assert_eq!(resolve(&chain), ip("203.0.113.7"));
        // Several lines are one list, in order.
        let lines = [
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.7,10.1.1.1"),
        ];
        assert_eq!(resolve(&lines), ip("203.0.113.7"));
        // Every hop trusted: the left-most.
        assert_eq!(
            resolve(&[("x-forwarded-for", "10.2.2.2, 10.1.1.1")]),
            ip("10.2.2.2")
        );
        // Ports and IPv6, bracketed or bare.
        let ports = [("x-forwarded-for", "[2001:db8::1]:443, 198.51.100.2:80")];
        assert_eq!(resolve(&ports), ip("198.51.100.2"));
        assert_eq!(
            resolve(&[("x-forwarded-for", "2001:db8::1")]),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn forwarded_gives_the_right_most_untrusted_for() {
        let h = [("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43")];
        assert_eq!(resolve(&h), ip("192.0.2.60"));
        let v6 = [(
            "forwarded",
            r#"for="[2001:db8:cafe::17]:4711", For=10.1.1.1"#,
        )];
        assert_eq!(resolve(&v6), ip("2001:db8:cafe::17"));
        let quoted = [("forwarded", r#"for="198.51.100.17:8080";host="a,b;c""#)];
        assert_eq!(resolve(&quoted), ip("198.51.100.17"));
        let lines = [
            ("forwarded", "for=6.6.6.6"),
            ("forwarded", r#"for="[2001:db8::2]""#),
        ];
        assert_eq!(resolve(&lines), ip("2001:db8::2"));
        // Forwarded wins over X-Forwarded-For.
        let both = [
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=192.0.2.1"),
        ];
        assert_eq!(resolve(&both), ip("192.0.2.1"));
    }

    #[test]
    fn malformed_headers_give_the_peer() {
        for bad in [
            ("x-forwarded-for", ""),
            ("x-forwarded-for", "203.0.113.7,,"),
            ("x-forwarded-for", "not-an-ip"),
            ("x-forwarded-for", "203.0.113.7:99999"),
            ("x-forwarded-for", "[2001:db8::1"),
            ("forwarded", "for=unknown"),
            ("forwarded", "for=_hidden"),
            ("forwarded", "proto=https"),
            ("forwarded", "for"),
            ("forwarded", r#"for="[2001:db8::1]:80"#),
            ("forwarded", "for=2001:db8::1:80:x"),
            ("forwarded", "for=192.0.2.1, garbage"),
        ] {
            assert_eq!(resolve(&[bad]), ip(PROXY), "{bad:?}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            axum::http::HeaderValue::from_bytes(b"\xff1.2.3.4").expect("opaque bytes"),
        );
        assert_eq!(client_ip(ip(PROXY), &h, &nets(&["10.0.0.0/8"])), ip(PROXY));
    }

    #[test]
    fn ipv4_mapped_peers_and_hops_are_plain_ipv4() {
        let h = headers(&[("x-forwarded-for", "::ffff:203.0.113.7")]);
        let got = client_ip(ip("::ffff:10.0.0.5"), &h, &nets(&["10.0.0.0/8"]));
        assert_eq!(got, ip("203.0.113.7"));
    }
}
