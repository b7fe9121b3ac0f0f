//! A generic JSON webhook.

use std::fmt;

use serde::Serialize;

use super::notify::{exchange, http_client};
use super::{AlertError, Notification, Notifier, Secret, Sent};

/// The settings of a [`Webhook`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Where to POST, `http` or `https`. A secret: many services put a token in the URL.
    pub url: Secret,
    /// Sent as `Authorization: Bearer ...` when set.
    pub bearer: Option<Secret>,
}

/// POSTs each notification as JSON: the fields of [`Notification`] and `at`, the time as
/// RFC 3339 (UTC). Any 2xx answer is success.
///
/// ```json
/// {"alert_id":7,"rule":"kitchen-hot","device":"kitchen-pi","subject":"room","kind":"firing",
///  "at_ms":1700000060000,"milli_celsius":31500,"led_on":null,
///  "text":"ALERT kitchen-pi/room 31.5 °C, ...","at":"2023-11-14T22:14:20Z"}
/// ```
pub struct Webhook {
    client: reqwest::Client,
    url: reqwest::Url,
    bearer: Option<Secret>,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &"<redacted>")
            .field("bearer", &self.bearer)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Payload<'a> {
    #[serde(flatten)]
    notification: &'a Notification,
    at: String,
}

impl Webhook {
    /// A webhook with `config`.
    ///
    /// # Errors
    /// [`AlertError::Notifier`] when the URL is not an `http` or `https` URL (the message does
    /// not repeat it), or when no HTTP client can be made.
    pub fn new(config: WebhookConfig) -> Result<Webhook, AlertError> {
        let url = reqwest::Url::parse(config.url.expose())
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
            .ok_or_else(|| AlertError::Notifier("webhook: the url is not an http(s) URL".into()))?;
        Ok(Webhook { client: http_client()?, url, bearer: config.bearer })
    }
}

impl Notifier for Webhook {
    async fn send(&self, notification: &Notification) -> Result<Sent, AlertError> {
        let payload =
            Payload { notification, at: crate::model::UnixMillis(notification.at_ms).to_rfc3339() };
        let mut request = self.client.post(self.url.clone()).json(&payload);
        if let Some(token) = &self.bearer {
            request = request.bearer_auth(token.expose());
        }
        let answer = exchange(request).await?;
        if (200..300).contains(&answer.status) {
            Ok(Sent::default())
        } else {
            Err(AlertError::Refused {
                status: answer.status,
                retry_after: answer.retry_after,
                twilio: None,
            })
        }
    }
}
