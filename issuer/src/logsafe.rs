//! Attacker-controlled strings (client ids, claimed subjects, object names
//! from requests) are capped before they reach a log line, so a request
//! cannot make the issuer write megabytes per line. Every log field that
//! copies request input goes through [`cap`].

use std::fmt;

/// How many characters of an untrusted string a log line keeps.
pub const LOG_CAP_CHARS: usize = 64;

/// Displays the first [`LOG_CAP_CHARS`] characters of a string, then `…`
/// if anything was cut. Control characters are escaped so a value cannot
/// forge a log line.
#[derive(Clone, Copy)]
pub struct Capped<'a>(&'a str);

/// Wraps an untrusted string for logging (`client_id = %cap(id)`).
pub fn cap(value: &str) -> Capped<'_> {
    Capped(value)
}

impl fmt::Display for Capped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(LOG_CAP_CHARS) {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        if chars.next().is_some() {
            f.write_str("…")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Capped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_to_64_chars_and_marked() {
        let long = "é".repeat(60_000);
        let shown = cap(&long).to_string();
        assert_eq!(shown.chars().count(), LOG_CAP_CHARS + 1);
        assert!(shown.ends_with('…'));
        assert_eq!(cap("short").to_string(), "short");
        assert_eq!(cap(&"a".repeat(64)).to_string(), "a".repeat(64));
        assert_eq!(cap("a\nb").to_string(), "a\\nb");
    }
}
