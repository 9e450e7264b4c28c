from milterman.milter import Milter, CONTINUE, REJECT

class Tag(Milter):
    def envelope_recipient(self, recipient, parameters):
        if recipient.lower().strip("<>") == "carol@example.test":
            return REJECT
        return CONTINUE

    def end_of_message(self):
        self.add_header("X-Tagged", "yes")
        return CONTINUE
