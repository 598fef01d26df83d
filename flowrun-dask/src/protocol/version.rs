//! Which `distributed` releases this client can talk to.
//!
//! The shape of `update-graph` changed in 2025.4.0 (the graph travels as a
//! pickled expression in `expr_ser`). An older scheduler treats the new field
//! as an unknown keyword, which kills the whole client stream, so the version
//! is checked before anything is submitted.

/// The oldest `distributed` release this client supports.
pub const MIN_SUPPORTED_VERSION: &str = "2025.4.0";

/// The newest `distributed` release this client was tested against. Newer
/// releases are accepted (with a warning in the log), because the protocol
/// has been stable between these two.
pub const NEWEST_TESTED_VERSION: &str = "2026.8.0";

/// Parses the leading `year.month.patch` of a release string such as
/// `2025.4.0`, `2026.8.1.dev3` or `2025.12.0+12.gabcdef`. Missing parts count
/// as zero.
pub(crate) fn parse(version: &str) -> Option<(u64, u64, u64)> {
    let mut parts = [0u64; 3];
    let mut count = 0;
    for (slot, piece) in parts.iter_mut().zip(version.trim().split('.')) {
        let digits: String = piece.chars().take_while(char::is_ascii_digit).collect();
        if digits.is_empty() {
            break;
        }
        *slot = digits.parse().ok()?;
        count += 1;
        if digits.len() != piece.len() {
            // "0rc1", "0+local": the number ends here.
            break;
        }
    }
    (count > 0).then_some((parts[0], parts[1], parts[2]))
}

/// Whether a scheduler reporting `version` speaks the protocol of this client.
pub(crate) fn is_supported(version: &str) -> bool {
    match (parse(version), parse(MIN_SUPPORTED_VERSION)) {
        (Some(found), Some(minimum)) => found >= minimum,
        _ => false,
    }
}

/// Whether `version` is newer than anything tested.
pub(crate) fn is_newer_than_tested(version: &str) -> bool {
    match (parse(version), parse(NEWEST_TESTED_VERSION)) {
        (Some(found), Some(newest)) => (found.0, found.1) > (newest.0, newest.1),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_strings() {
        assert_eq!(parse("2025.4.0"), Some((2025, 4, 0)));
        assert_eq!(parse("2026.8.1.dev3"), Some((2026, 8, 1)));
        assert_eq!(parse("2025.12.0+12.gabcdef"), Some((2025, 12, 0)));
        assert_eq!(parse("2025.4"), Some((2025, 4, 0)));
        assert_eq!(parse("2025.4.0rc1"), Some((2025, 4, 0)));
        assert_eq!(parse("unknown"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("99999999999999999999999.1"), None);
    }

    #[test]
    fn gates_on_2025_4_0() {
        for ok in ["2025.4.0", "2025.4.1", "2025.12.0", "2026.8.0", "2030.1.0"] {
            assert!(is_supported(ok), "{ok}");
        }
        for old in ["2025.3.0", "2025.3.9", "2024.12.1", "2023.4.0", "garbage"] {
            assert!(!is_supported(old), "{old}");
        }
        assert!(!is_newer_than_tested("2026.8.3"));
        assert!(is_newer_than_tested("2026.9.0"));
    }
}
