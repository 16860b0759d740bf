//! postern's private X.509 extensions and the minimal DER needed to write them.
//!
//! # Object identifiers
//!
//! postern's arc is a UUID-derived OID per ITU-T X.667 / RFC 4122 §A:
//! `2.25.<UUID as one decimal integer>`, which needs no registration and cannot collide.
//! The UUID was generated once, at random (v4), for postern:
//!
//! - UUID `fc816fa0-28fd-44d3-b827-ea796b6df62d`
//! - arc  [`POSTERN_OID_ARC`] = `2.25.335637525269207384005220857582107620909`
//! - [`GRANTS_OID`] = arc `.1`: the opt-out grants a certificate carries
//! - [`SESSION_OID`] = arc `.2`: when the session this certificate continues started
//!
//! Both extensions are **non-critical**: webpki (and every RFC 5280 verifier) refuses a
//! certificate with an unknown critical extension, and a relying party that does not know
//! postern must still be able to use the certificate for plain mTLS.
//!
//! # Why certificates are re-signed here
//!
//! rcgen encodes OID arcs as `u64`, and a UUID arc is 128 bits. So rcgen writes each
//! extension under a placeholder OID of exactly the same encoded length, and
//! [`resign_with_postern_oids`] swaps in the real OID bytes inside the TBS certificate and
//! signs the TBS again with the CA key. Equal lengths mean no DER length in the TBS changes;
//! the result is checked by parsing it and verifying its signature before it is returned.

use rcgen::{CustomExtension, KeyPair, SigningKey};
use time::OffsetDateTime;

use crate::error::PkiError;

/// postern's UUID-derived OID arc (see the module docs for the UUID).
pub const POSTERN_OID_ARC: &str = "2.25.335637525269207384005220857582107620909";
/// The grants extension: a DER UTF8String holding the canonical JSON of `Vec<Grant>`.
pub const GRANTS_OID: &str = "2.25.335637525269207384005220857582107620909.1";
/// The session extension: a DER GeneralizedTime, the original issuance of the session.
pub const SESSION_OID: &str = "2.25.335637525269207384005220857582107620909.2";

/// DER content octets of [`POSTERN_OID_ARC`]: `2*40+25`, then the UUID integer in base 128.
const ARC_DER: [u8; 20] = [
    0x69, 0x83, 0xf9, 0x81, 0xb7, 0xe8, 0x85, 0x8f, 0xea, 0x93, 0xa7, 0xb8, 0x93, 0xfa, 0xcf, 0x96,
    0xdb, 0xb7, 0xec, 0x2d,
];

/// The two postern extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PosternExt {
    Grants,
    Session,
}

impl PosternExt {
    fn last_arc(self) -> u8 {
        match self {
            PosternExt::Grants => 1,
            PosternExt::Session => 2,
        }
    }

    /// The real OID's DER content octets.
    pub(crate) fn oid_der(self) -> Vec<u8> {
        let mut oid = ARC_DER.to_vec();
        oid.push(self.last_arc());
        oid
    }

    /// Placeholder arcs for rcgen: `2.25` then 19 arcs of `1`, then the last arc. It encodes
    /// to `0x69, 0x01 x 19, last`: the same length as the real OID, and no real-world OID.
    fn placeholder_arcs(self) -> Vec<u64> {
        let mut arcs = vec![2, 25];
        arcs.extend(std::iter::repeat_n(1, ARC_DER.len() - 1));
        arcs.push(u64::from(self.last_arc()));
        arcs
    }

    fn placeholder_der(self) -> Vec<u8> {
        let mut oid = vec![0x69];
        oid.extend(std::iter::repeat_n(1u8, ARC_DER.len() - 1));
        oid.push(self.last_arc());
        oid
    }

    /// A non-critical rcgen extension under the placeholder OID with `value` (a DER TLV) as
    /// its extnValue content.
    pub(crate) fn placeholder_extension(self, value: Vec<u8>) -> CustomExtension {
        let mut ext = CustomExtension::from_oid_content(&self.placeholder_arcs(), value);
        ext.set_criticality(false);
        ext
    }
}

/// Replaces postern's placeholder OIDs in `cert_der` with the real ones and re-signs the TBS
/// with `signer` (the issuing CA's key). See the module docs for why.
pub(crate) fn resign_with_postern_oids(
    cert_der: &[u8],
    exts: &[PosternExt],
    signer: &KeyPair,
) -> Result<Vec<u8>, PkiError> {
    let malformed = |reason: &str| PkiError::Certificate {
        what: "issued certificate",
        reason: reason.to_owned(),
    };
    let (cert, rest) = read_tlv(cert_der).ok_or_else(|| malformed("bad outer sequence"))?;
    if cert.tag != 0x30 || !rest.is_empty() {
        return Err(malformed("bad outer sequence"));
    }
    let (tbs, after_tbs) = read_tlv(cert.content).ok_or_else(|| malformed("bad tbs"))?;
    let (alg, _signature) =
        read_tlv(after_tbs).ok_or_else(|| malformed("bad signature algorithm"))?;

    let mut new_tbs = tbs.whole.to_vec();
    for ext in exts {
        let placeholder = tlv(0x06, &ext.placeholder_der());
        let real = tlv(0x06, &ext.oid_der());
        // Exactly one occurrence: anything else means the placeholder also appears by
        // chance (e.g. in a key) or not at all, and patching could corrupt the certificate.
        let at = find_unique(&new_tbs, &placeholder)
            .ok_or_else(|| malformed("postern extension placeholder not found exactly once"))?;
        new_tbs
            .get_mut(at..at + real.len())
            .ok_or_else(|| malformed("placeholder out of range"))?
            .copy_from_slice(&real);
    }

    let signature = signer.sign(&new_tbs)?;
    let mut bit_string = Vec::with_capacity(signature.len() + 1);
    bit_string.push(0); // no unused bits
    bit_string.extend_from_slice(&signature);
    let mut body = new_tbs;
    body.extend_from_slice(alg.whole);
    body.extend_from_slice(&tlv(0x03, &bit_string));
    Ok(tlv(0x30, &body))
}

fn find_unique(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let mut hits = haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i);
    let first = hits.next()?;
    hits.next().is_none().then_some(first)
}

/// One DER TLV: its tag, its content, and the whole encoding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv<'a> {
    pub(crate) tag: u8,
    pub(crate) content: &'a [u8],
    pub(crate) whole: &'a [u8],
}

/// Reads one DER TLV (single-byte tag, definite length) from the front of `input`.
pub(crate) fn read_tlv(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (len_bytes, rest) = rest.split_at_checked(n)?;
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    let (content, rest) = rest.split_at_checked(len)?;
    let header = input.len() - rest.len() - len;
    let whole = input.get(..header + len)?;
    Some((
        Tlv {
            tag,
            content,
            whole,
        },
        rest,
    ))
}

/// A DER TLV with a single-byte tag.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let significant = bytes.get(skip..).unwrap_or_default();
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(content);
    out
}

/// DER GeneralizedTime (`YYYYMMDDHHMMSSZ`, UTC, whole seconds) for the session extension.
pub(crate) fn generalized_time(t: OffsetDateTime) -> Vec<u8> {
    let t = crate::ca::whole_seconds(t);
    let text = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    tlv(0x18, text.as_bytes())
}

/// Parses the DER GeneralizedTime written by [`generalized_time`] (exactly that form).
pub(crate) fn parse_generalized_time(der: &[u8]) -> Option<OffsetDateTime> {
    let (t, rest) = read_tlv(der)?;
    if t.tag != 0x18 || !rest.is_empty() || t.content.len() != 15 {
        return None;
    }
    let text = std::str::from_utf8(t.content).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| digits.get(r)?.parse::<u32>().ok();
    let date = time::Date::from_calendar_date(
        i32::try_from(num(0..4)?).ok()?,
        time::Month::try_from(u8::try_from(num(4..6)?).ok()?).ok()?,
        u8::try_from(num(6..8)?).ok()?,
    )
    .ok()?;
    let clock = time::Time::from_hms(
        u8::try_from(num(8..10)?).ok()?,
        u8::try_from(num(10..12)?).ok()?,
        u8::try_from(num(12..14)?).ok()?,
    )
    .ok()?;
    Some(time::PrimitiveDateTime::new(date, clock).assume_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    /// The hard-coded DER arc is the base-128 encoding of the documented UUID.
    #[test]
    fn arc_der_encodes_the_documented_uuid() {
        let uuid: u128 = 0xfc816fa0_28fd_44d3_b827_ea796b6df62d;
        let decimal = POSTERN_OID_ARC.strip_prefix("2.25.").unwrap();
        assert_eq!(decimal, uuid.to_string());
        let mut groups = Vec::new();
        let mut n = uuid;
        loop {
            groups.push((n & 0x7f) as u8);
            n >>= 7;
            if n == 0 {
                break;
            }
        }
        groups.reverse();
        let last = groups.len() - 1;
        for g in &mut groups[..last] {
            *g |= 0x80;
        }
        let mut expected = vec![2 * 40 + 25];
        expected.extend(groups);
        assert_eq!(expected, ARC_DER);
        assert_eq!(GRANTS_OID, format!("{POSTERN_OID_ARC}.1"));
        assert_eq!(SESSION_OID, format!("{POSTERN_OID_ARC}.2"));
    }

    #[test]
    fn placeholder_has_the_real_oids_length() {
        for ext in [PosternExt::Grants, PosternExt::Session] {
            assert_eq!(ext.placeholder_der().len(), ext.oid_der().len());
        }
    }

    #[test]
    fn tlv_round_trips_short_and_long_lengths() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let content = vec![7u8; len];
            let enc = tlv(0x04, &content);
            let (t, rest) = read_tlv(&enc).unwrap();
            assert!(rest.is_empty());
            assert_eq!(
                (t.tag, t.content.len(), t.whole.len()),
                (0x04, len, enc.len())
            );
        }
        assert!(read_tlv(&[0x04, 0x05, 1, 2]).is_none());
    }

    #[test]
    fn generalized_time_round_trips() {
        let t = datetime!(2026-03-01 12:34:56.789 UTC);
        let der = generalized_time(t);
        assert_eq!(&der[2..], b"20260301123456Z");
        assert_eq!(
            parse_generalized_time(&der),
            Some(datetime!(2026-03-01 12:34:56 UTC))
        );
        assert_eq!(parse_generalized_time(&tlv(0x18, b"20261301123456Z")), None);
    }
}
