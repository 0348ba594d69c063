//! A sparse file's map of data segments, in each of the four ways tar writes it: old GNU
//! (slots in the header and in extension blocks), PAX 0.0 (repeated offset/numbytes records),
//! PAX 0.1 (one comma-separated record) and PAX 1.0 (decimal text at the start of the data).
//! It hands on the segments, checked to be in order, inside the file, bounded by
//! [`MAX_SPARSE_SEGMENTS`], and adding up to the data the archive stores.

use super::fields::{numeric, pax_get, pax_u64};
use super::{
    BLOCK, EntryError, Input, MAX_SPARSE_SEGMENTS, ScanError, Segment, bad_header, truncated,
};

pub(super) fn sparse_real_size(pax: &[(Vec<u8>, Vec<u8>)], key: &[u8]) -> Result<u64, EntryError> {
    pax_u64(pax, key).unwrap_or_else(|| {
        Err(EntryError::SparseNoSize {
            key: String::from_utf8_lossy(key).into_owned(),
        })
    })
}

/// Segments must be in order, inside the file, and add up to the stored data.
pub(super) fn check_segments(
    segments: &[Segment],
    real_size: u64,
    stored: u64,
) -> Result<(), EntryError> {
    let mut end = 0u64;
    let mut total = 0u64;
    for s in segments {
        let s_end = s
            .offset
            .checked_add(s.len)
            .ok_or(EntryError::SparseSegmentOverflow)?;
        if s.offset < end || s_end > real_size {
            return Err(EntryError::SparseOrder);
        }
        end = s_end;
        total = total
            .checked_add(s.len)
            .ok_or(EntryError::SparseMapOverflow)?;
    }
    if total != stored {
        return Err(EntryError::SparseMapSize {
            covered: total,
            stored,
        });
    }
    Ok(())
}

pub(super) fn push_segment(
    segments: &mut Vec<Segment>,
    offset: u64,
    len: u64,
) -> Result<(), EntryError> {
    if segments.len() >= MAX_SPARSE_SEGMENTS {
        return Err(EntryError::SparseSegments);
    }
    // GNU tar ends every map with a zero-length segment at the real size: not data.
    if len > 0 {
        segments.push(Segment { offset, len });
    }
    Ok(())
}

/// Old GNU sparse: four map slots in the header, then extension blocks of 21 slots each.
pub(super) fn old_gnu_sparse<I: Input>(
    input: &mut I,
    block: &[u8; BLOCK as usize],
    offset: u64,
) -> Result<(Vec<Segment>, u64), ScanError> {
    let err = |reason: EntryError| bad_header(offset, block, reason);
    let mut segments = Vec::new();
    let mut read_slots = |slots: &[u8]| -> Result<(), EntryError> {
        for slot in slots.chunks_exact(24) {
            if slot[0] == 0 {
                break;
            }
            push_segment(
                &mut segments,
                numeric(&slot[..12])?,
                numeric(&slot[12..24])?,
            )?;
        }
        Ok(())
    };
    read_slots(&block[386..482]).map_err(err)?;
    let real = numeric(&block[483..495]).map_err(err)?;
    let mut extended = block[482] != 0;
    let mut ext = [0u8; BLOCK as usize];
    while extended {
        let at = input.position();
        let n = input.read_full(&mut ext).map_err(|source| ScanError::Io {
            offset: at,
            cause: source,
        })?;
        if n < ext.len() {
            return Err(truncated(block, offset));
        }
        read_slots(&ext[..504]).map_err(err)?;
        extended = ext[504] != 0;
    }
    Ok((segments, real))
}

/// PAX sparse 0.0 (repeated offset/numbytes keys) and 0.1 (one comma-separated map).
pub(super) fn sparse_v0_map(pax: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<Segment>, EntryError> {
    let mut numbers = Vec::new();
    if let Some(map) = pax_get(pax, b"GNU.sparse.map") {
        for n in map.split(|&b| b == b',').filter(|n| !n.is_empty()) {
            numbers.push(decimal(n)?);
        }
    } else {
        for (k, v) in pax {
            if k == b"GNU.sparse.offset" || k == b"GNU.sparse.numbytes" {
                numbers.push(decimal(v)?);
            }
        }
    }
    if numbers.len() % 2 != 0 {
        return Err(EntryError::SparseMapOdd);
    }
    let mut segments = Vec::new();
    for pair in numbers.chunks_exact(2) {
        push_segment(&mut segments, pair[0], pair[1])?;
    }
    Ok(segments)
}

pub(super) fn decimal(v: &[u8]) -> Result<u64, EntryError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| EntryError::NotDecimal {
            text: String::from_utf8_lossy(v).into_owned(),
        })
}

/// PAX sparse 1.0: the map is decimal text at the start of the data (a count, then offset and
/// length pairs, one per line), padded to a block. Returns the map and its padded length.
pub(super) fn sparse_v1_map<I: Input>(
    input: &mut I,
    size: u64,
    offset: u64,
    block: &[u8; BLOCK as usize],
) -> Result<(Vec<Segment>, u64), ScanError> {
    let err = |reason: EntryError| bad_header(offset, block, reason);
    let mut text = [0u8; BLOCK as usize];
    let mut used = 0u64; // map bytes read, whole blocks
    let mut numbers: Vec<u64> = Vec::new();
    let mut digits: Vec<u8> = Vec::new();
    let mut count: Option<u64> = None;
    loop {
        if used >= size {
            return Err(err(EntryError::SparseMapPastData));
        }
        let at = input.position();
        let n = input.read_full(&mut text).map_err(|source| ScanError::Io {
            offset: at,
            cause: source,
        })?;
        if n < text.len() {
            return Err(truncated(block, offset));
        }
        used += BLOCK;
        for &b in &text {
            if b == b'\n' {
                let v = decimal(&digits).map_err(err)?;
                digits.clear();
                match count {
                    None => {
                        if v > MAX_SPARSE_SEGMENTS as u64 {
                            return Err(err(EntryError::SparseMapCount { count: v }));
                        }
                        count = Some(v);
                    }
                    Some(_) => numbers.push(v),
                }
            } else if b.is_ascii_digit() && digits.len() < 20 {
                digits.push(b);
            } else {
                return Err(err(EntryError::SparseMapText));
            }
            if count.is_some_and(|c| numbers.len() as u64 == c * 2) {
                let mut segments = Vec::new();
                for pair in numbers.chunks_exact(2) {
                    push_segment(&mut segments, pair[0], pair[1]).map_err(err)?;
                }
                return Ok((segments, used));
            }
        }
    }
}
