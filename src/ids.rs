//! Domain identifiers: newtypes for peers, files and chunks, the MD5 digest type, and the rules
//! a file name must follow before it may touch the disk.

use std::fmt;

/// A client of the run, as numbered by the server (1..=N).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u32);

/// A file of the run, as numbered by the server (0-based, in order of declaration).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u32);

/// One chunk of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId {
    pub file: FileId,
    pub index: u32,
}

/// An MD5 digest.
pub type Digest = [u8; 16];

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer{}", self.0)
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "file{}", self.0)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.file, self.index)
    }
}

/// Lower-case hexadecimal form of a digest.
pub fn hex(d: &Digest) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(32);
    for b in d {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Longest file or node name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Why a name from the wire or the command line was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadName(pub &'static str);

impl fmt::Display for BadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Accepts only a plain file name: no separators, no NUL, not `.` or `..`, not empty, not too long.
/// Every name that may become a path under an output directory passes through here first, so
/// nothing a peer says can make us write outside that directory.
pub fn check_file_name(name: &str) -> Result<(), BadName> {
    if name.is_empty() {
        return Err(BadName("empty name"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(BadName("name longer than 255 bytes"));
    }
    if name == "." || name == ".." {
        return Err(BadName("name is . or .."));
    }
    if name.contains('/') || name.contains('\\') {
        return Err(BadName("name contains a path separator"));
    }
    if name.contains('\0') {
        return Err(BadName("name contains NUL"));
    }
    if name.chars().any(char::is_control) {
        return Err(BadName("name contains a control character"));
    }
    if name.ends_with(".part") {
        return Err(BadName("name ends in .part"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert!(check_file_name("file1.bin").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "../../etc/passwd",
            "/etc/passwd",
            "a/b",
            "a\0b",
            "a\\b",
            "x.part",
            "a\nb",
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_file_name(&"a".repeat(256)).is_err());
        assert!(check_file_name(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn hex_digest() {
        let d = [
            0xd4, 0x1d, 0x8c, 0xd9, 0x8f, 0, 0xb2, 4, 0xe9, 0x80, 9, 0x98, 0xec, 0xf8, 0x42, 0x7e,
        ];
        assert_eq!(hex(&d), "d41d8cd98f00b204e9800998ecf8427e");
    }
}
