//! `[notify]`: signed webhooks for block found, block submitted, block
//! confirmed or orphaned, and worker offline, delivered from the journal.

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// The notice types a webhook can ask for (all by default).
pub const NOTICE_TYPES: &[&str] = &[
    "block_found",
    "block_submitted",
    "block_confirmed",
    "block_orphaned",
    "worker_offline",
];

/// Shortest secret: 128 bits, as the Standard Webhooks specification asks
/// (24 to 64 random bytes recommended).
pub const MIN_WEBHOOK_SECRET_BYTES: usize = 16;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifySection {
    /// Seconds without an accepted share after which a worker is reported
    /// offline, once until it submits again; 0: never.
    pub worker_offline_after_s: u64,
    /// Longest wait between two tries of a notice an endpoint did not take.
    pub retry_max_s: u64,
    /// Seconds an endpoint has to answer one delivery.
    pub timeout_s: u64,
    /// The endpoints; none: no notifications.
    pub webhooks: Vec<WebhookConfig>,
}

impl Default for NotifySection {
    fn default() -> NotifySection {
        NotifySection {
            worker_offline_after_s: 600,
            retry_max_s: 300,
            timeout_s: 10,
            webhooks: Vec::new(),
        }
    }
}

/// One endpoint. Its URL may carry a token (Discord, Slack, ntfy): logs and
/// metrics name it by `name`, never by URL.
#[derive(Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Its name in logs and metrics (`webhook<N>` if empty).
    pub name: String,
    /// Where notices are POSTed (http:// or https://).
    pub url: String,
    /// The signing secret: `whsec_<base64>` as the Standard Webhooks
    /// specification has it, or any text of 16+ bytes. Prefer
    /// `TBG_WEBHOOK_<N>_SECRET`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Notice types wanted (see [`NOTICE_TYPES`]); empty: all.
    pub events: Vec<String>,
    /// Payout addresses whose notices are wanted; empty: every address.
    pub addresses: Vec<String>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &"***")
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("events", &self.events)
            .field("addresses", &self.addresses)
            .finish()
    }
}

impl WebhookConfig {
    /// The name logs and metrics use.
    pub fn display_name(&self, index: usize) -> String {
        if self.name.is_empty() {
            format!("webhook{index}")
        } else {
            self.name.clone()
        }
    }
}

impl NotifySection {
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if !(1..=86_400).contains(&self.retry_max_s) {
            return Err(ConfigError::new(
                "notify.retry_max_s",
                self.retry_max_s,
                "must be 1..=86400",
            ));
        }
        if !(1..=120).contains(&self.timeout_s) {
            return Err(ConfigError::new(
                "notify.timeout_s",
                self.timeout_s,
                "must be 1..=120",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (index, hook) in self.webhooks.iter().enumerate() {
            let key = |field: &str| format!("notify.webhooks[{index}].{field}");
            let name = hook.display_name(index);
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                || name.len() > 64
            {
                return Err(ConfigError::new(
                    key("name"),
                    format!("{name:?}"),
                    "letters, digits, - and _ only, at most 64",
                ));
            }
            if !names.insert(name.clone()) {
                return Err(ConfigError::new(
                    key("name"),
                    format!("{name:?}"),
                    "two webhooks have this name: each keeps its own cursor by name",
                ));
            }
            let scheme_ok = hook.url.starts_with("http://") || hook.url.starts_with("https://");
            let host = hook
                .url
                .split_once("://")
                .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""))
                .unwrap_or("");
            if !scheme_ok || host.is_empty() || hook.url.chars().any(char::is_whitespace) {
                // The URL is not quoted: it may hold a token.
                return Err(ConfigError::new(
                    key("url"),
                    "(not shown)",
                    "must be an http:// or https:// URL with a host",
                ));
            }
            match &hook.secret {
                None => {
                    return Err(ConfigError::new(
                        key("secret"),
                        "unset",
                        format!(
                            "every webhook is signed: set TBG_WEBHOOK_{index}_SECRET (e.g. whsec_ and `openssl rand -base64 32`)"
                        ),
                    ))
                }
                Some(secret) => {
                    if let Err(reason) = webhook_key(secret) {
                        return Err(ConfigError::new(key("secret"), "(not shown)", reason));
                    }
                }
            }
            if let Some(unknown) = hook
                .events
                .iter()
                .find(|e| !NOTICE_TYPES.contains(&e.as_str()))
            {
                return Err(ConfigError::new(
                    key("events"),
                    format!("{unknown:?}"),
                    format!("not a notice type; one of {}", NOTICE_TYPES.join(", ")),
                ));
            }
        }
        Ok(())
    }
}

/// The HMAC key of a secret: the bytes after `whsec_` decoded from base64
/// (the Standard Webhooks form), or the text's own bytes.
pub fn webhook_key(secret: &str) -> Result<Vec<u8>, String> {
    let key = match secret.strip_prefix("whsec_") {
        Some(encoded) => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| "whsec_ must be followed by base64".to_owned())?
        }
        None => secret.as_bytes().to_vec(),
    };
    if key.len() < MIN_WEBHOOK_SECRET_BYTES {
        return Err(format!(
            "must hold at least {MIN_WEBHOOK_SECRET_BYTES} bytes (`echo whsec_$(openssl rand -base64 32)`)"
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn with_webhook(extra: &str) -> Config {
        Config::from_toml_str(&format!(
            "network = \"regtest\"\n[[nodes]]\nurl = \"127.0.0.1:1\"\nuser = \"u\"\npass = \"p\"\n[[notify.webhooks]]\nurl = \"https://hooks.example.com/t/SECRET-TOKEN\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn a_webhook_needs_a_secret_from_the_environment_that_is_never_shown() {
        let mut config = with_webhook("");
        let missing = config.validate().unwrap_err().to_string();
        assert!(missing.contains("TBG_WEBHOOK_0_SECRET"), "{missing}");
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let applied =
            config.apply_env(&|name| (name == "TBG_WEBHOOK_0_SECRET").then(|| secret.to_owned()));
        assert_eq!(applied, ["TBG_WEBHOOK_0_SECRET"]);
        config.validate().unwrap();
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("MfKQ9r8") && !shown.contains("SECRET-TOKEN"),
            "{shown}"
        );
        assert_eq!(config.notify.webhooks[0].display_name(0), "webhook0");
    }

    #[test]
    fn bad_webhooks_are_named_without_quoting_their_url_or_secret() {
        let cases = [
            (
                "secret = \"short\"",
                "notify.webhooks[0].secret",
                "at least 16 bytes",
            ),
            (
                "secret = \"whsec_not base64!\"",
                "notify.webhooks[0].secret",
                "base64",
            ),
            (
                "secret = \"0123456789abcdef\"\nevents = [\"block_mined\"]",
                "notify.webhooks[0].events",
                "not a notice type",
            ),
            (
                "secret = \"0123456789abcdef\"\nname = \"my phone\"",
                "notify.webhooks[0].name",
                "letters, digits",
            ),
        ];
        for (extra, key, reason) in cases {
            let error = with_webhook(extra).validate().unwrap_err();
            let text = error.to_string();
            assert!(
                text.contains(key) && text.contains(reason),
                "{extra}: {text}"
            );
            assert!(
                !text.contains("SECRET-TOKEN") && !text.contains("short"),
                "{text}"
            );
        }
        let mut bad_url = with_webhook("secret = \"0123456789abcdef\"");
        bad_url.notify.webhooks[0].url = "ftp://files.example.com/SECRET-TOKEN".into();
        let text = bad_url.validate().unwrap_err().to_string();
        assert!(
            text.contains("notify.webhooks[0].url") && !text.contains("SECRET-TOKEN"),
            "{text}"
        );
        let mut no_journal = with_webhook("secret = \"0123456789abcdef\"");
        no_journal.journal.enabled = false;
        let text = no_journal.validate().unwrap_err().to_string();
        assert!(text.contains("journal.enabled"), "{text}");
    }
}
