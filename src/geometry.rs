//! Chunk geometry: how a file of a given size is cut into fixed-size chunks. All offsets are
//! u64 so files over 4 GiB work; a chunk index is u32 (2^32 chunks of 256 KiB is 1 PiB).

/// Default chunk size: 256 KiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 256 * 1024;
/// Largest chunk size accepted (16 MiB): bounds the memory one in-flight chunk can take.
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// Smallest chunk size accepted.
pub const MIN_CHUNK_SIZE: u32 = 1024;
/// Every chunk size is a multiple of this (one MD5 block): chained chunk digests
/// (`md5x::link`) carry a file's MD5 state from one chunk to the next, which needs whole blocks.
pub const CHUNK_ALIGN: u32 = 64;

/// Whether `n` is a chunk size this program accepts: within the bounds, whole MD5 blocks.
pub fn chunk_size_ok(n: u32) -> bool {
    (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&n) && n.is_multiple_of(CHUNK_ALIGN)
}

/// Most chunks in one file (2 TiB at 256 KiB chunks): every node keeps a few bytes of state
/// per chunk, and a file's bitfield must fit in one control frame (1 MiB).
pub const MAX_CHUNKS: u32 = (1 << 23) - 4096;

/// The cut of one file into chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub size: u64,
    pub chunk_size: u32,
}

impl Geometry {
    pub fn new(size: u64, chunk_size: u32) -> Self {
        debug_assert!(chunk_size > 0);
        Geometry { size, chunk_size }
    }

    /// Number of chunks; 0 for an empty file. `None` above [`MAX_CHUNKS`].
    pub fn checked_chunk_count(&self) -> Option<u32> {
        let n = self.size.div_ceil(self.chunk_size as u64);
        u32::try_from(n).ok().filter(|&n| n <= MAX_CHUNKS)
    }

    /// Number of chunks (saturating; callers validate with `checked_chunk_count` first).
    pub fn chunk_count(&self) -> u32 {
        self.checked_chunk_count().unwrap_or(u32::MAX)
    }

    /// Byte offset of chunk `index`.
    pub fn offset(&self, index: u32) -> u64 {
        index as u64 * self.chunk_size as u64
    }

    /// Length of chunk `index` in bytes (the last one may be short); 0 when out of range.
    pub fn chunk_len(&self, index: u32) -> u32 {
        let start = self.offset(index);
        if start >= self.size {
            return 0;
        }
        (self.size - start).min(self.chunk_size as u64) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_multiple() {
        let g = Geometry::new(4 * 262_144, 262_144);
        assert_eq!(g.chunk_count(), 4);
        assert_eq!(g.chunk_len(3), 262_144);
        assert_eq!(g.chunk_len(4), 0);
    }

    #[test]
    fn short_last_chunk() {
        let g = Geometry::new(3 * 262_144 + 17, 262_144);
        assert_eq!(g.chunk_count(), 4);
        assert_eq!(g.offset(3), 3 * 262_144);
        assert_eq!(g.chunk_len(3), 17);
        let total: u64 = (0..g.chunk_count()).map(|i| g.chunk_len(i) as u64).sum();
        assert_eq!(total, g.size);
    }

    #[test]
    fn empty_file() {
        let g = Geometry::new(0, 262_144);
        assert_eq!(g.chunk_count(), 0);
        assert_eq!(g.chunk_len(0), 0);
    }

    #[test]
    fn over_4_gib() {
        let size = 5 * (1u64 << 30) + 3;
        let g = Geometry::new(size, 262_144);
        assert_eq!(g.chunk_count(), 20_481);
        assert_eq!(g.offset(20_480), 5 * (1u64 << 30));
        assert_eq!(g.chunk_len(20_480), 3);
        assert!(g.offset(20_000) > u32::MAX as u64);
    }

    #[test]
    fn too_many_chunks() {
        assert_eq!(Geometry::new(u64::MAX, 1024).checked_chunk_count(), None);
        let at_cap = MAX_CHUNKS as u64 * 262_144;
        assert_eq!(
            Geometry::new(at_cap, 262_144).checked_chunk_count(),
            Some(MAX_CHUNKS)
        );
        assert_eq!(
            Geometry::new(at_cap + 1, 262_144).checked_chunk_count(),
            None
        );
        // The largest bitfield fits in a control frame.
        assert!((MAX_CHUNKS as usize).div_ceil(8) + 64 < crate::codec::MAX_CONTROL_FRAME as usize);
    }
}
