//! Network identifiers written in hex: IPv6 addresses of public hosts and hardware (MAC)
//! addresses. One pass over the colons and dashes of the text, each candidate validated by
//! parsing.

use std::net::Ipv6Addr;

use super::{PiiKind, Sink};

fn hexish(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b':' || b == b'-'
}

/// Finds IPv6 and MAC addresses. Each `:` or `-` grows to the run of hex digits and
/// separators around it; the run is tried as a MAC address, then as an IPv6 address.
pub(super) fn hex_addresses(text: &str, sink: &mut Sink<'_>) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(k) = bytes
        .get(i..)
        .and_then(|rest| rest.iter().position(|b| *b == b':' || *b == b'-'))
    {
        let at = i + k;
        let mut s = at;
        while s > 0 && bytes.get(s - 1).copied().is_some_and(hexish) {
            s -= 1;
        }
        let mut e = at;
        while bytes.get(e).copied().is_some_and(hexish) {
            e += 1;
        }
        i = e.max(at + 1);
        // Separators at the edges are punctuation ("MAC: 00:1a:...").
        let trim = |b: &u8| *b == b'-' || (*b == b':');
        while s < e && bytes.get(s).is_some_and(trim) && bytes.get(s + 1) != Some(&b':') {
            s += 1;
        }
        while e > s
            && bytes.get(e - 1).is_some_and(trim)
            && bytes.get(e.wrapping_sub(2)) != Some(&b':')
        {
            e -= 1;
        }
        if e - s < 7 {
            continue;
        }
        let before = s.checked_sub(1).and_then(|p| bytes.get(p)).copied();
        let after = bytes.get(e).copied();
        let glued = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        if glued(before)
            || glued(after)
            || after == Some(b'.') && bytes.get(e + 1).is_some_and(u8::is_ascii_digit)
        {
            continue;
        }
        let Some(candidate) = text.get(s..e) else {
            continue;
        };
        if mac_ok(candidate) || (mac_shape(candidate) && mac_cue_before(text, s)) {
            sink.claim(PiiKind::MacAddress, s, e);
        } else if ipv6_public(candidate) {
            sink.claim(PiiKind::IpAddress, s, e);
        }
    }
}

/// Hardware addresses written the Cisco way, `001a.2b3c.4d5e`: three groups of four hex
/// digits joined by dots, with at least one letter (all-digit triples are version numbers or
/// phone numbers).
pub(super) fn dotted_macs(text: &str, sink: &mut Sink<'_>) {
    let bytes = text.as_bytes();
    for (dot, _) in text.match_indices('.') {
        let Some(s) = dot.checked_sub(4) else {
            continue;
        };
        let Some(candidate) = bytes.get(s..s + 14) else {
            continue;
        };
        let shape = candidate.iter().enumerate().all(|(i, b)| {
            if i == 4 || i == 9 {
                *b == b'.'
            } else {
                b.is_ascii_hexdigit()
            }
        });
        let before = s.checked_sub(1).and_then(|p| bytes.get(p)).copied();
        let after = bytes.get(s + 14).copied();
        let glued =
            |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_');
        // A dot after it ends a sentence unless more text is glued to it.
        let continues = match after {
            Some(b'.') => bytes.get(s + 15).is_some_and(u8::is_ascii_alphanumeric),
            other => glued(other),
        };
        let lettered = candidate.iter().any(u8::is_ascii_alphabetic);
        if shape && lettered && !glued(before) && !continues {
            sink.claim(PiiKind::MacAddress, s, s + 14);
        }
    }
}

/// "MAC 00-14-22-01-23-45": a MAC word among the three words before.
fn mac_cue_before(text: &str, start: usize) -> bool {
    super::WordsBack::new(text, start)
        .take(3)
        .any(|(_, w)| super::is_any(w, &["mac", "mac-adresse", "mac-адрес", "hwaddr", "ether"]))
}

/// Six pairs of hex digits joined by the same separator, not all zero or all `ff`.
fn mac_shape(s: &str) -> bool {
    let b = s.as_bytes();
    let Some(&sep) = b.get(2) else {
        return false;
    };
    b.len() == 17
        && (sep == b':' || sep == b'-')
        && b.iter().enumerate().all(|(i, c)| {
            if i % 3 == 2 {
                *c == sep
            } else {
                c.is_ascii_hexdigit()
            }
        })
        && !s.bytes().filter(u8::is_ascii_hexdigit).all(|c| c == b'0')
        && !s
            .bytes()
            .filter(u8::is_ascii_hexdigit)
            .all(|c| c.eq_ignore_ascii_case(&b'f'))
}

/// A MAC shape; with dashes, at least one letter (six dashed pairs of decimal digits are
/// more often a code, unless a MAC word says otherwise).
fn mac_ok(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 17 {
        return false;
    }
    let Some(&sep) = b.get(2) else {
        return false;
    };
    if sep != b':' && sep != b'-' {
        return false;
    }
    let shape = b.iter().enumerate().all(|(i, c)| {
        if i % 3 == 2 {
            *c == sep
        } else {
            c.is_ascii_hexdigit()
        }
    });
    let digits: Vec<u8> = b.iter().copied().filter(u8::is_ascii_hexdigit).collect();
    let all = |d: u8| digits.iter().all(|c| c.to_ascii_lowercase() == d);
    shape && !all(b'0') && !all(b'f') && (sep == b':' || digits.iter().any(u8::is_ascii_alphabetic))
}

/// A global unicast IPv6 address (2000::/3): loopback, unspecified, link-local, unique
/// local and multicast addresses identify no host on the internet, and `a::b` in code is no
/// address at all.
fn ipv6_public(s: &str) -> bool {
    if s.matches(':').count() < 2 || s.contains('-') {
        return false;
    }
    match s.parse::<Ipv6Addr>() {
        Ok(ip) => {
            let first = ip.segments().first().copied().unwrap_or(0);
            (0x2000..0x4000).contains(&first)
        }
        Err(_) => false,
    }
}
