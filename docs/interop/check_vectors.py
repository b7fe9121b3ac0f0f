#!/usr/bin/env python3
"""Independent check of ledtemp-core/tests/vectors.json, written from docs/protocol.md alone.

With Python's `cryptography` package (pip install cryptography) it
- rebuilds every frame of `vectors` and compares byte for byte, then opens it again with the
  receiver below and compares the message;
- re-seals the payload of every authentic frame of `rejected` and checks that the receiver below
  refuses every frame of `rejected` for the stated reason;
- runs every step of `replay` through the replay window below;
- runs every entry of `command_checks` through the node's checks of a command below.
Run: python3 docs/interop/check_vectors.py
"""
import json
import pathlib
import struct
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

VECTORS = pathlib.Path(__file__).resolve().parents[2] / "ledtemp-core" / "tests" / "vectors.json"
STATE = {"off": 0, "on": 1}
STATE_NAME = {0: "off", 1: "on"}
HEADER_LEN, TAG_LEN, MAX_FRAME_LEN, MAX_LEDS, WIDTH = 7, 16, 301, 8, 64
MAX_SEQUENCE = 2**40 - 1
# The step of "Receiving, in this order" that refuses a frame for each reason.
STEP = {"Oversize": 2, "Truncated": 2, "UnsupportedVersion": 2, "UnknownKey": 3, "Unauthentic": 4,
        "MalformedPayload": 5}
# The step of the node's checks of a command ("Commands") for each reason; the codec's are 3.
COMMAND_STEP = {"InvalidTopic": 1, "UnknownLed": 2, "StaleCommand": 4, "CommandExpired": 5,
                "Replayed": 6, "TooOld": 6}
NAME_CHARS = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class Refused(Exception):
    """A frame refused; the argument is the reason as ledtemp_core::Error's Debug prints it."""


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def payload(m: dict) -> bytes:
    kind = m["kind"]
    if kind == "command":
        return (bytes([STATE[m["state"]]]) + struct.pack("<Q", m["session"])
                + struct.pack("<I", m["expires_ms"]))
    uptime = struct.pack("<I", m["uptime_ms"])
    if kind == "temperature":
        return struct.pack("<i", m["milli_celsius"]) + uptime
    if kind == "led":
        return bytes([STATE[m["state"]]]) + uptime
    if kind == "online":
        body = uptime + b"\x00" + varint(len(m["leds"]))
        for led in m["leds"]:
            name = led["led"].encode()
            body += varint(len(name)) + name + bytes([STATE[led["state"]]])
        return body
    if kind == "offline":
        return uptime + b"\x01"
    raise ValueError(kind)


def topic(device: str, m: dict) -> str:
    kind = m["kind"]
    if kind == "temperature":
        return f"ledtemp/{device}/temp/{m['sensor']}"
    if kind == "led":
        return f"ledtemp/{device}/led/{m['led']}"
    if kind == "command":
        return f"ledtemp/{device}/cmd/{m['led']}"
    return f"ledtemp/{device}/status"


def nonce_of(key_id: int, sequence: int, t: str) -> bytes:
    """Version, key id, direction (01 on a command topic, to the device; else 00), 00, sequence."""
    direction = 1 if t.split("/")[2] == "cmd" else 0
    return bytes([1, key_id, direction, 0]) + sequence.to_bytes(8, "big")


def cipher(aead: str, key: bytes):
    return AESGCM(key) if aead == "AES-128-GCM" else ChaCha20Poly1305(key)


def seal(aead: str, key: bytes, key_id: int, sequence: int, t: str, body: bytes,
         nonce: bytes = b"") -> bytes:
    header = bytes([1, key_id]) + sequence.to_bytes(5, "big")
    nonce = nonce or nonce_of(key_id, sequence, t)
    return header + cipher(aead, key).encrypt(nonce, body, header + t.encode())


class Reader:
    """Reads a payload exactly; any problem is MalformedPayload."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise Refused("MalformedPayload")
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def varint(self, max_bytes: int) -> int:
        # Any length up to max_bytes (5 for a 32-bit value), not only the minimal one.
        value = 0
        for i in range(max_bytes):
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                return value
        raise Refused("MalformedPayload")

    def choice(self, limit: int) -> int:
        value = self.varint(5)
        if value >= limit:
            raise Refused("MalformedPayload")
        return value

    def name(self) -> str:
        raw = self.take(self.varint(10))
        if not 1 <= len(raw) <= 32 or not set(raw) <= NAME_CHARS:
            raise Refused("MalformedPayload")
        return raw.decode()

    def end(self):
        if self.pos != len(self.data):
            raise Refused("MalformedPayload")


def decode(levels: list, body: bytes) -> dict:
    r = Reader(body)
    if levels[2] == "temp":
        milli, uptime = struct.unpack("<iI", r.take(8))
        m = {"kind": "temperature", "sensor": levels[3], "milli_celsius": milli,
             "uptime_ms": uptime}
    elif levels[2] == "led":
        state = STATE_NAME[r.choice(2)]
        uptime = struct.unpack("<I", r.take(4))[0]
        m = {"kind": "led", "led": levels[3], "state": state, "uptime_ms": uptime}
    elif levels[2] == "cmd":
        state = STATE_NAME[r.choice(2)]
        session, expires = struct.unpack("<QI", r.take(12))
        if session > MAX_SEQUENCE:
            raise Refused("MalformedPayload")
        m = {"kind": "command", "led": levels[3], "state": state, "session": session,
             "expires_ms": expires}
    else:
        uptime = struct.unpack("<I", r.take(4))[0]
        if r.choice(2) == 1:
            m = {"kind": "offline", "uptime_ms": uptime}
        else:
            count = r.varint(10)
            if count > MAX_LEDS:
                raise Refused("MalformedPayload")
            leds = [{"led": r.name(), "state": STATE_NAME[r.choice(2)]} for _ in range(count)]
            m = {"kind": "online", "leds": leds, "uptime_ms": uptime}
    r.end()
    return m


def receive(aead: str, key: bytes, key_id: int, t: str, frame: bytes):
    """Steps 2 to 5 of 'Receiving, in this order': (sequence number, message) or Refused."""
    levels = t.split("/")  # the vectors' topics are valid (step 1)
    if len(frame) > MAX_FRAME_LEN:
        raise Refused("Oversize")
    if len(frame) < HEADER_LEN + TAG_LEN:
        raise Refused("Truncated")
    if frame[0] != 1:
        raise Refused(f"UnsupportedVersion({frame[0]})")
    if frame[1] != key_id:
        raise Refused(f"UnknownKey({frame[1]})")
    header = frame[:HEADER_LEN]
    sequence = int.from_bytes(header[2:], "big")
    nonce = nonce_of(key_id, sequence, t)
    try:
        body = cipher(aead, key).decrypt(nonce, frame[HEADER_LEN:], header + t.encode())
    except InvalidTag:
        raise Refused("Unauthentic") from None
    return sequence, decode(levels, body)


def window_accept(state: dict, sequence: int, kind: str) -> dict:
    """Step 6: the window's state after the frame, or Refused."""
    top, seen, will = state["top"], state["seen"], state["expected_will"]

    def mark():
        if sequence >= top:
            shift = sequence + 1 - top
            return sequence + 1, (0 if shift >= WIDTH else (seen << shift) % (1 << 64)) | 1
        offset = top - 1 - sequence
        if offset >= WIDTH:
            raise Refused("TooOld")
        if seen >> offset & 1:
            raise Refused("Replayed")
        return top, seen | 1 << offset

    if kind == "offline":
        if will == 0 or sequence != will:
            raise Refused("Replayed")
        try:
            top, seen = mark()
        except Refused:
            pass  # accepted all the same, the window as it was
        return {"top": top, "seen": seen, "expected_will": 0}
    top, seen = mark()
    return {"top": top, "seen": seen, "expected_will": sequence + 1 if kind == "online" else will}


def is_name(s: str) -> bool:
    return 1 <= len(s.encode()) <= 32 and set(s.encode()) <= NAME_CHARS


def node_command(node: dict, v: dict, t: str, frame: bytes) -> dict:
    """A node's checks of a command, steps 1 to 6 of 'Commands': its window after, or Refused."""
    levels = t.split("/")
    if (len(levels) != 4 or levels[0] != "ledtemp" or levels[2] != "cmd"
            or not all(map(is_name, (levels[1], levels[3]))) or levels[1] != node["device"]):
        raise Refused("InvalidTopic")
    if levels[3] not in node["leds"]:
        raise Refused("UnknownLed")
    sequence, m = receive(v["aead"], bytes.fromhex(v["key"]), v["key_id"], t, frame)
    if node["session"] is None or node["stopping"] or m["session"] != node["session"]:
        raise Refused("StaleCommand")
    # In time from expiry - MAX_COMMAND_LIFETIME (60 s) to the expiry, on a clock that wraps
    # at 2^32 ms: the expiry minus the uptime, modulo 2^32, is at most 60000.
    if (m["expires_ms"] - node["uptime_ms"]) % 2**32 > 60_000:
        raise Refused("CommandExpired")
    window = {"top": node["window"]["top"], "seen": int(node["window"]["seen"], 16),
              "expected_will": 0}
    after = window_accept(window, sequence, "command")
    return {"top": after["top"], "seen": after["seen"]}


def state_of(v: dict) -> dict:
    return {"top": v["top"], "seen": int(v["seen"], 16), "expected_will": v["expected_will"]}


def report(ok: bool, section: str, name: str, detail: str = "") -> int:
    print(("ok   " if ok else "FAIL ") + f"{section}: {name}" + ("" if ok else f" ({detail})"))
    return 0 if ok else 1


def main() -> int:
    data = json.loads(VECTORS.read_text())
    failures = 0
    by_name = {}
    for v in data["vectors"]:
        by_name[v["name"]] = v
        header = bytes([1, v["key_id"]]) + v["sequence"].to_bytes(5, "big")
        t = topic(v["device"], v["message"])
        nonce = nonce_of(v["key_id"], v["sequence"], t)
        aad = header + t.encode()
        key = bytes.fromhex(v["key"])
        frame = seal(v["aead"], key, v["key_id"], v["sequence"], t, payload(v["message"]))
        ok = (t, nonce.hex(), aad.hex(), frame.hex()) == (
            v["topic"], v["nonce"], v["aad"], v["frame"])
        ok = ok and receive(v["aead"], key, v["key_id"], t, frame) == (v["sequence"], v["message"])
        failures += report(ok, "vectors", v["name"])
    for v in data["rejected"]:
        key, frame = bytes.fromhex(v["key"]), bytes.fromhex(v["frame"])
        if "payload" in v:
            body, nonce = bytes.fromhex(v["payload"]), bytes.fromhex(v.get("nonce", ""))
            if nonce == nonce_of(v["key_id"], v["sequence"], v["topic"]):
                failures += report(False, "rejected", v["name"], "nonce is the topic's own")
                continue
            if seal(v["aead"], key, v["key_id"], v["sequence"], v["topic"], body, nonce) != frame:
                failures += report(False, "rejected", v["name"], "payload does not seal to frame")
                continue
        try:
            got = f"opened as {receive(v['aead'], key, v['key_id'], v['topic'], frame)}"
        except Refused as refused:
            got = refused.args[0]
        step = STEP.get(got.split("(")[0])
        ok = (got, step) == (v["error"], v["step"])
        detail = f"{got} at step {step}, expected {v['error']} at step {v['step']}"
        failures += report(ok, "rejected", v["name"], detail)
    for step in data["replay"]:
        v = by_name[step["vector"]]
        key, frame = bytes.fromhex(v["key"]), bytes.fromhex(v["frame"])
        sequence, message = receive(v["aead"], key, v["key_id"], v["topic"], frame)
        try:
            got = window_accept(state_of(step["before"]), sequence, message["kind"])
        except Refused as refused:
            got = refused.args[0]
        expected = step["error"] if "error" in step else state_of(step["after"])
        failures += report(got == expected, "replay", step["name"], f"{got}, expected {expected}")
    for check in data["command_checks"]:
        v = by_name[check["vector"]]
        t = check.get("topic", v["topic"])
        try:
            got = node_command(check["node"], v, t, bytes.fromhex(v["frame"]))
            got["seen"] = f"{got['seen']:016x}"
            step = None
        except Refused as refused:
            got = refused.args[0]
            step = COMMAND_STEP.get(got, 3)
        expected = check.get("accepted", check.get("error"))
        ok = (got, step) == (expected, check.get("step"))
        detail = f"{got} at step {step}, expected {expected} at step {check.get('step')}"
        failures += report(ok, "command_checks", check["name"], detail)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
