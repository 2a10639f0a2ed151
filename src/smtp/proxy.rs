//! The PROXY protocol header (HAProxy's versions 1 and 2) that a TCP load balancer sends
//! before the client's bytes, saying who the client is. Parsing only; the listener reads the
//! bytes (exactly the header's, so nothing of the session is consumed).
//!
//! Version 1 is one text line, `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`, at most 107
//! bytes. Version 2 is a 16-byte binary prefix (a 12-byte signature, version and command,
//! family, length) followed by the addresses and optional TLVs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The version 2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 line, CRLF included.
pub const V1_MAX: usize = 107;
/// The longest version 2 header this relay takes (addresses plus TLVs).
pub const V2_MAX_BODY: usize = 1024;

/// What the balancer said about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A client's connection, relayed.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The balancer's own connection (a health check: v2 `LOCAL`, v1 `UNKNOWN`): the
    /// connection's own address stands.
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY protocol header (the connection did not start with one)")]
    Missing,
    #[error("bad PROXY protocol v1 header: {0}")]
    V1(&'static str),
    #[error("bad PROXY protocol v2 header: {0}")]
    V2(&'static str),
}

/// Which version the first five bytes announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

pub fn version(start: &[u8; 5]) -> Result<Version, ProxyError> {
    if start == b"PROXY" {
        Ok(Version::V1)
    } else if start[..] == V2_SIGNATURE[..5] {
        Ok(Version::V2)
    } else {
        Err(ProxyError::Missing)
    }
}

/// Parses a whole version 1 line, CRLF included.
pub fn parse_v1(line: &[u8]) -> Result<Header, ProxyError> {
    let bad = ProxyError::V1;
    let line = line
        .strip_suffix(b"\r\n")
        .ok_or(bad("the line does not end with CRLF"))?;
    let line = std::str::from_utf8(line).map_err(|_| bad("not ASCII"))?;
    let mut fields = line.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(bad("it does not start with \"PROXY \""));
    }
    let family = fields.next().ok_or(bad("no protocol family"))?;
    if family == "UNKNOWN" {
        // The rest of the line is to be ignored.
        return Ok(Header::Local);
    }
    let mut next = || fields.next().ok_or(bad("too few fields"));
    let (source, destination, sport, dport) = (next()?, next()?, next()?, next()?);
    if fields.next().is_some() {
        return Err(bad("too many fields"));
    }
    let ip = |text: &str| -> Result<IpAddr, ProxyError> {
        match family {
            "TCP4" => text
                .parse::<Ipv4Addr>()
                .map(IpAddr::V4)
                .map_err(|_| bad("not an IPv4 address")),
            "TCP6" => text
                .parse::<Ipv6Addr>()
                .map(IpAddr::V6)
                .map_err(|_| bad("not an IPv6 address")),
            _ => Err(bad("the family is not TCP4, TCP6 or UNKNOWN")),
        }
    };
    let port = |text: &str| -> Result<u16, ProxyError> {
        // Decimal without leading zeros or signs, as the specification writes them.
        if text.is_empty() || (text.len() > 1 && text.starts_with('0')) {
            return Err(bad("not a port number"));
        }
        text.parse().map_err(|_| bad("not a port number"))
    };
    Ok(Header::Proxied {
        source: SocketAddr::new(ip(source)?, port(sport)?),
        destination: SocketAddr::new(ip(destination)?, port(dport)?),
    })
}

/// The length of the version 2 body that follows the 16-byte prefix.
pub fn v2_body_len(prefix: &[u8; 16]) -> Result<usize, ProxyError> {
    if prefix[..12] != V2_SIGNATURE {
        return Err(ProxyError::V2("wrong signature"));
    }
    if prefix[12] >> 4 != 2 {
        return Err(ProxyError::V2("not version 2"));
    }
    let len = usize::from(u16::from_be_bytes([prefix[14], prefix[15]]));
    if len > V2_MAX_BODY {
        return Err(ProxyError::V2("longer than this relay takes"));
    }
    Ok(len)
}

/// Parses a version 2 header: the prefix and the body [`v2_body_len`] announced.
pub fn parse_v2(prefix: &[u8; 16], body: &[u8]) -> Result<Header, ProxyError> {
    let bad = ProxyError::V2;
    let len = v2_body_len(prefix)?;
    if body.len() != len {
        return Err(bad("the body is not the announced length"));
    }
    match prefix[12] & 0x0f {
        0x0 => return Ok(Header::Local),
        0x1 => {}
        _ => return Err(bad("unknown command")),
    }
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    match prefix[13] {
        // TCP over IPv4: 4 + 4 + 2 + 2 bytes, then TLVs (ignored).
        0x11 => {
            if body.len() < 12 {
                return Err(bad("too short for IPv4 addresses"));
            }
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    body[at],
                    body[at + 1],
                    body[at + 2],
                    body[at + 3],
                ))
            };
            Ok(Header::Proxied {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            })
        }
        // TCP over IPv6: 16 + 16 + 2 + 2 bytes.
        0x21 => {
            if body.len() < 36 {
                return Err(bad("too short for IPv6 addresses"));
            }
            let ip = |at: usize| {
                let octets: [u8; 16] = body[at..at + 16].try_into().expect("16 bytes");
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            Ok(Header::Proxied {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            })
        }
        // UNSPEC with PROXY: the balancer does not know; keep the connection's address.
        0x00 => Ok(Header::Local),
        _ => Err(bad("not TCP over IPv4 or IPv6")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> ([u8; 16], Vec<u8>) {
        let mut prefix = [0u8; 16];
        prefix[..12].copy_from_slice(&V2_SIGNATURE);
        prefix[12] = 0x20 | command;
        prefix[13] = family;
        prefix[14..].copy_from_slice(&(body.len() as u16).to_be_bytes());
        (prefix, body.to_vec())
    }

    #[test]
    fn version_1_lines() {
        assert_eq!(
            parse_v1(b"PROXY TCP4 192.0.2.7 198.51.100.1 51000 25\r\n"),
            Ok(Header::Proxied {
                source: "192.0.2.7:51000".parse().unwrap(),
                destination: "198.51.100.1:25".parse().unwrap(),
            })
        );
        assert_eq!(
            parse_v1(b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 587\r\n"),
            Ok(Header::Proxied {
                source: "[2001:db8::7]:51000".parse().unwrap(),
                destination: "[2001:db8::1]:587".parse().unwrap(),
            })
        );
        assert_eq!(parse_v1(b"PROXY UNKNOWN whatever\r\n"), Ok(Header::Local));
        for bad in [
            &b"PROXY TCP4 192.0.2.7 198.51.100.1 51000 25\n"[..],
            b"PROXY TCP4 192.0.2.7 198.51.100.1 51000\r\n",
            b"PROXY TCP4 2001:db8::7 198.51.100.1 51000 25\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 051000 25\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 70000 25\r\n",
            b"PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2 3\r\n",
        ] {
            assert!(parse_v1(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn version_2_headers() {
        let mut body = vec![192, 0, 2, 7, 198, 51, 100, 1];
        body.extend_from_slice(&51000u16.to_be_bytes());
        body.extend_from_slice(&25u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0x00, 0x01, 0xff]); // a TLV, ignored
        let (prefix, body) = v2(0x1, 0x11, &body);
        assert_eq!(v2_body_len(&prefix), Ok(body.len()));
        assert_eq!(
            parse_v2(&prefix, &body),
            Ok(Header::Proxied {
                source: "192.0.2.7:51000".parse().unwrap(),
                destination: "198.51.100.1:25".parse().unwrap(),
            })
        );
        let (prefix, body) = v2(0x0, 0x00, &[]);
        assert_eq!(parse_v2(&prefix, &body), Ok(Header::Local));
        let (prefix, body) = v2(0x1, 0x11, &[1, 2, 3]);
        assert!(parse_v2(&prefix, &body).is_err());
        let (mut prefix, body) = v2(0x1, 0x11, &[0; 12]);
        prefix[0] = b'X';
        assert_eq!(
            parse_v2(&prefix, &body),
            Err(ProxyError::V2("wrong signature"))
        );
        assert_eq!(version(b"EHLO "), Err(ProxyError::Missing));
        assert_eq!(version(b"PROXY"), Ok(Version::V1));
        assert_eq!(version(b"\r\n\r\n\0"), Ok(Version::V2));
    }
}
