//! The top-level error: what may reach `main`, and the exit code each kind maps to.

use crate::storage::StorageError;
use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// Bad usage or input: exit 2.
    Usage(String),
    /// A file could not be opened, mapped or created: exit 2.
    Storage(StorageError),
    /// The run failed (a file could not be completed or verified): exit 1.
    Failed(String),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Storage(_) => 2,
            Error::Failed(_) => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(s) | Error::Failed(s) => f.write_str(s),
            Error::Storage(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        Error::Storage(e)
    }
}
