use std::path::PathBuf;

/// Why a configuration could not be used. Every message names the file, the key and what to
/// write instead.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has a key of the wrong type or an unknown key.
    #[error("{file}: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// The parser's message, with line, column and the offending text.
        message: String,
    },
    /// A value is of the right type but not usable.
    #[error("{file}: key `{key}`: {problem}; {hint}")]
    Invalid {
        /// The file.
        file: String,
        /// The dotted key, e.g. `lake.root`.
        key: String,
        /// What is wrong.
        problem: String,
        /// What to write instead.
        hint: String,
    },
}
