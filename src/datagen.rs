//! `p2pshare gen`: deterministic pseudo-random test files, fast (splitmix64 over the word index,
//! so the same size and seed always give the same bytes), written to `OUT.tmp` and renamed, so a
//! half-written file never carries the final name.

use crate::error::Error;
use std::fs::File;
use std::io::Write;
use std::path::Path;

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `buf` with the bytes at `offset` of the stream for `seed` (`offset` multiple of 8).
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let key = splitmix64(seed);
    for (k, word) in buf.chunks_mut(8).enumerate() {
        let v = splitmix64(key ^ (offset / 8 + k as u64)).to_le_bytes();
        word.copy_from_slice(&v[..word.len()]);
    }
}

/// Parses `123`, `4K`/`4KiB`, `500M`/`500MiB`, `2G`/`2GiB` (powers of 1024) or `5KB`/`5MB`/`5GB`
/// (powers of 1000).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?}: expected a number with an optional unit"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(format!("bad size {s:?}: unknown unit {unit:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

pub fn run(size: u64, seed: u64, out: &Path) -> Result<(), Error> {
    let tmp = out.with_file_name(format!(
        "{}.tmp",
        out.file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::Usage(format!("bad output path {}", out.display())))?
    ));
    let io = |e: std::io::Error| Error::Usage(format!("cannot write {}: {e}", out.display()));
    let mut f = File::create(&tmp).map_err(io)?;
    let mut buf = vec![0u8; 4 << 20];
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        fill(seed, off, &mut buf[..n]);
        if let Err(e) = f.write_all(&buf[..n]) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        off += n as u64;
    }
    if let Err(e) = f.sync_all().and_then(|_| std::fs::rename(&tmp, out)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("500MiB"), Ok(500 << 20));
        assert_eq!(parse_size("5MB"), Ok(5_000_000));
        assert!(parse_size("5XB").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn deterministic_and_offset_consistent() {
        let mut a = vec![0u8; 64];
        let mut b = vec![0u8; 32];
        fill(7, 0, &mut a);
        fill(7, 32, &mut b);
        assert_eq!(&a[32..], &b[..]);
        let mut c = vec![0u8; 64];
        fill(8, 0, &mut c);
        assert_ne!(a, c);
    }
}
