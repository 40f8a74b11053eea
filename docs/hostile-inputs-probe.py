#!/usr/bin/env python3
"""Sends the hostile requests of docs/hostile-inputs.md to Switchback, nginx and HAProxy.

Start, on loopback only: an upstream on 127.0.0.1:19002 that answers 200 with the request
line and Host it saw (and HTTP/1.0 101 on /h10); nginx on :19011 (proxy_pass to it, HTTP/1.1,
the WebSocket Upgrade/Connection headers, `proxy_set_header Host $host`); HAProxy on :19012
(mode http, `timeout http-request 10s`, one server); switchback on :19013 (one route to it,
websocket allowed). Prints one row per input: Switchback | nginx | HAProxy.
"""
import socket
KEY="dGhlIHNhbXBsZSBub25jZQ=="
WS="Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
cases=[
 ("no Host (HTTP/1.1)", "GET / HTTP/1.1\r\n\r\n"),
 ("two equal Host lines", "GET / HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n"),
 ("two different Host lines", "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n"),
 ("Host list", "GET / HTTP/1.1\r\nHost: a.example, b.example\r\n\r\n"),
 ("Host with userinfo", "GET / HTTP/1.1\r\nHost: user@a.example\r\n\r\n"),
 ("Host with a bad port", "GET / HTTP/1.1\r\nHost: a.example:99999\r\n\r\n"),
 ("absolute-form target, other Host", "GET http://target.example/abs HTTP/1.1\r\nHost: other.example\r\n\r\n"),
 ("64 KiB header", "GET / HTTP/1.1\r\nHost: a.example\r\nX-Big: "+"a"*65536+"\r\n\r\n"),
 ("101 header lines", "GET / HTTP/1.1\r\nHost: a.example\r\n"+"".join("X-H%d: v\r\n"%i for i in range(101))+"\r\n"),
 ("70 KiB request line", "GET /"+"a"*71680+" HTTP/1.1\r\nHost: a.example\r\n\r\n"),
 ("two Sec-WebSocket-Key", "GET / HTTP/1.1\r\nHost: a.example\r\n"+WS+"Sec-WebSocket-Key: "+KEY+"\r\nSec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n\r\n"),
 ("upstream answers HTTP/1.0 101", "GET /h10 HTTP/1.1\r\nHost: a.example\r\n"+WS+"Sec-WebSocket-Key: "+KEY+"\r\n\r\n"),
]
ports={"switchback":19013,"nginx":19011,"haproxy":19012}
for name,req in cases:
    row=[name]
    for sysname,port in ports.items():
        s=socket.create_connection(("127.0.0.1",port)); s.settimeout(3)
        try:
            s.sendall(req.encode()); data=b""
            while b"\r\n\r\n" not in data:
                d=s.recv(65536)
                if not d: break
                data+=d
            if not data: row.append("closed, no answer"); continue
            status=data.split(b"\r\n")[0].decode()
            body=data.split(b"\r\n\r\n",1)[1][:80].decode('latin1').strip()
            extra=""
            if "host=" in body: extra=" upstream saw "+body.split("line=")[1]
            row.append(status.split(" ",1)[1]+extra)
        except Exception as e: row.append("ERR %s"%e)
        finally: s.close()
    print(" | ".join(row))
