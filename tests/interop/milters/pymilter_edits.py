#!/usr/bin/python3
"""Interop test milter built on Debian's python3-milter (libmilter): scripted end-of-message edits.

Usage: /usr/bin/python3 pymilter_edits.py SPEC EDIT...
SPEC is libmilter syntax (inet:PORT@127.0.0.1).  Each EDIT is done at end of message, in order:

* ``delete:NAME:INDEX``      change-header NAME[INDEX] to nothing (delete), NAME as written
* ``change:NAME:INDEX:VALUE`` change-header NAME[INDEX] to VALUE
* ``add:NAME:VALUE``          add-header (appended by the MTA)
* ``insert:INDEX:NAME:VALUE`` insert-header at INDEX
* ``body-lf:TEXT``            replace the body with TEXT lines joined by bare LF ("|" splits lines)
* ``body:ESCAPED``            replace the body with exactly these bytes (Python escapes: \\r, \\n)
* ``record:PATH``             write what this milter saw to PATH as JSON: the headers in order,
                              the body bytes (latin-1), its SHA-256 and the DKIM "relaxed" body hash
* ``bodyhash:NAME``           insert header NAME at index 0 with the base64 SHA-256 of the body as
                              seen (simple canonicalisation), as a DKIM signer puts its bh= on top

Every header the MTA sends is kept as the milter received it.  Prints "ready" once listening.
"""
import base64
import codecs
import hashlib
import json
import sys

import Milter
import milter

EDITS = []


def simple_body_hash(body):
    """DKIM simple body canonicalisation (RFC 6376 3.4.3): trailing empty lines removed, CRLF kept."""
    while body.endswith(b"\r\n\r\n"):
        body = body[:-2]
    if not body:
        body = b"\r\n"
    return base64.b64encode(hashlib.sha256(body).digest()).decode()


class Edits(Milter.Base):
    def __init__(self):
        super().__init__()
        self.headers = []
        self.chunks = []

    def header(self, name, value):
        self.headers.append([name, value])
        return Milter.CONTINUE

    def body(self, chunk):
        self.chunks.append(chunk)
        return Milter.CONTINUE

    def eom(self):
        body = b"".join(self.chunks)
        for edit in EDITS:
            kind, _, rest = edit.partition(":")
            if kind == "delete":
                name, index = rest.rsplit(":", 1)
                self.chgheader(name, int(index), None)
            elif kind == "change":
                name, index, value = rest.split(":", 2)
                self.chgheader(name, int(index), value)
            elif kind == "add":
                name, value = rest.split(":", 1)
                self.addheader(name, value)
            elif kind == "insert":
                index, name, value = rest.split(":", 2)
                self.addheader(name, value, int(index))
            elif kind == "body-lf":
                self.replacebody(("\n".join(rest.split("|")) + "\n").encode())
            elif kind == "body":
                self.replacebody(codecs.escape_decode(rest.encode())[0])
            elif kind == "record":
                with open(rest, "w") as out:
                    json.dump({"headers": self.headers, "body": body.decode("latin-1"),
                               "sha256": hashlib.sha256(body).hexdigest(),
                               "bodyhash": simple_body_hash(body)}, out)
            elif kind == "bodyhash":
                self.addheader(rest, "bh=" + simple_body_hash(body), 0)
        return Milter.CONTINUE


def main():
    if len(sys.argv) < 2:
        sys.stderr.write(f"usage: {sys.argv[0]} SPEC EDIT...\n")
        return 2
    EDITS.extend(sys.argv[2:])
    opensocket = milter.opensocket

    def opensocket_then_ready(rmsock):
        result = opensocket(rmsock)
        print("ready", flush=True)
        return result

    milter.opensocket = opensocket_then_ready
    Milter.factory = Edits
    milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.MODBODY)
    Milter.runmilter("pymilter_edits", sys.argv[1], timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
