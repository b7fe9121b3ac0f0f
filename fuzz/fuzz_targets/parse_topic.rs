//! Topic parsing: any bytes a broker delivers as a topic name.
//!
//! Nothing may panic, and a topic that parses must print back to exactly the same text (so no
//! two topic strings can name one device, LED or sensor).
#![no_main]

use ledtemp_core::Topic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = core::str::from_utf8(data) else { return };
    if let Ok(topic) = Topic::parse(text) {
        assert_eq!(topic.to_topic_string().as_str(), text, "topic does not round-trip");
    }
});
