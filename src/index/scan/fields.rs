//! The text of tar header fields: numeric fields (octal, or GNU's base-256), PAX extended
//! records (`LEN KEY=VALUE\n`, values of any bytes) and PAX times. Each parser takes raw
//! bytes and hands on a value or an [`EntryError`]; none allocates beyond the member's
//! extension budget ([`MAX_META_LEN`]).

use super::{EntryError, MAX_META_LEN};

/// What one kept PAX record costs beyond its bytes (two vectors and their allocations).
const PAX_RECORD_COST: u64 = 64;

/// Parses PAX records (`LEN KEY=VALUE\n`) by their length prefix, so values may hold any
/// byte (binary xattrs hold newlines and NULs). Later keys override earlier ones.
pub(super) fn parse_pax(
    mut data: &[u8],
    out: &mut Vec<(Vec<u8>, Vec<u8>)>,
    cost: &mut u64,
) -> Result<(), EntryError> {
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break; // some writers pad the record set with NULs
        }
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or(EntryError::PaxNoLength)?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(EntryError::PaxBadLength)?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(EntryError::PaxLength { len });
        }
        let record = &data[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or(EntryError::PaxNoEquals)?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        // Every record is kept, in order (sparse 0.0 repeats its offset/numbytes pairs); a
        // lookup takes the last record of a key, which overrides earlier ones. The member's
        // extension budget bounds how many there are.
        *cost = cost.saturating_add(PAX_RECORD_COST);
        if *cost > MAX_META_LEN {
            return Err(EntryError::ExtensionBudget);
        }
        out.push((key.to_vec(), value.to_vec()));
        data = &data[len..];
    }
    Ok(())
}

pub(super) fn pax_get<'a>(pax: &'a [(Vec<u8>, Vec<u8>)], key: &[u8]) -> Option<&'a [u8]> {
    pax.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_slice())
}

pub(super) fn pax_u64(pax: &[(Vec<u8>, Vec<u8>)], key: &[u8]) -> Option<Result<u64, EntryError>> {
    pax_get(pax, key).map(|v| {
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| EntryError::PaxNumber {
                key: String::from_utf8_lossy(key).into_owned(),
                value: String::from_utf8_lossy(v).into_owned(),
            })
    })
}

/// Parses a PAX time: decimal seconds, optionally negative, with up to 9 fraction digits.
pub(super) fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = whole.parse().ok()?;
    let mut nsec: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nsec += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    if !neg {
        return Some((secs, nsec));
    }
    // -1.25 is 1.25 s before the epoch: seconds -2, nanoseconds 0.75e9.
    if nsec == 0 {
        Some((secs.checked_neg()?, 0))
    } else {
        Some((secs.checked_neg()?.checked_sub(1)?, 1_000_000_000 - nsec))
    }
}

/// Parses a numeric header field: octal text (space or NUL terminated), or base-256 when the
/// high bit of the first byte is set (GNU's encoding for large and negative values).
pub(super) fn numeric_i64(field: &[u8]) -> Result<i64, EntryError> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        // Big-endian two's complement; bit 0x40 of the first byte is the sign.
        let negative = field[0] & 0x40 != 0;
        if field.len() > 15 {
            return Err(EntryError::Base256Long);
        }
        let mut v: i128 = if negative { -1 } else { 0 };
        for (i, &b) in field.iter().enumerate() {
            let b = if i == 0 && !negative { b & 0x7f } else { b };
            v = (v << 8) | i128::from(b);
        }
        return i64::try_from(v).map_err(|_| EntryError::Base256Overflow);
    }
    // Octal digits, after optional leading spaces, up to a NUL or space.
    let mut v: i64 = 0;
    let digits = field
        .iter()
        .skip_while(|&&b| b == b' ')
        .take_while(|&&b| b != 0 && b != b' ');
    for &b in digits {
        if !(b'0'..=b'7').contains(&b) {
            return Err(EntryError::NotOctal {
                field: String::from_utf8_lossy(field).into_owned(),
            });
        }
        v = v
            .checked_mul(8)
            .and_then(|v| v.checked_add(i64::from(b - b'0')))
            .ok_or(EntryError::OctalOverflow)?;
    }
    Ok(v)
}

pub(super) fn numeric(field: &[u8]) -> Result<u64, EntryError> {
    let v = numeric_i64(field)?;
    u64::try_from(v).map_err(|_| EntryError::Negative { value: v })
}

pub(super) fn to_u32(v: u64, what: &'static str) -> Result<u32, EntryError> {
    u32::try_from(v).map_err(|_| EntryError::Over32Bits { what, value: v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_fields() {
        let cases: &[(&[u8], Result<i64, ()>)] = &[
            (b"0000644\0", Ok(0o644)),
            (b"   755 \0", Ok(0o755)),
            (b"\0\0\0\0\0\0\0\0", Ok(0)),
            (b"\x80\0\0\0\0\0\0\0\0\0\x01\x00", Ok(256)),
            (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", Ok(-1)),
            (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe", Ok(-2)),
            (b"12x4\0", Err(())),
        ];
        for (field, want) in cases {
            assert_eq!(numeric_i64(field).map_err(|_| ()), *want, "{field:?}");
        }
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"1.5"), Some((1, 500_000_000)));
        assert_eq!(
            parse_pax_time(b"981173106.123456789"),
            Some((981173106, 123456789))
        );
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"7"), Some((7, 0)));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b"1.2x"), None);
    }

    #[test]
    fn pax_records_keep_binary_values() {
        let value = b"a\nb\0c";
        let rec = [b"15 SCHILY.x=".as_slice(), value, b"\n"].concat();
        assert_eq!(rec.len(), 18);
        let rec = [b"18 SCHILY.x=".as_slice(), value, b"\n"].concat();
        let mut out = Vec::new();
        parse_pax(&rec, &mut out, &mut 0).unwrap();
        assert_eq!(out, vec![(b"SCHILY.x".to_vec(), value.to_vec())]);
        for bad in [&b"5 a=b\n"[..], b"99 a=b\n", b"x a=b\n", b"7 ab\nxx"] {
            assert!(parse_pax(bad, &mut Vec::new(), &mut 0).is_err(), "{bad:?}");
        }
    }

    /// Endless extension headers before one member cost bounded memory, then an error.
    #[test]
    fn extension_headers_are_bounded_per_member() {
        let mut records = Vec::new();
        for i in 0..300_000u32 {
            let r = format!(" c{i}=x\n");
            let n = (1..8)
                .map(|d| r.len() + d)
                .find(|n| n.to_string().len() + r.len() == *n)
                .unwrap();
            records.extend(format!("{n}{r}").into_bytes());
        }
        let mut out = Vec::new();
        let e = parse_pax(&records, &mut out, &mut 0).unwrap_err();
        assert!(matches!(e, EntryError::ExtensionBudget), "{e}");
        assert!(e.to_string().contains("exceed"), "{e}");
        assert!(
            out.len() as u64 <= MAX_META_LEN / PAX_RECORD_COST,
            "{}",
            out.len()
        );
    }
}
