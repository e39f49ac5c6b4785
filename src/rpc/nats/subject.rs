//! NATS subjects as the transport uses them: a service subject (`tokentrace.backend`) under
//! which each endpoint is one more token or more (`tokentrace.backend.generate`).

use std::io;

/// Checks that `subject` is a literal NATS subject: dot-separated, non-empty tokens, no
/// whitespace, no wildcard token (`*`, `>`).
///
/// The NATS server would reject the worst of these at publish time; checking here names the
/// offending value in the error instead.
pub(super) fn check(subject: &str, what: &str) -> Result<(), String> {
    let bad_token = subject.split('.').find(|token| token.is_empty() || *token == "*" || *token == ">");
    if let Some(token) = bad_token {
        let why = if token.is_empty() { "has an empty token" } else { "has a wildcard token" };
        return Err(format!("{what} {subject:?} {why}: it must be a literal NATS subject"));
    }
    if subject.chars().any(char::is_whitespace) {
        return Err(format!("{what} {subject:?} contains whitespace: it must be a literal NATS subject"));
    }
    Ok(())
}

/// [`check`] for configuration: an `InvalidInput` I/O error.
pub(super) fn check_config(subject: &str) -> io::Result<()> {
    check(subject, "service subject").map_err(|why| io::Error::new(io::ErrorKind::InvalidInput, why))
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn literal_subjects_pass_and_others_are_named() {
        for good in ["tokentrace.backend", "generate", "generate/2", "a.b.c", "dynamo_backend-1"] {
            assert_eq!(check(good, "endpoint"), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("", "empty token"),
            ("a..b", "empty token"),
            ("a.", "empty token"),
            (".a", "empty token"),
            ("a.*", "wildcard"),
            ("a.>", "wildcard"),
            ("gen erate", "whitespace"),
            ("gen\terate", "whitespace"),
        ] {
            let error = check(bad, "endpoint").unwrap_err();
            assert!(error.contains(why) && error.contains(&format!("{bad:?}")), "{bad:?}: {error}");
        }
    }
}
