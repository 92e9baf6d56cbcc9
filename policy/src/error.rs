use std::path::PathBuf;

/// Why a policy folder could not be loaded or a decision could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file of the policy folder could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A schema, policy or entity file does not parse or does not validate. `location` is
    /// `file:line:column` where known.
    #[error("{location}: {message}")]
    Invalid {
        /// `file:line:column`, or the file alone.
        location: String,
        /// What is wrong, with the policy id where there is one.
        message: String,
    },
    /// Several problems at once (all of a file's validation errors).
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Many(Vec<PolicyError>),
    /// A request could not even be put to Cedar (an id that is not a valid Cedar name, ...).
    /// Callers refuse the request: deciding fails closed.
    #[error("cannot decide: {0}")]
    Request(String),
}
