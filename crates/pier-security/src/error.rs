/// Everything that can go wrong in the security core, worded for the person who acts on it.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("invalid join token: {0}")]
    Token(String),
    #[error("sealed data cannot be opened: {0}")]
    Seal(String),
    #[error("invalid registry token: {0}")]
    Jwt(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("invalid ACL policy: {0}")]
    Policy(String),
}

impl From<rcgen::Error> for SecurityError {
    fn from(e: rcgen::Error) -> Self {
        SecurityError::Certificate(e.to_string())
    }
}
