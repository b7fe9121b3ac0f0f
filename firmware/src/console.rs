//! Output on the semihosting console without `core::fmt` (which would add about 7 KB of flash).

use cortex_m_semihosting::hio;

fn write(bytes: &[u8]) {
    if let Ok(mut out) = hio::hstdout() {
        let _ = out.write_all(bytes);
    }
}

/// One line of text.
pub fn line(text: &[u8]) {
    write(text);
    write(b"\n");
}

/// `<tag><topic> <hex of payload>`.
pub fn frame(tag: &[u8], topic: &[u8], payload: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; 2 * 512];
    let mut len = 0;
    for byte in payload.iter().take(512) {
        hex[len] = HEX[usize::from(byte >> 4)];
        hex[len + 1] = HEX[usize::from(byte & 0x0f)];
        len += 2;
    }
    write(tag);
    write(topic);
    write(b" ");
    line(&hex[..len]);
}

/// `<label> <decimal>`.
pub fn number(label: &[u8], value: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = value;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    write(label);
    write(b" ");
    line(&digits[i..]);
}
