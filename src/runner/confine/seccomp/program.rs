//! A compiled seccomp filter: classic BPF instructions, in memory and as the bytes libseccomp
//! exports and the cache keeps. Takes those bytes (1 to BPF_MAXINSNS whole instructions, else
//! nothing); hands on a [`Program`] whose [`Program::load`] installs it on the calling thread
//! just before execve, without allocating or taking a lock.

/// Size of one `struct sock_filter` as libseccomp exports it.
pub(super) const INSN_BYTES: usize = 8;
/// The kernel rejects longer classic BPF programs (BPF_MAXINSNS).
pub(super) const MAX_INSNS: usize = libc::BPF_MAXINSNS as usize;

/// A compiled seccomp filter: classic BPF instructions, ready for seccomp(2).
#[derive(Clone)]
pub(crate) struct Program {
    filter: Vec<libc::sock_filter>,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Program({} instructions)", self.filter.len())
    }
}

impl PartialEq for Program {
    fn eq(&self, other: &Self) -> bool {
        self.to_bytes() == other.to_bytes()
    }
}

impl Eq for Program {}

impl Program {
    /// Reads instructions in `struct sock_filter` layout (native byte order), as libseccomp
    /// exports them: 1 to BPF_MAXINSNS whole instructions.
    pub(super) fn from_bytes(bytes: &[u8]) -> Option<Program> {
        let count = bytes.len() / INSN_BYTES;
        if !bytes.len().is_multiple_of(INSN_BYTES) || count == 0 || count > MAX_INSNS {
            return None;
        }
        let filter = bytes
            .chunks_exact(INSN_BYTES)
            .map(|insn| libc::sock_filter {
                code: u16::from_ne_bytes([insn[0], insn[1]]),
                jt: insn[2],
                jf: insn[3],
                k: u32::from_ne_bytes([insn[4], insn[5], insn[6], insn[7]]),
            })
            .collect();
        Some(Program { filter })
    }

    pub(super) fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.filter.len() * INSN_BYTES);
        for insn in &self.filter {
            bytes.extend_from_slice(&insn.code.to_ne_bytes());
            bytes.extend_from_slice(&[insn.jt, insn.jf]);
            bytes.extend_from_slice(&insn.k.to_ne_bytes());
        }
        bytes
    }

    /// The number of BPF instructions.
    /// Always false for a compiled program; here for symmetry with [`Program::len`].
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.filter.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.filter.len()
    }

    /// Installs the filter on the calling thread with seccomp(2), returning the errno on
    /// failure. Meant for a forked child just before execve: it neither allocates nor takes a
    /// lock. Without CAP_SYS_ADMIN the caller must have set no_new_privs first. Flags are 0,
    /// not TSYNC: the child has one thread, and the filter is inherited across execve.
    pub(crate) fn load(&self) -> Result<(), i32> {
        crate::sys::process::load_seccomp_filter(&self.filter)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL))
    }
}
