//! Little-endian integers in byte buffers: the one set of helpers that the index's on-disk
//! formats (the index, [`format`](super::format), and the seek tables,
//! [`seek::codec`](super::seek::codec)), the gzip and zstd headers the seek builder reads,
//! and the runner's cache of compiled seccomp programs take their fields with, each at the
//! width its spec names.
//!
//! The `*_at` readers take bytes already checked to be long enough (a validated header, a
//! record inside a checked section) and, like slice indexing, panic otherwise; the `get_*`
//! readers are for bytes not checked yet and give `None` past the end. [`PutLe`] appends to
//! a buffer being written, [`set_u32`] overwrites a field in place (a checksum).

/// The `N` bytes at `at`, or None past the end.
fn get_array<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..)?.first_chunk().copied()
}

/// The `N` bytes at `at`, which the caller has checked are there.
fn array_at<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut v = [0u8; N];
    v.copy_from_slice(&b[at..at + N]);
    v
}

pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(array_at(b, at))
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(array_at(b, at))
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(array_at(b, at))
}

pub(crate) fn get_u32(b: &[u8], at: usize) -> Option<u32> {
    get_array(b, at).map(u32::from_le_bytes)
}

/// An unsigned integer `width` bytes wide (at most 8) at `at`: for fields whose width the
/// data chooses. None past the end, or when wider than a u64.
pub(crate) fn get_uint(b: &[u8], at: usize, width: usize) -> Option<u64> {
    let mut v = [0u8; 8];
    v.get_mut(..width)?
        .copy_from_slice(b.get(at..at.checked_add(width)?)?);
    Some(u64::from_le_bytes(v))
}

/// Overwrites the u32 at `at`, which the caller has checked is inside `b`.
pub(crate) fn set_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Appending fields to a buffer being written; the method names the width, so a value of
/// another type does not compile.
pub(crate) trait PutLe {
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    fn put_i64(&mut self, v: i64);
}

impl PutLe for Vec<u8> {
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_i64(&mut self, v: i64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_it_writes() {
        let mut b = Vec::new();
        b.put_u16(0x0102);
        b.put_u32(0x0304_0506);
        b.put_u64(0x0708_090a_0b0c_0d0e);
        b.put_i64(-2);
        assert_eq!(&b[..6], &[0x02, 0x01, 0x06, 0x05, 0x04, 0x03]);
        assert_eq!(u16_at(&b, 0), 0x0102);
        assert_eq!(u32_at(&b, 2), 0x0304_0506);
        assert_eq!(u64_at(&b, 6), 0x0708_090a_0b0c_0d0e);
        assert_eq!(u64_at(&b, 14) as i64, -2);
        assert_eq!(get_u32(&b, 2), Some(0x0304_0506));
        assert_eq!(get_u32(&b, b.len() - 3), None);
        assert_eq!(get_u32(&b, usize::MAX), None);
        assert_eq!(get_uint(&b, 0, 2), Some(0x0102));
        assert_eq!(get_uint(&b, 6, 8), Some(0x0708_090a_0b0c_0d0e));
        assert_eq!(get_uint(&b, 0, 0), Some(0));
        assert_eq!(get_uint(&b, 0, 9), None);
        assert_eq!(get_uint(&b, b.len() - 1, 2), None);
        assert_eq!(get_uint(&b, usize::MAX, 2), None);
        set_u32(&mut b, 2, 7);
        assert_eq!(u32_at(&b, 2), 7);
    }
}
