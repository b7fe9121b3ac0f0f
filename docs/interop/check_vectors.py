#!/usr/bin/env python3
"""Independent check of ledtemp-core/tests/vectors.json, written from docs/protocol.md alone.

Rebuilds every frame with Python's `cryptography` package (pip install cryptography) and compares
byte for byte. Run: python3 docs/interop/check_vectors.py
"""
import json
import pathlib
import struct
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

VECTORS = pathlib.Path(__file__).resolve().parents[2] / "ledtemp-core" / "tests" / "vectors.json"
STATE = {"off": 0, "on": 1}


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
    uptime = struct.pack("<I", m["uptime_ms"])
    kind = m["kind"]
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
    return f"ledtemp/{device}/status"


def main() -> int:
    failures = 0
    for v in json.loads(VECTORS.read_text())["vectors"]:
        header = bytes([1, v["key_id"]]) + v["sequence"].to_bytes(5, "big")
        nonce = bytes([1, v["key_id"], 0, 0]) + v["sequence"].to_bytes(8, "big")
        t = topic(v["device"], v["message"])
        aad = header + t.encode()
        key = bytes.fromhex(v["key"])
        aead = AESGCM(key) if v["aead"] == "AES-128-GCM" else ChaCha20Poly1305(key)
        frame = header + aead.encrypt(nonce, payload(v["message"]), aad)
        ok = (t, nonce.hex(), aad.hex(), frame.hex()) == (v["topic"], v["nonce"], v["aad"], v["frame"])
        print(("ok   " if ok else "FAIL ") + v["name"])
        failures += not ok
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
