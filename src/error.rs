//! One error type for the whole crate: every message names the problem and, where
//! there is one, the file.

use std::fmt;
use std::path::{Path, PathBuf};

/// dnat's error: an I/O failure, a malformed file, or an impossible request.
///
/// Its `Debug` form is its message, so that `fn main() -> dnat::Result<()>` prints
/// `Error: <the message>` when it fails, not the enum's fields.
pub enum Error {
    /// An I/O failure on a named file.
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A file whose contents are not what its format promises.
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it (with the line or field where there is one).
        msg: String,
    },
    /// An impossible argument, flag or shape.
    Invalid(String),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O failure on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }
    /// `path` holds something its format does not allow: `msg` says what.
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
    /// An impossible argument, flag or shape, described by `msg`.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {}", path.display(), source),
            Error::Format { path, msg } => write!(f, "{}: {}", path.display(), msg),
            Error::Invalid(msg) => write!(f, "{msg}"),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
