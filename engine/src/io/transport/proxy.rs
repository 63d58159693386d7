//! The PROXY protocol header (HAProxy's "PROXY protocol" specification, versions 1 and 2),
//! sans-IO: a load balancer in front of the broker sends it first, so the client's address
//! survives the hop. Only on listeners configured for it (`proxy_protocol = true`): anyone
//! able to connect could otherwise claim any address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest version 1 header, CRLF included (§2.1).
const V1_MAX_BYTES: usize = 107;
/// The version 2 signature (§2.2).
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 2 header accepted (addresses and TLVs); the format allows 64 KiB.
const V2_MAX_BYTES: usize = 16 + 1024;

/// A parsed header: the client's address (`None` for `UNKNOWN` / `LOCAL`: a health check of
/// the balancer itself) and the header's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProxyHeader {
    pub(crate) source: Option<SocketAddr>,
    pub(crate) len: usize,
}

/// Parses the header at the start of `buf`: `Ok(None)` while incomplete, `Err` with a reason
/// when it is not a valid header (the connection is closed).
pub(crate) fn parse(buf: &[u8]) -> Result<Option<ProxyHeader>, &'static str> {
    let probe = buf.len().min(V2_SIGNATURE.len());
    if buf[..probe] == V2_SIGNATURE[..probe] {
        return if probe < V2_SIGNATURE.len() { Ok(None) } else { parse_v2(buf) };
    }
    let probe = buf.len().min(6);
    if buf[..probe] == b"PROXY "[..probe] {
        return if probe < 6 { Ok(None) } else { parse_v1(buf) };
    }
    Err("no PROXY protocol header")
}

fn parse_v1(buf: &[u8]) -> Result<Option<ProxyHeader>, &'static str> {
    let Some(end) = buf.windows(2).take(V1_MAX_BYTES - 1).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX_BYTES { Err("PROXY v1 line too long") } else { Ok(None) };
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| "PROXY v1 line is not ASCII")?;
    let fields: Vec<&str> = line.split(' ').collect();
    let source = match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => None,
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let src: IpAddr = src.parse().map_err(|_| "PROXY v1 bad source address")?;
            let _: IpAddr = dst.parse().map_err(|_| "PROXY v1 bad destination address")?;
            let sport: u16 = sport.parse().map_err(|_| "PROXY v1 bad source port")?;
            let _: u16 = dport.parse().map_err(|_| "PROXY v1 bad destination port")?;
            if (*family == "TCP4") != src.is_ipv4() {
                return Err("PROXY v1 address does not match its family");
            }
            Some(SocketAddr::new(src, sport))
        }
        _ => return Err("PROXY v1 malformed line"),
    };
    Ok(Some(ProxyHeader { source, len: end + 2 }))
}

fn parse_v2(buf: &[u8]) -> Result<Option<ProxyHeader>, &'static str> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let (ver_cmd, family) = (buf[12], buf[13]);
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if ver_cmd >> 4 != 2 {
        return Err("PROXY v2 unknown version");
    }
    if 16 + len > V2_MAX_BYTES {
        return Err("PROXY v2 header too long");
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let source = match (ver_cmd & 0x0F, family) {
        // LOCAL: the balancer's own connection (health checks); the socket's address stands.
        (0, _) => None,
        // PROXY over TCP (stream) IPv4 / IPv6.
        (1, 0x11) if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Some(SocketAddr::new(ip.into(), u16::from_be_bytes([body[8], body[9]])))
        }
        (1, 0x21) if body.len() >= 36 => {
            let octets: [u8; 16] = body[..16].try_into().expect("16 bytes");
            let port = u16::from_be_bytes([body[32], body[33]]);
            Some(SocketAddr::new(Ipv6Addr::from(octets).into(), port))
        }
        // UNSPEC or another family (UDP, UNIX): no address we can use.
        (1, _) => None,
        _ => return Err("PROXY v2 unknown command"),
    };
    Ok(Some(ProxyHeader { source, len: 16 + len }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.extend([0x20 | cmd, family]);
        out.extend((body.len() as u16).to_be_bytes());
        out.extend(body);
        out
    }

    #[test]
    fn version_1() {
        let line = b"PROXY TCP4 10.1.2.3 127.0.0.1 4444 1883\r\n\x10\x0c";
        let h = parse(line).unwrap().unwrap();
        assert_eq!(h.source, Some("10.1.2.3:4444".parse().unwrap()));
        assert_eq!(&line[h.len..], b"\x10\x0c");
        let h = parse(b"PROXY TCP6 ::1 ::2 5 6\r\n").unwrap().unwrap();
        assert_eq!(h.source, Some("[::1]:5".parse().unwrap()));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap().source, None);
        for cut in 0..line.len() - 3 {
            assert_eq!(parse(&line[..cut]).unwrap(), None, "cut at {cut}");
        }
        for bad in [
            &b"PROXY TCP4 10.1.2.3 127.0.0.1 4444\r\n"[..],
            b"PROXY TCP4 ::1 ::2 5 6\r\n",
            b"PROXY TCP4 10.1.2.3 127.0.0.1 99999 1\r\n",
            b"PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n",
            b"\x10\x0c\x00\x04MQTT",
            b"GET / HTTP/1.1\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(200, b'1');
        assert!(parse(&long).is_err());
    }

    #[test]
    fn version_2() {
        let mut body = vec![10, 1, 2, 3, 127, 0, 0, 1];
        body.extend(4444u16.to_be_bytes());
        body.extend(1883u16.to_be_bytes());
        body.extend([0x04, 0x00, 0x01, 0xAA]); // a TLV, skipped
        let mut h = v2(1, 0x11, &body);
        h.extend(b"\x10\x0c");
        let got = parse(&h).unwrap().unwrap();
        assert_eq!(got.source, Some("10.1.2.3:4444".parse().unwrap()));
        assert_eq!(&h[got.len..], b"\x10\x0c");
        for cut in 0..h.len() - 2 {
            assert_eq!(parse(&h[..cut]).unwrap(), None, "cut at {cut}");
        }
        let mut six = [0u8; 36].to_vec();
        six[15] = 1;
        six[32..34].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(
            parse(&v2(1, 0x21, &six)).unwrap().unwrap().source,
            Some("[::1]:7".parse().unwrap())
        );
        assert_eq!(parse(&v2(0, 0x00, &[])).unwrap().unwrap().source, None, "LOCAL");
        assert!(parse(&v2(1, 0x11, &[1, 2, 3])).unwrap().unwrap().source.is_none());
        let mut bad = v2(1, 0x11, &body);
        bad[12] = 0x31;
        assert!(parse(&bad).is_err(), "version 3");
        let mut big = V2_SIGNATURE.to_vec();
        big.extend([0x21, 0x11, 0xFF, 0xFF]);
        assert!(parse(&big).is_err(), "too long");
    }
}
