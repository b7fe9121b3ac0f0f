//! The `[alert]` section of the server's TOML file: rules, notifiers and which rule goes to
//! which notifier.
//!
//! ```toml
//! [[alert.rule]]
//! id = "kitchen-hot"
//! device = "kitchen-pi"
//! sensor = "room"              # optional: each sensor of the device when left out
//! above_celsius = 30.0         # or below_celsius, offline_after_secs, led_change = true
//! hysteresis_celsius = 2.0     # resolved below 28 °C
//! min_duration_secs = 60
//! cooldown_secs = 3600
//! notify = ["sms"]
//!
//! [alert.notifier.sms]
//! kind = "twilio"
//! account_sid = "AC0123456789abcdef0123456789abcdef"
//! auth_token_env = "TWILIO_AUTH_TOKEN"   # or auth_token_file, or api_key_sid + api_key_secret_env/_file
//! from = "+15005550006"                  # or messaging_service_sid
//! to = "+14155550100"
//! daily_cap = 20
//! ```
//!
//! Secrets (auth token, API key secret, webhook URL and bearer token) are read from an
//! environment variable (`..._env`) or a file (`..._file`) when the configuration is resolved;
//! the file cannot hold them inline.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::Error;
use crate::alerts::{
    AnyNotifier, Condition, DEFAULT_DAILY_CAP, DeliveryPolicy, Engine, LogNotifier, Rule, Secret,
    TWILIO_BASE_URL, Threshold, TwilioAuth, TwilioConfig, TwilioSender, TwilioSms, Webhook,
    WebhookConfig,
};

/// The `[alert]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AlertSection {
    #[serde(default)]
    rule: Vec<RuleSection>,
    #[serde(default)]
    notifier: BTreeMap<String, NotifierSection>,
}

/// One `[[alert.rule]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSection {
    id: String,
    device: String,
    sensor: Option<String>,
    led: Option<String>,
    above_celsius: Option<f64>,
    below_celsius: Option<f64>,
    offline_after_secs: Option<u64>,
    #[serde(default)]
    led_change: bool,
    #[serde(default)]
    hysteresis_celsius: f64,
    #[serde(default)]
    min_duration_secs: u64,
    #[serde(default)]
    cooldown_secs: u64,
    notify_resolved: Option<bool>,
    notify: Vec<String>,
}

/// One `[alert.notifier.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifierSection {
    kind: String,
    // twilio
    account_sid: Option<String>,
    auth_token_env: Option<String>,
    auth_token_file: Option<PathBuf>,
    api_key_sid: Option<String>,
    api_key_secret_env: Option<String>,
    api_key_secret_file: Option<PathBuf>,
    from: Option<String>,
    messaging_service_sid: Option<String>,
    to: Option<String>,
    base_url: Option<String>,
    // webhook
    url_env: Option<String>,
    url_file: Option<PathBuf>,
    bearer_env: Option<String>,
    bearer_file: Option<PathBuf>,
    // delivery policy
    daily_cap: Option<u32>,
    max_attempts: Option<u32>,
    initial_backoff_secs: Option<u64>,
    max_backoff_secs: Option<u64>,
}

/// What a notifier is, with its secrets already read. Built into an [`AnyNotifier`] when the
/// server starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifierKind {
    /// SMS through Twilio.
    Twilio(TwilioConfig),
    /// A JSON webhook.
    Webhook(WebhookConfig),
    /// The log.
    Log,
}

/// One configured notifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifierSettings {
    /// Its name (the key of `[alert.notifier.NAME]`), as rules name it.
    pub name: String,
    /// What it is.
    pub kind: NotifierKind,
    /// Cap and retries.
    pub policy: DeliveryPolicy,
}

impl NotifierSettings {
    /// The notifier itself.
    ///
    /// # Errors
    /// [`Error::Config`] naming the notifier and the setting that is malformed.
    pub fn build(&self) -> Result<AnyNotifier, Error> {
        let built = match &self.kind {
            NotifierKind::Twilio(config) => TwilioSms::new(config.clone()).map(AnyNotifier::Twilio),
            NotifierKind::Webhook(config) => Webhook::new(config.clone()).map(AnyNotifier::Webhook),
            NotifierKind::Log => Ok(AnyNotifier::Log(LogNotifier)),
        };
        built.map_err(|e| Error::Config(format!("alert.notifier.{}: {e}", self.name)))
    }

    /// `twilio`, `webhook` or `log`.
    pub fn kind_label(&self) -> &'static str {
        match self.kind {
            NotifierKind::Twilio(_) => "twilio",
            NotifierKind::Webhook(_) => "webhook",
            NotifierKind::Log => "log",
        }
    }
}

/// The validated alert configuration: rules, notifiers, and per rule the notifiers it goes to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertsConfig {
    /// The rules, in the file's order.
    pub rules: Vec<Rule>,
    /// The notifiers, sorted by name.
    pub notifiers: Vec<NotifierSettings>,
    /// Rule id -> indices into `notifiers`.
    pub routes: BTreeMap<String, Vec<usize>>,
}

impl AlertsConfig {
    /// Whether any rule is configured.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

fn secret(
    field: &str,
    env: Option<&String>,
    file: Option<&PathBuf>,
) -> Result<Option<Secret>, String> {
    match (env, file) {
        (Some(_), Some(_)) => Err(format!("give one of {field}_env and {field}_file")),
        (Some(name), None) => {
            Secret::from_env(name).map(Some).map_err(|e| format!("{field}_env: {e}"))
        }
        (None, Some(path)) => {
            Secret::from_file(path).map(Some).map_err(|e| format!("{field}_file: {e}"))
        }
        (None, None) => Ok(None),
    }
}

fn milli_celsius(field: &str, celsius: f64) -> Result<i32, String> {
    let milli = (celsius * 1000.0).round();
    if !milli.is_finite() || milli < f64::from(i32::MIN) || milli > f64::from(i32::MAX) {
        return Err(format!("{field} = {celsius} is out of range"));
    }
    Ok(milli as i32)
}

fn rule(section: RuleSection) -> Result<Rule, String> {
    let conditions = usize::from(section.above_celsius.is_some())
        + usize::from(section.below_celsius.is_some())
        + usize::from(section.offline_after_secs.is_some())
        + usize::from(section.led_change);
    if conditions != 1 {
        return Err("give exactly one of above_celsius, below_celsius, offline_after_secs and \
                    led_change = true"
            .into());
    }
    let is_temperature = section.above_celsius.is_some() || section.below_celsius.is_some();
    if section.sensor.is_some() && !is_temperature {
        return Err("sensor is for above_celsius and below_celsius rules only".into());
    }
    if section.led.is_some() && !section.led_change {
        return Err("led is for led_change rules only".into());
    }
    if !is_temperature && (section.hysteresis_celsius != 0.0 || section.min_duration_secs != 0) {
        return Err(
            "hysteresis_celsius and min_duration_secs are for temperature rules only".into()
        );
    }
    let threshold = |celsius: f64, field: &str| -> Result<Threshold, String> {
        let hysteresis = milli_celsius("hysteresis_celsius", section.hysteresis_celsius)?;
        let hysteresis = u32::try_from(hysteresis)
            .map_err(|_| "hysteresis_celsius must not be negative".to_owned())?;
        let mut threshold = Threshold::new(section.device.clone(), milli_celsius(field, celsius)?)
            .hysteresis(hysteresis)
            .min_duration(Duration::from_secs(section.min_duration_secs));
        threshold.sensor = section.sensor.clone();
        Ok(threshold)
    };
    let condition = if let Some(celsius) = section.above_celsius {
        Condition::TemperatureAbove(threshold(celsius, "above_celsius")?)
    } else if let Some(celsius) = section.below_celsius {
        Condition::TemperatureBelow(threshold(celsius, "below_celsius")?)
    } else if let Some(secs) = section.offline_after_secs {
        if secs == 0 {
            return Err("offline_after_secs must be at least 1".into());
        }
        Condition::Offline { device: section.device.clone(), after: Duration::from_secs(secs) }
    } else {
        Condition::LedChange { device: section.device.clone(), led: section.led.clone() }
    };
    let mut rule =
        Rule::new(section.id, condition).with_cooldown(Duration::from_secs(section.cooldown_secs));
    if let Some(notify_resolved) = section.notify_resolved {
        rule = rule.with_notify_resolved(notify_resolved);
    }
    Ok(rule)
}

fn twilio(section: &NotifierSection) -> Result<TwilioConfig, String> {
    let account_sid =
        section.account_sid.clone().ok_or_else(|| "account_sid is missing".to_owned())?;
    let token =
        secret("auth_token", section.auth_token_env.as_ref(), section.auth_token_file.as_ref())?;
    let key_secret = secret(
        "api_key_secret",
        section.api_key_secret_env.as_ref(),
        section.api_key_secret_file.as_ref(),
    )?;
    let auth = match (token, &section.api_key_sid, key_secret) {
        (Some(token), None, None) => TwilioAuth::AuthToken(token),
        (None, Some(sid), Some(secret)) => TwilioAuth::ApiKey { sid: sid.clone(), secret },
        _ => {
            return Err("give auth_token_env or auth_token_file, or api_key_sid with \
                        api_key_secret_env or api_key_secret_file"
                .into());
        }
    };
    let sender = match (&section.from, &section.messaging_service_sid) {
        (Some(from), None) => TwilioSender::From(from.clone()),
        (None, Some(sid)) => TwilioSender::MessagingService(sid.clone()),
        _ => return Err("give one of from and messaging_service_sid".into()),
    };
    let to = section.to.clone().ok_or_else(|| "to is missing".to_owned())?;
    let base_url = section.base_url.clone().unwrap_or_else(|| TWILIO_BASE_URL.to_owned());
    Ok(TwilioConfig { base_url, account_sid, auth, sender, to })
}

fn notifier(name: &str, section: NotifierSection) -> Result<NotifierSettings, String> {
    let twilio_only = [
        ("account_sid", section.account_sid.is_some()),
        ("auth_token_env", section.auth_token_env.is_some()),
        ("auth_token_file", section.auth_token_file.is_some()),
        ("api_key_sid", section.api_key_sid.is_some()),
        ("api_key_secret_env", section.api_key_secret_env.is_some()),
        ("api_key_secret_file", section.api_key_secret_file.is_some()),
        ("from", section.from.is_some()),
        ("messaging_service_sid", section.messaging_service_sid.is_some()),
        ("to", section.to.is_some()),
        ("base_url", section.base_url.is_some()),
    ];
    let webhook_only = [
        ("url_env", section.url_env.is_some()),
        ("url_file", section.url_file.is_some()),
        ("bearer_env", section.bearer_env.is_some()),
        ("bearer_file", section.bearer_file.is_some()),
    ];
    fn stray(fields: &[(&'static str, bool)]) -> Option<&'static str> {
        fields.iter().find(|(_, set)| *set).map(|(field, _)| *field)
    }
    let kind = match section.kind.as_str() {
        "twilio" => {
            if let Some(field) = stray(&webhook_only) {
                return Err(format!("{field} is not a twilio setting"));
            }
            NotifierKind::Twilio(twilio(&section)?)
        }
        "webhook" => {
            if let Some(field) = stray(&twilio_only) {
                return Err(format!("{field} is not a webhook setting"));
            }
            let url = secret("url", section.url_env.as_ref(), section.url_file.as_ref())?
                .ok_or_else(|| "give url_env or url_file".to_owned())?;
            let bearer =
                secret("bearer", section.bearer_env.as_ref(), section.bearer_file.as_ref())?;
            NotifierKind::Webhook(WebhookConfig { url, bearer })
        }
        "log" => {
            if let Some(field) = stray(&twilio_only).or_else(|| stray(&webhook_only)) {
                return Err(format!("{field} is not a log setting"));
            }
            NotifierKind::Log
        }
        other => return Err(format!("kind {other:?}: use \"twilio\", \"webhook\" or \"log\"")),
    };
    let defaults = DeliveryPolicy::default();
    let policy = DeliveryPolicy {
        // 0 in the file: no cap.
        daily_cap: match section.daily_cap {
            Some(0) => None,
            Some(cap) => Some(cap),
            None => Some(DEFAULT_DAILY_CAP),
        },
        max_attempts: section.max_attempts.unwrap_or(defaults.max_attempts),
        initial_backoff: section
            .initial_backoff_secs
            .map_or(defaults.initial_backoff, Duration::from_secs),
        max_backoff: section.max_backoff_secs.map_or(defaults.max_backoff, Duration::from_secs),
    };
    if policy.max_attempts == 0 {
        return Err("max_attempts must be at least 1".into());
    }
    Ok(NotifierSettings { name: name.to_owned(), kind, policy })
}

impl AlertSection {
    /// Validates the section and reads the secrets it points at.
    ///
    /// # Errors
    /// [`Error::Config`] naming the rule or notifier and the field.
    pub(crate) fn resolve(self) -> Result<AlertsConfig, Error> {
        let mut notifiers = Vec::new();
        for (name, section) in self.notifier {
            let settings = notifier(&name, section)
                .map_err(|e| Error::Config(format!("alert.notifier.{name}: {e}")))?;
            // Malformed SIDs, numbers and URLs are reported now rather than at the first alert.
            settings.build()?;
            notifiers.push(settings);
        }
        let mut rules = Vec::new();
        let mut routes = BTreeMap::new();
        for (index, section) in self.rule.into_iter().enumerate() {
            let at = format!("alert.rule[{index}] (id {:?})", section.id);
            if section.notify.is_empty() {
                return Err(Error::Config(format!(
                    "{at}: notify is empty: name at least one [alert.notifier.NAME]"
                )));
            }
            let mut targets = Vec::new();
            for name in &section.notify {
                let target = notifiers.iter().position(|n| &n.name == name).ok_or_else(|| {
                    Error::Config(format!(
                        "{at}: notify names {name:?}, which is not an \
                                           [alert.notifier.{name}]"
                    ))
                })?;
                if !targets.contains(&target) {
                    targets.push(target);
                }
            }
            let id = section.id.clone();
            rules.push(rule(section).map_err(|e| Error::Config(format!("{at}: {e}")))?);
            routes.insert(id, targets);
        }
        // Rule ids, devices and durations.
        Engine::new(rules.clone()).map_err(|e| Error::Config(e.to_string()))?;
        Ok(AlertsConfig { rules, notifiers, routes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AlertsConfig, Error> {
        #[derive(Deserialize)]
        struct File {
            alert: AlertSection,
        }
        let file: File = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        file.alert.resolve()
    }

    fn error(text: &str) -> String {
        match parse(text) {
            Err(Error::Config(message)) => message,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn rules_and_notifiers_are_parsed_and_routed() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let config = parse(&format!(
            r#"
            [[alert.rule]]
            id = "kitchen-hot"
            device = "kitchen-pi"
            sensor = "room"
            above_celsius = 30.5
            hysteresis_celsius = 2.0
            min_duration_secs = 60
            cooldown_secs = 3600
            notify = ["sms", "log"]

            [[alert.rule]]
            id = "kitchen-offline"
            device = "kitchen-pi"
            offline_after_secs = 300
            notify_resolved = false
            notify = ["log"]

            [alert.notifier.sms]
            kind = "twilio"
            account_sid = "AC0123456789abcdef0123456789abcdef"
            auth_token_file = {token:?}
            from = "+15005550006"
            to = "+14155550100"
            daily_cap = 5

            [alert.notifier.log]
            kind = "log"
            "#
        ))
        .unwrap();
        let hot = Threshold::new("kitchen-pi", 30_500)
            .sensor("room")
            .hysteresis(2_000)
            .min_duration(Duration::from_secs(60));
        assert_eq!(
            config.rules[0],
            Rule::new("kitchen-hot", Condition::TemperatureAbove(hot))
                .with_cooldown(Duration::from_secs(3600))
        );
        assert_eq!(
            config.rules[1].condition,
            Condition::Offline { device: "kitchen-pi".into(), after: Duration::from_secs(300) }
        );
        assert!(!config.rules[1].notify_resolved);
        // Sorted by name: log, sms.
        assert_eq!(config.notifiers[0].name, "log");
        assert_eq!(config.notifiers[1].policy.daily_cap, Some(5));
        let NotifierKind::Twilio(twilio) = &config.notifiers[1].kind else { panic!() };
        assert_eq!(twilio.base_url, TWILIO_BASE_URL);
        assert_eq!(twilio.auth, TwilioAuth::AuthToken(Secret::new("s3cret")));
        assert_eq!(config.routes["kitchen-hot"], vec![1, 0]);
        assert_eq!(config.routes["kitchen-offline"], vec![0]);
        // The secret never shows.
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn invalid_settings_name_the_field() {
        let log = "[alert.notifier.log]\nkind = \"log\"\n";
        let rule = "[[alert.rule]]\nid = \"r\"\ndevice = \"d\"\nnotify = [\"log\"]\n";
        for (text, needle) in [
            (format!("{rule}above_celsius = 1.0\nbelow_celsius = 0.0\n{log}"), "exactly one"),
            (format!("{rule}offline_after_secs = 0\n{log}"), "offline_after_secs"),
            (format!("{rule}offline_after_secs = 5\nsensor = \"x\"\n{log}"), "sensor"),
            (
                format!("{rule}above_celsius = 1.0\nhysteresis_celsius = -1.0\n{log}"),
                "hysteresis_celsius",
            ),
            (format!("{rule}above_celsius = 1e300\n{log}"), "above_celsius"),
            (
                "[[alert.rule]]\nid = \"r\"\ndevice = \"d\"\nabove_celsius = 1.0\n\
                 notify = [\"sms\"]\n"
                    .to_owned(),
                "\"sms\"",
            ),
            (format!("{rule}above_celsius = 1.0\n{log}{rule}above_celsius = 2.0\n"), "\"r\""),
            ("[alert.notifier.x]\nkind = \"pager\"\n".to_owned(), "alert.notifier.x: kind"),
            (
                "[alert.notifier.sms]\nkind = \"twilio\"\naccount_sid = \"AC0\"\n\
                 auth_token_env = \"LEDTEMP_TEST_SURELY_UNSET_VARIABLE\"\nfrom = \"+1500\"\n\
                 to = \"+1415\"\n"
                    .to_owned(),
                "LEDTEMP_TEST_SURELY_UNSET_VARIABLE",
            ),
            (
                "[alert.notifier.sms]\nkind = \"twilio\"\naccount_sid = \"AC0\"\nfrom = \"+1\"\n\
                 to = \"+1415\"\n"
                    .to_owned(),
                "auth_token_env",
            ),
            ("[alert.notifier.w]\nkind = \"webhook\"\nto = \"+1\"\n".to_owned(), "to is not"),
            ("[alert.notifier.w]\nkind = \"webhook\"\nurl = \"http://x\"\n".to_owned(), "url"),
        ] {
            let message = error(&text);
            assert!(message.contains(needle), "{needle:?} not in {message:?} for\n{text}");
        }
    }

    #[test]
    fn a_bad_twilio_sid_is_reported_at_start_without_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret").unwrap();
        let message = error(&format!(
            "[alert.notifier.sms]\nkind = \"twilio\"\naccount_sid = \"XX1\"\n\
             auth_token_file = {token:?}\nfrom = \"+15005550006\"\nto = \"+14155550100\"\n"
        ));
        assert!(message.contains("alert.notifier.sms") && message.contains("account_sid"));
        assert!(!message.contains("s3cret"));
    }
}
