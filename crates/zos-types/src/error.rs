//! Errors of the wire model. Their texts are upstream's, because clients match on them.

/// A deployment or workload failed validation or could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(String);

impl ValidationError {
    /// An error with upstream's exact text.
    pub fn new(message: impl Into<String>) -> Self {
        ValidationError(message.into())
    }

    /// Prefixes the message the way `errors.Wrap(err, msg)` does: `msg: err`.
    pub fn wrap(self, context: impl AsRef<str>) -> Self {
        ValidationError(format!("{}: {}", context.as_ref(), self.0))
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

/// Signature verification failed; the text is upstream's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct VerifyError(pub(crate) String);

impl VerifyError {
    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl From<ValidationError> for VerifyError {
    fn from(e: ValidationError) -> Self {
        VerifyError(e.0)
    }
}

/// The document is not a deployment at all (bad JSON or wrong shapes).
#[derive(Debug, thiserror::Error)]
#[error("invalid deployment json: {0}")]
pub struct DecodeError(#[from] pub serde_json::Error);
