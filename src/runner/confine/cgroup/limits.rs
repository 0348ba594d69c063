//! docker run's resource flags read as docker reads them: `--memory` and `--memory-swap` as
//! sizes, `--pids-limit` as a count, `--cpus` as nano-CPUs checked against the CPUs this
//! process may run on. Takes the flags' text; hands on [`Limits`], plain data that travels in
//! the run plan and that the cgroup plan turns into interface-file writes. A value docker
//! would refuse is a [`LimitError`] with docker's reason, never a silently different limit.

/// docker's least `--memory` (its linuxMinMemory): less leaves a container no room to start.
pub const MIN_MEMORY: u64 = 6 << 20;
/// The CFS period docker gives `--cpus`, which is also the kernel's default, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// docker stores `--cpus` as an integer count of these per CPU.
const NANO_PER_CPU: u64 = 1_000_000_000;
/// docker's documented least `--cpus`, 0.01: the kernel refuses a CFS quota under 1 ms,
/// which is 0.01 of the 100 ms period.
const MIN_NANO_CPUS: u64 = NANO_PER_CPU / 100;

/// `--memory-swap`: memory and swap together, in bytes, or `-1` for unlimited swap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MemorySwap {
    Limited(u64),
    Unlimited,
}

/// `--pids-limit`: at most this many tasks; zero or less is unlimited, as in docker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PidsLimit {
    Limited(u64),
    Unlimited,
}

/// The resource limits of one sandbox. A field that is `None` was not given (or given as
/// docker's "unset", `0`). `memory_swap` stays `None` when only `--memory` was given: the
/// total is then docker's default, twice the memory (see [`Limits::swap_total`]), and the
/// difference decides how a kernel without swap accounting is treated.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// `--memory`, bytes.
    pub memory: Option<u64>,
    /// `--memory-swap` as given.
    pub memory_swap: Option<MemorySwap>,
    /// `--pids-limit`.
    pub pids: Option<PidsLimit>,
    /// `--cpus` in nano-CPUs (0.5 is 500 000 000), as docker stores it.
    pub cpus: Option<u64>,
}

/// A flag docker would refuse.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error(
        "invalid value {value:?} for --{flag}: not a size (a number with an optional unit b, k, m, g, t or p)"
    )]
    Size { flag: &'static str, value: String },
    #[error("invalid value {value:?} for --{flag}: too large")]
    TooLarge { flag: &'static str, value: String },
    #[error("--memory of {value} bytes is too low: the minimum memory limit allowed is 6MB")]
    MemoryTooLow { value: u64 },
    #[error(
        "--memory-swap ({swap} bytes) is less than --memory ({memory} bytes): it counts memory and swap together"
    )]
    SwapBelowMemory { memory: u64, swap: u64 },
    #[error(
        "--memory-swap needs --memory: always set the memory limit when using a memory-swap limit"
    )]
    SwapWithoutMemory { swap: u64 },
    #[error("invalid value {value:?} for --pids-limit: not an integer")]
    Pids { value: String },
    #[error("invalid value {value:?} for --cpus: not a decimal number")]
    Cpus { value: String },
    #[error("invalid value {value:?} for --cpus: too precise (at most 9 decimals)")]
    CpusTooPrecise { value: String },
    #[error(
        "--cpus {value}: the range of CPUs is from 0.01 to {available}.00, as there are only {available} CPUs available"
    )]
    CpusRange { value: String, available: u32 },
}

impl Limits {
    /// Reads docker run's flags as docker does, checking `--cpus` against the CPUs this process
    /// may run on.
    pub fn from_flags(
        memory: Option<&str>,
        memory_swap: Option<&str>,
        pids_limit: Option<&str>,
        cpus: Option<&str>,
    ) -> Result<Limits, LimitError> {
        Limits::from_flags_on(memory, memory_swap, pids_limit, cpus, available_cpus())
    }

    /// [`Limits::from_flags`] on a machine with `available` CPUs.
    pub(crate) fn from_flags_on(
        memory: Option<&str>,
        memory_swap: Option<&str>,
        pids_limit: Option<&str>,
        cpus: Option<&str>,
        available: u32,
    ) -> Result<Limits, LimitError> {
        let memory = memory
            .map(|m| parse_size("memory", m))
            .transpose()?
            .filter(|&m| m != 0);
        let memory_swap = match memory_swap {
            Some("-1") => Some(MemorySwap::Unlimited),
            Some(s) => Some(parse_size("memory-swap", s)?)
                .filter(|&s| s != 0)
                .map(MemorySwap::Limited),
            None => None,
        };
        if let Some(m) = memory
            && m < MIN_MEMORY
        {
            return Err(LimitError::MemoryTooLow { value: m });
        }
        if let Some(MemorySwap::Limited(swap)) = memory_swap {
            match memory {
                Some(memory) if swap < memory => {
                    return Err(LimitError::SwapBelowMemory { memory, swap });
                }
                None => return Err(LimitError::SwapWithoutMemory { swap }),
                Some(_) => {}
            }
        }
        let pids = pids_limit
            .map(|p| {
                let n: i64 = p.parse().map_err(|_| LimitError::Pids {
                    value: p.to_string(),
                })?;
                Ok(if n <= 0 {
                    PidsLimit::Unlimited
                } else {
                    PidsLimit::Limited(n.unsigned_abs())
                })
            })
            .transpose()?;
        let cpus = cpus
            .map(|c| parse_cpus(c, available))
            .transpose()?
            .flatten();
        Ok(Limits {
            memory,
            memory_swap,
            pids,
            cpus,
        })
    }

    /// Memory and swap together, with docker's default of twice `--memory` when only that
    /// was given. Unlimited swap, or none at all without a memory limit, is no limit.
    pub(crate) fn swap_total(&self) -> Option<u64> {
        let memory = self.memory?;
        match self.memory_swap {
            Some(MemorySwap::Limited(total)) => Some(total),
            Some(MemorySwap::Unlimited) => None,
            None => Some(memory.saturating_mul(2)),
        }
    }

    /// The number of tasks allowed, if limited.
    pub(crate) fn pids_max(&self) -> Option<u64> {
        match self.pids {
            Some(PidsLimit::Limited(n)) => Some(n),
            _ => None,
        }
    }

    /// The CFS quota per [`CPU_PERIOD_US`], in microseconds, as docker computes it.
    pub(crate) fn cpu_quota_us(&self) -> Option<u64> {
        let nano = self.cpus?;
        let quota = u128::from(nano) * u128::from(CPU_PERIOD_US) / u128::from(NANO_PER_CPU);
        Some(u64::try_from(quota).unwrap_or(u64::MAX))
    }

    /// Whether there is no limit to enforce, and so no cgroup needed.
    pub(crate) fn is_empty(&self) -> bool {
        self.memory.is_none() && self.pids_max().is_none() && self.cpus.is_none()
    }
}

/// A size as docker reads `--memory` (its RAMInBytes): a decimal number, optionally
/// followed (or, after one space) by a unit b, k, m, g, t or p, itself optionally followed by
/// `b` or `ib`, in any case; powers of 1024; the fraction of a byte is dropped.
fn parse_size(flag: &'static str, text: &str) -> Result<u64, LimitError> {
    let bad = || LimitError::Size {
        flag,
        value: text.to_string(),
    };
    let sep = text
        .rfind(|c: char| c.is_ascii_digit() || c == '.' || c == ' ')
        .ok_or_else(bad)?;
    let (number, suffix) = if text.as_bytes()[sep] == b' ' {
        (&text[..sep], &text[sep + 1..])
    } else {
        (&text[..=sep], &text[sep + 1..])
    };
    let numeric = |b: u8| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-');
    if !number.bytes().all(numeric) {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    if value.is_sign_negative() || !value.is_finite() {
        return Err(bad());
    }
    let suffix = suffix.to_ascii_lowercase();
    let unit = match suffix.as_bytes() {
        [] | [b'b'] => 1u64,
        [u, rest @ ..] if rest.is_empty() || rest == b"b" || rest == b"ib" => {
            match b"kmgtp".iter().position(|c| c == u) {
                Some(i) => 1u64 << (10 * (i + 1)),
                None => return Err(bad()),
            }
        }
        _ => return Err(bad()),
    };
    let bytes = value * unit as f64;
    // docker keeps sizes in an int64.
    if bytes >= i64::MAX as f64 {
        return Err(LimitError::TooLarge {
            flag,
            value: text.to_string(),
        });
    }
    Ok(bytes as u64)
}

/// `--cpus` as nano-CPUs (docker's NanoCPUs): a decimal number with at most nine decimals.
/// Zero is docker's "unset"; anything else must lie in 0.01 ..= `available`.
fn parse_cpus(text: &str, available: u32) -> Result<Option<u64>, LimitError> {
    let bad = || LimitError::Cpus {
        value: text.to_string(),
    };
    let range = || LimitError::CpusRange {
        value: text.to_string(),
        available,
    };
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.len() + fraction.len() == 0 || !digits(whole) || !digits(fraction) {
        return Err(bad());
    }
    let (kept, dropped) = fraction.split_at(fraction.len().min(9));
    if dropped.bytes().any(|b| b != b'0') {
        return Err(LimitError::CpusTooPrecise {
            value: text.to_string(),
        });
    }
    let whole = whole.trim_start_matches('0');
    // More than 10 digits before the point is more CPUs than any machine has.
    if whole.len() > 10 {
        return Err(range());
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let mut nano_fraction = 0u64;
    for (i, b) in kept.bytes().enumerate() {
        nano_fraction += u64::from(b - b'0') * 10u64.pow(8 - i as u32);
    }
    let nano = whole * NANO_PER_CPU + nano_fraction;
    if nano == 0 {
        return Ok(None);
    }
    if negative || nano < MIN_NANO_CPUS || nano > u64::from(available) * NANO_PER_CPU {
        return Err(range());
    }
    Ok(Some(nano))
}

/// The CPUs this process may run on, as docker counts them (its sysinfo.NumCPU).
fn available_cpus() -> u32 {
    match crate::sys::process::affinity_cpus() {
        Ok(n) if n > 0 => n,
        _ => {
            std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::limits;
    use super::*;

    const M: u64 = 1 << 20;

    /// Sizes as docker's RAMInBytes reads them (powers of 1024, b/ib after the unit optional,
    /// any case, the fraction of a byte dropped).
    #[test]
    fn reads_sizes_as_docker() {
        let accepted: [(&str, u64); 18] = [
            ("64m", 64 * M),
            ("64M", 64 * M),
            ("64mb", 64 * M),
            ("64MiB", 64 * M),
            ("64 m", 64 * M),
            ("1g", 1 << 30),
            ("1.5g", 3 << 29),
            ("512k", 512 << 10),
            ("100b", 100),
            ("100", 100),
            ("64 ", 64),
            ("0.5k", 512),
            ("1.1k", 1126),
            ("1t", 1 << 40),
            ("1p", 1 << 50),
            (".5m", M / 2),
            ("10485760", 10 * M),
            ("7000000.9", 7_000_000),
        ];
        for (text, bytes) in accepted {
            assert_eq!(parse_size("memory", text), Ok(bytes), "{text:?}");
        }
        let refused = [
            "", "m", "abc", "-1", "-64m", "64x", "64bb", "64mi", "64kbb", "6 4m", "64m ", "1.2.3m",
            "1e400", "64мб", "9000p",
        ];
        for text in refused {
            assert!(parse_size("memory", text).is_err(), "{text:?}");
        }
    }

    /// docker's memory rules: 6 MiB at least, --memory-swap a total of at least --memory
    /// that needs --memory, -1 for unlimited swap, 0 meaning unset.
    #[test]
    fn applies_dockers_memory_rules() {
        let ok = |memory, swap, want_memory, want_swap| {
            let l = limits(memory, swap, None, None).unwrap();
            assert_eq!(
                (l.memory, l.memory_swap),
                (want_memory, want_swap),
                "{memory:?} {swap:?}"
            );
        };
        ok(Some("64m"), None, Some(64 * M), None);
        ok(Some("6m"), None, Some(6 * M), None);
        ok(Some("0"), None, None, None);
        ok(
            Some("64m"),
            Some("64m"),
            Some(64 * M),
            Some(MemorySwap::Limited(64 * M)),
        );
        ok(
            Some("64m"),
            Some("1g"),
            Some(64 * M),
            Some(MemorySwap::Limited(1 << 30)),
        );
        ok(
            Some("64m"),
            Some("-1"),
            Some(64 * M),
            Some(MemorySwap::Unlimited),
        );
        ok(Some("64m"), Some("0"), Some(64 * M), None);
        ok(None, Some("-1"), None, Some(MemorySwap::Unlimited));

        let err = |memory, swap| limits(memory, swap, None, None).unwrap_err();
        assert_eq!(
            err(Some("4m"), None),
            LimitError::MemoryTooLow { value: 4 * M }
        );
        assert_eq!(
            err(Some("6291455"), None),
            LimitError::MemoryTooLow { value: 6 * M - 1 }
        );
        assert_eq!(
            err(Some("64m"), Some("32m")),
            LimitError::SwapBelowMemory {
                memory: 64 * M,
                swap: 32 * M
            }
        );
        assert_eq!(
            err(None, Some("1g")),
            LimitError::SwapWithoutMemory { swap: 1 << 30 }
        );
        assert!(matches!(
            err(Some("64m"), Some("-2")),
            LimitError::Size {
                flag: "memory-swap",
                ..
            }
        ));
        assert!(matches!(
            err(Some("x"), None),
            LimitError::Size { flag: "memory", .. }
        ));
    }

    #[test]
    fn travels_in_the_plan() {
        let l = limits(Some("64m"), Some("-1"), Some("0"), Some("1.5")).unwrap();
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(serde_json::from_str::<Limits>(&json).unwrap(), l);
        assert!(!l.is_empty());
        assert!(Limits::default().is_empty());
    }

    #[test]
    fn totals_swap_as_docker() {
        let total = |memory, swap| limits(memory, swap, None, None).unwrap().swap_total();
        assert_eq!(total(Some("64m"), None), Some(128 * M));
        assert_eq!(total(Some("64m"), Some("100m")), Some(100 * M));
        assert_eq!(total(Some("64m"), Some("-1")), None);
        assert_eq!(total(None, Some("-1")), None);
        assert_eq!(total(None, None), None);
    }

    #[test]
    fn reads_pids_limit_as_docker() {
        let pids = |p| limits(None, None, Some(p), None).map(|l| l.pids);
        assert_eq!(pids("64"), Ok(Some(PidsLimit::Limited(64))));
        assert_eq!(pids("1"), Ok(Some(PidsLimit::Limited(1))));
        assert_eq!(pids("0"), Ok(Some(PidsLimit::Unlimited)));
        assert_eq!(pids("-1"), Ok(Some(PidsLimit::Unlimited)));
        assert_eq!(pids("-7"), Ok(Some(PidsLimit::Unlimited)));
        for bad in ["", "x", "1.5", "64k"] {
            assert!(matches!(pids(bad), Err(LimitError::Pids { .. })), "{bad:?}");
        }
        assert!(limits(None, None, Some("-1"), None).unwrap().is_empty());
    }

    /// `--cpus` as nano-CPUs, between 0.01 and the CPU count (2 here); 0 is unset.
    #[test]
    fn reads_cpus_as_docker() {
        let cpus = |c| limits(None, None, None, Some(c)).map(|l| l.cpus);
        let accepted: [(&str, Option<u64>); 9] = [
            ("0.5", Some(500_000_000)),
            ("1", Some(1_000_000_000)),
            ("2", Some(2_000_000_000)),
            ("2.000", Some(2_000_000_000)),
            (".25", Some(250_000_000)),
            ("0.01", Some(10_000_000)),
            ("1.000000001", Some(1_000_000_001)),
            ("0", None),
            ("0.0", None),
        ];
        for (text, nano) in accepted {
            assert_eq!(cpus(text), Ok(nano), "{text:?}");
        }
        for text in ["3", "2.000000001", "0.001", "0.009", "-1", "99999999999999"] {
            assert_eq!(
                cpus(text),
                Err(LimitError::CpusRange {
                    value: text.into(),
                    available: 2
                }),
                "{text:?}"
            );
        }
        assert!(matches!(
            cpus("0.0000000001"),
            Err(LimitError::CpusTooPrecise { .. })
        ));
        for text in ["", ".", "x", "1,5", "1.5.", "1/2", "0x1"] {
            assert!(
                matches!(cpus(text), Err(LimitError::Cpus { .. })),
                "{text:?}"
            );
        }
        let half = limits(None, None, None, Some("0.5")).unwrap();
        assert_eq!(half.cpu_quota_us(), Some(50_000));
        let odd = limits(None, None, None, Some("0.012345")).unwrap();
        assert_eq!(odd.cpu_quota_us(), Some(1234));
        assert_eq!(
            LimitError::CpusRange {
                value: "3".into(),
                available: 2
            }
            .to_string(),
            "--cpus 3: the range of CPUs is from 0.01 to 2.00, as there are only 2 CPUs available"
        );
    }
}
