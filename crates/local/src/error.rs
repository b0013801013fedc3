//! The crate's one error type.

use std::io;
use std::path::PathBuf;

use mcp_gateway_core::AdapterError;

/// What can go wrong in the local runtime below the [`AdapterError`] of the ports.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A file of the data directory could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An adapter record in the data directory is not valid JSON of an adapter.
    #[error("adapter record {} is not valid (fix or remove the file): {source}", path.display())]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// An adapter record's file name does not match the adapter it holds.
    #[error("adapter record {} holds adapter {found:?}; the file must be named {found}.json", path.display())]
    Misnamed { path: PathBuf, found: String },
}

impl LocalError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

impl From<LocalError> for AdapterError {
    /// The client's words name no host path (an API caller need not learn the gateway's file
    /// system); the gateway's log gets the whole error.
    fn from(err: LocalError) -> Self {
        tracing::error!(error = %err, "adapter store failed");
        AdapterError::Unavailable(match &err {
            LocalError::Io { action, source, .. } => format!(
                "the gateway cannot {action} an adapter record in its data directory ({}); its \
                 log names the file",
                std::io::Error::from(source.kind())
            ),
            LocalError::Record { .. } | LocalError::Misnamed { .. } => {
                "an adapter record in the gateway's data directory is not valid; its log names \
                 the file"
                    .to_owned()
            }
        })
    }
}
