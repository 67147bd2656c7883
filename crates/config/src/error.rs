//! One error type that names the key, its value and what is wrong.

use std::fmt;

/// A config problem, printed by the binary as
/// `config error: pool.nonce1length = 12: must be between 2 and 8`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path such as `pool.nonce1length` or `nodes[1].url` (ckpool
    /// key names in a ckpool import).
    pub key: String,
    /// The offending value as written (empty when not applicable; never a
    /// secret).
    pub value: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.key.is_empty(), self.value.is_empty()) {
            (true, _) => write!(f, "{}", self.reason),
            (false, true) => write!(f, "{}: {}", self.key, self.reason),
            (false, false) => write!(f, "{} = {}: {}", self.key, self.value, self.reason),
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub fn new(
        key: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            key: key.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// Longest excerpt of the input quoted as `value` in a syntax error.
const MAX_VALUE_EXCERPT: usize = 60;

/// Turns a TOML error into a [`ConfigError`] with the key path, the text at
/// the error and its line and column.
pub(crate) fn from_toml(
    text: &str,
    error: serde_path_to_error::Error<toml::de::Error>,
) -> ConfigError {
    let path = error.path().to_string();
    let inner = error.into_inner();
    let span = inner.span();
    let value = span
        .as_ref()
        .and_then(|span| text.get(span.clone()))
        .map(|excerpt| {
            let first_line = excerpt.lines().next().unwrap_or_default().trim();
            first_line
                .chars()
                .take(MAX_VALUE_EXCERPT)
                .collect::<String>()
        })
        .unwrap_or_default();
    let position = span
        .map(|span| {
            let (line, column) = line_column(text, span.start);
            format!("line {line}, column {column}: ")
        })
        .unwrap_or_default();
    let key = if path.is_empty() || path == "." {
        String::new()
    } else {
        path
    };
    // A node password is never quoted back, not even a mistyped one
    // (`pass = 12345678`): the excerpt and serde's message would both show
    // it. Found by the `ckpool_config` fuzz target.
    if is_password_key(&key) {
        return ConfigError {
            key,
            value: String::new(),
            reason: format!("{position}must be a string (the value is not shown)"),
        };
    }
    ConfigError {
        key,
        value,
        reason: format!("{position}{}", inner.message().trim()),
    }
}

/// `nodes[N].pass`, the only secret a config file holds outside a URL.
fn is_password_key(key: &str) -> bool {
    key.strip_prefix("nodes[")
        .and_then(|rest| rest.split_once("].pass"))
        .is_some_and(|(index, after)| after.is_empty() && index.bytes().all(|b| b.is_ascii_digit()))
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .unwrap_or_default()
        .chars()
        .count()
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use crate::model::Config;

    /// Regression (fuzz target `ckpool_config`): a password written without
    /// quotes was quoted back in the error, in `value` and in the reason.
    #[test]
    fn a_mistyped_node_password_is_not_quoted_back() {
        for value in ["12345678", "1.5", "true", "[\"hunter2\"]"] {
            let text = format!("[[nodes]]\nurl = \"http://127.0.0.1:8332\"\npass = {value}\n");
            let error = Config::from_toml_str(&text).unwrap_err();
            assert_eq!(error.key, "nodes[0].pass");
            assert_eq!(error.value, "");
            assert!(!error.to_string().contains("12345678"), "{error}");
            assert!(!error.to_string().contains("hunter2"), "{error}");
            assert_eq!(
                error.to_string(),
                "nodes[0].pass: line 3, column 8: must be a string (the value is not shown)"
            );
        }
    }
}
