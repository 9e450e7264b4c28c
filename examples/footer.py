"""Append a footer to plain-text messages (the body is replaced, the rest left alone).

    milter-run footer:Footer -s unix:/run/milter/footer.sock
"""

from milterman.milter import ACCEPT, CONTINUE, Milter

FOOTER = "-- \nSent through example.test; report abuse to postmaster@example.test"


class Footer(Milter):
    def __init__(self):
        self.plain = True
        self.chunks = []

    def header(self, name, value):
        if name.lower() == "content-type" and not value.lower().startswith(b"text/plain"):
            self.plain = False  # a MIME structure or HTML: a footer would break it
        return CONTINUE

    def body(self, chunk):
        self.chunks.append(chunk)
        return CONTINUE

    def end_of_message(self):
        if not self.plain:
            return ACCEPT
        body = b"".join(self.chunks)
        newline = b"\r\n" if b"\r\n" in body or not body else b"\n"
        if body and not body.endswith(newline):
            body += newline
        self.replace_body(body + FOOTER.encode().replace(b"\n", newline) + newline)
        return CONTINUE
