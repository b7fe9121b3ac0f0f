//! SMS through Twilio's Messages resource (API version 2010-04-01).

use serde::{Deserialize, Serialize};

use super::notify::{exchange, http_client};
use super::{AlertError, Notification, Notifier, Secret, Sent};

/// Twilio's API host.
pub const TWILIO_BASE_URL: &str = "https://api.twilio.com";

/// The longest SMS body Twilio takes, in UTF-16 code units (what Twilio counts as characters).
pub const MAX_SMS_BODY: usize = 1600;

/// How the notifier authenticates (HTTP Basic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwilioAuth {
    /// The account SID and its auth token.
    AuthToken(Secret),
    /// An API key (`SK...`) and its secret: revocable on its own, preferred.
    ApiKey {
        /// The key's SID, `SK` and 32 hex digits.
        sid: String,
        /// The key's secret.
        secret: Secret,
    },
}

/// Who the message is from: exactly one of Twilio's `From` and `MessagingServiceSid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwilioSender {
    /// A Twilio number (E.164) or an alphanumeric sender id: `From`.
    From(String),
    /// A Messaging Service, `MG` and 32 hex digits: `MessagingServiceSid`.
    MessagingService(String),
}

/// The settings of a [`TwilioSms`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwilioConfig {
    /// Scheme and host, [`TWILIO_BASE_URL`] in production. Must be `https`, except to a
    /// loopback address (tests).
    pub base_url: String,
    /// The account SID, `AC` and 32 hex digits.
    pub account_sid: String,
    /// Credentials.
    pub auth: TwilioAuth,
    /// Sender.
    pub sender: TwilioSender,
    /// The recipient, E.164 (`+` and up to 15 digits).
    pub to: String,
}

impl TwilioConfig {
    /// Settings for Twilio's production API.
    pub fn new(
        account_sid: impl Into<String>,
        auth: TwilioAuth,
        sender: TwilioSender,
        to: impl Into<String>,
    ) -> TwilioConfig {
        TwilioConfig {
            base_url: TWILIO_BASE_URL.to_owned(),
            account_sid: account_sid.into(),
            auth,
            sender,
            to: to.into(),
        }
    }
}

/// Twilio's JSON error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwilioError {
    /// Twilio's error code (see the associated constants).
    pub code: u32,
    /// What Twilio says happened.
    #[serde(default)]
    pub message: String,
    /// A link to the code's documentation.
    #[serde(default)]
    pub more_info: String,
    /// The HTTP status, repeated.
    #[serde(default)]
    pub status: u16,
}

impl TwilioError {
    /// Authentication failed (HTTP 401): wrong account SID, token or API key.
    pub const AUTHENTICATION_FAILED: u32 = 20003;
    /// Too many requests (HTTP 429).
    pub const TOO_MANY_REQUESTS: u32 = 20429;
    /// The `To` number is not a valid phone number.
    pub const INVALID_TO: u32 = 21211;
    /// The `From` number cannot send SMS.
    pub const FROM_NOT_SMS_CAPABLE: u32 = 21606;
    /// A trial account may only send to verified numbers.
    pub const UNVERIFIED_TO: u32 = 21608;
    /// The recipient unsubscribed (replied STOP).
    pub const UNSUBSCRIBED: u32 = 21610;
    /// The `To` number cannot receive SMS.
    pub const TO_NOT_SMS_CAPABLE: u32 = 21614;
}

/// What Twilio answers on success (the fields used).
#[derive(Deserialize)]
struct MessageResource {
    sid: String,
}

/// Sends each notification as an SMS to one number.
#[derive(Debug)]
pub struct TwilioSms {
    client: reqwest::Client,
    url: reqwest::Url,
    user: String,
    password: Secret,
    sender: TwilioSender,
    to: String,
}

impl TwilioSms {
    /// A notifier with `config`.
    ///
    /// # Errors
    /// [`AlertError::Notifier`] naming the setting that is malformed (SIDs, numbers, a base URL
    /// that is not HTTPS to a remote host), or when no HTTP client can be made.
    pub fn new(config: TwilioConfig) -> Result<TwilioSms, AlertError> {
        let TwilioConfig { base_url, account_sid, auth, sender, to } = config;
        check_sid("account_sid", "AC", &account_sid)?;
        let (user, password) = match auth {
            TwilioAuth::AuthToken(token) => (account_sid.clone(), token),
            TwilioAuth::ApiKey { sid, secret } => {
                check_sid("API key sid", "SK", &sid)?;
                (sid, secret)
            }
        };
        if password.expose().is_empty() {
            return Err(AlertError::Notifier("twilio: the auth token or secret is empty".into()));
        }
        match &sender {
            TwilioSender::From(from) => {
                if from.is_empty() || from.len() > 32 || from.chars().any(char::is_control) {
                    return Err(AlertError::Notifier(format!("twilio: bad `from` {from:?}")));
                }
            }
            TwilioSender::MessagingService(sid) => check_sid("messaging_service_sid", "MG", sid)?,
        }
        let digits = to.strip_prefix('+').unwrap_or("");
        if !(2..=15).contains(&digits.len())
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || digits.starts_with('0')
        {
            return Err(AlertError::Notifier(format!(
                "twilio: `to` {to:?} is not an E.164 number like +14155550100"
            )));
        }
        let url = messages_url(&base_url, &account_sid)?;
        Ok(TwilioSms { client: http_client()?, url, user, password, sender, to })
    }
}

impl Notifier for TwilioSms {
    async fn send(&self, notification: &Notification) -> Result<Sent, AlertError> {
        let body = sms_body(&notification.text);
        let sender = match &self.sender {
            TwilioSender::From(from) => ("From", from.as_str()),
            TwilioSender::MessagingService(sid) => ("MessagingServiceSid", sid.as_str()),
        };
        let request = self
            .client
            .post(self.url.clone())
            .basic_auth(&self.user, Some(self.password.expose()))
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&[("To", self.to.as_str()), sender, ("Body", body.as_str())]);
        let answer = exchange(request).await?;
        if (200..300).contains(&answer.status) {
            // Accepted: even if the body is odd, sending again would send twice.
            let id = serde_json::from_slice::<MessageResource>(&answer.body).ok().map(|m| m.sid);
            return Ok(Sent { id });
        }
        Err(AlertError::Refused {
            status: answer.status,
            retry_after: answer.retry_after,
            twilio: serde_json::from_slice(&answer.body).ok(),
        })
    }
}

/// `text` cut to at most [`MAX_SMS_BODY`] UTF-16 code units on a character boundary, ending
/// with `…` when cut.
pub fn sms_body(text: &str) -> String {
    if text.encode_utf16().count() <= MAX_SMS_BODY {
        return text.to_owned();
    }
    let mut body = String::new();
    let mut units = 0;
    for c in text.chars() {
        // Keep one unit for the ellipsis.
        if units + c.len_utf16() > MAX_SMS_BODY - 1 {
            break;
        }
        units += c.len_utf16();
        body.push(c);
    }
    body.push('…');
    body
}

fn check_sid(setting: &str, prefix: &str, sid: &str) -> Result<(), AlertError> {
    let hex = sid.strip_prefix(prefix).unwrap_or("");
    if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(AlertError::Notifier(format!(
            "twilio: {setting} {sid:?} is not {prefix} followed by 32 hex digits"
        )))
    }
}

/// `{base_url}/2010-04-01/Accounts/{account_sid}/Messages.json` (the `.json` matters: without
/// it the API answers XML).
fn messages_url(base_url: &str, account_sid: &str) -> Result<reqwest::Url, AlertError> {
    let bad = |why: &str| AlertError::Notifier(format!("twilio: base_url {base_url:?}: {why}"));
    let base = reqwest::Url::parse(base_url).map_err(|e| bad(&e.to_string()))?;
    let host = base.host_str().unwrap_or("");
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match base.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err(bad("must be https (http only to a loopback address, for tests)")),
    }
    let url = format!(
        "{}/2010-04-01/Accounts/{account_sid}/Messages.json",
        base.as_str().trim_end_matches('/')
    );
    reqwest::Url::parse(&url).map_err(|e| bad(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "AC0123456789abcdef0123456789abcdef";

    #[test]
    fn body_is_cut_on_a_char_boundary_counting_utf16_units() {
        assert_eq!(sms_body("short"), "short");
        let exact = "a".repeat(MAX_SMS_BODY);
        assert_eq!(sms_body(&exact), exact);
        let long = format!("{}🌡🌡", "a".repeat(MAX_SMS_BODY - 2));
        let body = sms_body(&long);
        assert_eq!(body.encode_utf16().count(), MAX_SMS_BODY - 1);
        assert!(body.ends_with("a…"), "the emoji (2 units) does not fit");
        let wide = "é".repeat(2 * MAX_SMS_BODY);
        assert_eq!(sms_body(&wide).chars().count(), MAX_SMS_BODY);
    }

    #[test]
    fn url_keeps_the_sid_and_json_suffix_and_refuses_plain_http_to_remote_hosts() {
        assert_eq!(
            messages_url("https://api.twilio.com/", SID).unwrap().as_str(),
            format!("https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json")
        );
        assert!(messages_url("http://127.0.0.1:8080", SID).is_ok());
        assert!(messages_url("http://[::1]:8080", SID).is_ok());
        assert!(messages_url("http://api.twilio.com", SID).is_err());
        assert!(messages_url("ftp://localhost", SID).is_err());
    }

    #[test]
    fn settings_are_checked_and_secrets_stay_out_of_debug() {
        let config = |to: &str| {
            TwilioConfig::new(
                SID,
                TwilioAuth::AuthToken(Secret::new("tok3n-value")),
                TwilioSender::From("+15005550006".into()),
                to,
            )
        };
        let sms = TwilioSms::new(config("+14155550100")).unwrap();
        assert!(!format!("{sms:?}").contains("tok3n-value"));
        for to in ["14155550100", "+", "+0123", "+1415555010012345", "+1 415"] {
            assert!(TwilioSms::new(config(to)).is_err(), "{to}");
        }
        let mut bad_sid = config("+14155550100");
        bad_sid.account_sid = "AC/../../x".into();
        assert!(TwilioSms::new(bad_sid).is_err());
        let mut service = config("+14155550100");
        service.sender = TwilioSender::MessagingService("MG123".into());
        assert!(TwilioSms::new(service).is_err());
    }

    #[test]
    fn error_body_parses() {
        let body = br#"{"code": 21211, "message": "The 'To' number +1555 is not a valid phone number.", "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}"#;
        let error: TwilioError = serde_json::from_slice(body).unwrap();
        assert_eq!((error.code, error.status), (TwilioError::INVALID_TO, 400));
    }
}
