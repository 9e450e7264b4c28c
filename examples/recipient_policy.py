"""Refuse mail to closed mailboxes at RCPT TO and tag what is delivered with the recipients kept.

    milter-run recipient_policy:RecipientPolicy -s inet:10026@[127.0.0.1]
"""

from milterman.milter import CONTINUE, Milter, reply

CLOSED = {"former@example.test", "abuse-old@example.test"}


class RecipientPolicy(Milter):
    def __init__(self):
        self.kept = []  # one instance per transaction: this list starts empty for each message

    def envelope_recipient(self, recipient, parameters):
        address = recipient.strip("<>").lower()
        if address in CLOSED:
            return reply(550, f"{address}: this mailbox is closed", "5.1.1")
        self.kept.append(address)
        return CONTINUE

    def end_of_message(self):
        self.add_header("X-Recipients-Checked", ", ".join(self.kept))
        return CONTINUE
