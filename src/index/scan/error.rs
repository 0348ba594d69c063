//! Why an archive could not be scanned: a [`ScanError`], one variant per failure site, each
//! naming the byte offset (and, for a member's headers, the member) where the scan stopped.
//! A member whose headers say something impossible gives [`ScanError::BadEntry`], whose
//! [`EntryError`] says what.

use std::io;

use super::{MAX_META_LEN, MAX_SPARSE_SEGMENTS};

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("I/O error at byte {offset}: {cause}")]
    Io { offset: u64, cause: io::Error },
    #[error("archive is truncated: {what} at byte {offset} ends early")]
    Truncated { what: String, offset: u64 },
    #[error("{0}")]
    NotTar(String),
    #[error("corrupt tar header at byte {offset}: end of archive right after an extension header")]
    EndAfterExtension { offset: u64 },
    #[error("corrupt tar header at byte {offset}: header checksum does not match")]
    HeaderChecksum { offset: u64 },
    #[error("entry '{name}' at byte {offset}: {reason}")]
    BadEntry {
        name: String,
        offset: u64,
        reason: EntryError,
    },
}

/// What is wrong with one member's headers (its own, or the extension headers before it): the
/// reason a [`ScanError::BadEntry`] gives after the member's name and offset.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("multi-volume archives are not supported")]
    MultiVolume,
    #[error("size overflows")]
    SizeOverflow,
    #[error("extension headers of one member exceed the {MAX_META_LEN}-byte limit")]
    ExtensionBudget,
    #[error("extension record of {size} bytes exceeds the {MAX_META_LEN}-byte limit")]
    ExtensionRecord { size: u64 },
    #[error("PAX record without a length")]
    PaxNoLength,
    #[error("PAX record with a bad length")]
    PaxBadLength,
    #[error("PAX record length {len} does not fit its data")]
    PaxLength { len: usize },
    #[error("PAX record without '='")]
    PaxNoEquals,
    #[error("PAX {key} is not a number: {value:?}")]
    PaxNumber { key: String, value: String },
    #[error("PAX mtime {value:?} is not a time")]
    PaxTime { value: String },
    #[error("base-256 field too long")]
    Base256Long,
    #[error("base-256 number overflows")]
    Base256Overflow,
    #[error("numeric field {field:?} is not octal")]
    NotOctal { field: String },
    #[error("numeric field overflows")]
    OctalOverflow,
    #[error("numeric field is negative ({value})")]
    Negative { value: i64 },
    #[error("{what} {value} does not fit in 32 bits")]
    Over32Bits { what: &'static str, value: u64 },
    #[error("sparse file without {key}")]
    SparseNoSize { key: String },
    #[error("sparse segment overflows")]
    SparseSegmentOverflow,
    #[error("sparse map is out of order or beyond the file size")]
    SparseOrder,
    #[error("sparse map overflows")]
    SparseMapOverflow,
    #[error("sparse map covers {covered} bytes but the archive stores {stored}")]
    SparseMapSize { covered: u64, stored: u64 },
    #[error("more than {MAX_SPARSE_SEGMENTS} sparse segments")]
    SparseSegments,
    #[error("sparse map has an odd number of values")]
    SparseMapOdd,
    #[error("{text:?} is not a number")]
    NotDecimal { text: String },
    #[error("sparse map runs past the entry's data")]
    SparseMapPastData,
    #[error("sparse map claims {count} segments")]
    SparseMapCount { count: u64 },
    #[error("sparse map holds something other than numbers")]
    SparseMapText,
}
