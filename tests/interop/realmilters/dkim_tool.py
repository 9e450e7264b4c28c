"""DKIM signing and verification with Debian's dkimpy (python3-dkim), run by Debian's python3.

The suite runs this file through the sandbox's mount namespace, so key look-ups go to its DNS
server.  ``sign SELECTOR DOMAIN KEYFILE``: the message on stdin, signed, on stdout.
``verify``: the message on stdin; a JSON list on stdout, one entry per DKIM-Signature field in
order: its d=, s=, a= and whether it verifies.
"""

import json
import sys

import dkim


def main() -> int:
    message = sys.stdin.buffer.read()
    if sys.argv[1] == "sign":
        selector, domain, keyfile = sys.argv[2:5]
        with open(keyfile, "rb") as key:
            signature = dkim.sign(message, selector.encode(), domain.encode(), key.read(),
                                  include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
        sys.stdout.buffer.write(signature + message)
        return 0
    checker = dkim.DKIM(message, minkey=1024)
    results = []
    count = sum(1 for name, _ in checker.headers if name.lower() == b"dkim-signature")
    for index in range(count):
        checker = dkim.DKIM(message, minkey=1024)
        try:
            ok = bool(checker.verify(idx=index))
        except Exception as error:  # a broken signature is a result, not a crash
            ok = False
            checker.signature_fields = checker.signature_fields or {}
            print(f"signature {index}: {error}", file=sys.stderr)
        fields = checker.signature_fields or {}
        results.append({key: fields.get(key.encode(), b"").decode() for key in ("d", "s", "a")} | {"ok": ok})
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
