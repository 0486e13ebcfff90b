//! The one error type of the LXD layer, and the fixed categories metrics count it by.

use std::time::Duration;

/// Something the LXD layer could not do. Each variant is a cause an operator can act on;
/// where LXD gave a message, `Display` shows LXD's own text.
#[derive(thiserror::Error, Debug)]
pub enum LxdError {
    /// LXD answered 404: the instance, profile or project does not exist.
    #[error("{message}")]
    NotFound { message: String },
    /// LXD answered 412: the object changed since its ETag was read.
    #[error("{message}")]
    Conflict { message: String },
    /// The profile is used by instances and cannot be deleted.
    #[error("{message}")]
    InUse { message: String },
    /// The object was created meanwhile by someone else (LXD 5.0: 500 "... already
    /// exists"; later versions: 409).
    #[error("{message}")]
    AlreadyExists { message: String },
    /// LXD refused the request (bad key, bad value, a device that cannot start...).
    /// `status` is the HTTP code (or the operation's status code); `message` is LXD's text.
    #[error("{message}")]
    Rejected { status: u16, message: String },
    /// No connection: socket missing, connection refused or reset, TLS handshake failed
    /// (a server certificate that is not the pinned one lands here).
    #[error("LXD is unreachable at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    /// No complete answer within the client's timeout.
    #[error("LXD did not answer {what} within {}s", after.as_secs_f64())]
    Timeout { what: String, after: Duration },
    /// An answer that is not what the LXD API promises (bad JSON, unknown response type).
    #[error("unexpected answer from LXD to {what}: {reason}")]
    Protocol { what: String, reason: String },
    /// The connection settings are wrong: bad URL, unreadable or invalid certificate files.
    #[error("LXD connection settings: {reason}")]
    Config { reason: String },
    /// The write was not sent: this process may not write to LXD (it is not, or no longer,
    /// the leader).
    #[error("not sent: this replica is not the leader, and LXD writes are stopped")]
    Fenced,
}

/// The fixed set of causes that metrics and logs use; never derived from message text
/// at the metric site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCategory {
    NotFound,
    Conflict,
    InUse,
    AlreadyExists,
    Rejected,
    Unreachable,
    Timeout,
    Protocol,
    Config,
    Fenced,
}

impl ErrorCategory {
    pub const ALL: [ErrorCategory; 10] = [
        ErrorCategory::NotFound,
        ErrorCategory::Conflict,
        ErrorCategory::InUse,
        ErrorCategory::AlreadyExists,
        ErrorCategory::Rejected,
        ErrorCategory::Unreachable,
        ErrorCategory::Timeout,
        ErrorCategory::Protocol,
        ErrorCategory::Config,
        ErrorCategory::Fenced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCategory::NotFound => "not_found",
            ErrorCategory::Conflict => "conflict",
            ErrorCategory::InUse => "in_use",
            ErrorCategory::AlreadyExists => "already_exists",
            ErrorCategory::Rejected => "rejected",
            ErrorCategory::Unreachable => "unreachable",
            ErrorCategory::Timeout => "timeout",
            ErrorCategory::Protocol => "protocol",
            ErrorCategory::Config => "config",
            ErrorCategory::Fenced => "fenced",
        }
    }
}

impl std::fmt::Display for ErrorCategory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl LxdError {
    pub fn category(&self) -> ErrorCategory {
        match self {
            LxdError::NotFound { .. } => ErrorCategory::NotFound,
            LxdError::Conflict { .. } => ErrorCategory::Conflict,
            LxdError::InUse { .. } => ErrorCategory::InUse,
            LxdError::AlreadyExists { .. } => ErrorCategory::AlreadyExists,
            LxdError::Rejected { .. } => ErrorCategory::Rejected,
            LxdError::Unreachable { .. } => ErrorCategory::Unreachable,
            LxdError::Timeout { .. } => ErrorCategory::Timeout,
            LxdError::Protocol { .. } => ErrorCategory::Protocol,
            LxdError::Config { .. } => ErrorCategory::Config,
            LxdError::Fenced => ErrorCategory::Fenced,
        }
    }

    /// Whether trying the same request again later can succeed without anyone changing
    /// the desired state (the queue's backoff decides when).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.category(),
            ErrorCategory::Conflict | ErrorCategory::Unreachable | ErrorCategory::Timeout
        )
    }

    /// Whether LXD may have carried the request out all the same: no answer came (a
    /// connection reset or refused, a timeout) or not one that could be read. A write that
    /// failed so is read back, not sent again blind.
    pub fn may_have_happened(&self) -> bool {
        matches!(
            self.category(),
            ErrorCategory::Unreachable | ErrorCategory::Timeout | ErrorCategory::Protocol
        )
    }

    /// Classify an error answer from LXD: by status code first, then by text.
    /// `status` is the HTTP code of a sync error, or the status code of a failed operation.
    pub(crate) fn from_lxd(status: u16, message: &str) -> LxdError {
        let message = if message.trim().is_empty() {
            format!("LXD answered {status} with no message")
        } else {
            message.to_owned()
        };
        match status {
            404 => LxdError::NotFound { message },
            412 => LxdError::Conflict { message },
            409 => LxdError::AlreadyExists { message },
            _ if is_in_use(&message) => LxdError::InUse { message },
            _ if message.to_ascii_lowercase().contains("already exists") => {
                LxdError::AlreadyExists { message }
            }
            _ => LxdError::Rejected { status, message },
        }
    }
}

/// LXD 5.0 says "Profile is currently in use" with a 500; match on the text, loosely, so a
/// later wording for the same refusal ("... is in use") still lands in `InUse`.
fn is_in_use(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("currently in use") || lower.contains("profile is in use")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_code_then_text() {
        assert_eq!(
            LxdError::from_lxd(404, "Profile not found").category(),
            ErrorCategory::NotFound
        );
        assert_eq!(
            LxdError::from_lxd(412, "ETag doesn't match: a vs b").category(),
            ErrorCategory::Conflict
        );
        assert_eq!(
            LxdError::from_lxd(500, "Profile is currently in use").category(),
            ErrorCategory::InUse
        );
        assert_eq!(
            LxdError::from_lxd(400, "Profile is currently in use").category(),
            ErrorCategory::InUse
        );
        let e = LxdError::from_lxd(500, "Invalid value for a boolean \"maybe\"");
        assert_eq!(e.category(), ErrorCategory::Rejected);
        assert_eq!(e.to_string(), "Invalid value for a boolean \"maybe\"");
        assert_eq!(
            LxdError::from_lxd(
                500,
                "Error inserting \"a\" into database: The profile already exists"
            )
            .category(),
            ErrorCategory::AlreadyExists
        );
        assert_eq!(
            LxdError::from_lxd(409, "conflict").category(),
            ErrorCategory::AlreadyExists
        );
        // A 404 whose text mentions use is still a 404.
        assert_eq!(
            LxdError::from_lxd(404, "currently in use").category(),
            ErrorCategory::NotFound
        );
    }

    #[test]
    fn empty_message_still_says_something() {
        assert_eq!(
            LxdError::from_lxd(500, "").to_string(),
            "LXD answered 500 with no message"
        );
    }

    #[test]
    fn category_names_are_fixed() {
        let names: Vec<_> = ErrorCategory::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "not_found",
                "conflict",
                "in_use",
                "already_exists",
                "rejected",
                "unreachable",
                "timeout",
                "protocol",
                "config",
                "fenced"
            ]
        );
    }
}
