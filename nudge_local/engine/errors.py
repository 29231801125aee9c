"""The one exception a user can cause: it carries a single sentence naming the fix."""


class NudgeError(Exception):
    """A problem with the user's input (file, pair, prompt, option), told in one sentence.

    The command line prints it and exits with code 2; the terminal UI shows it in place.
    """


class ContextFull(NudgeError):
    """A model's context cannot hold the tokens it was asked to evaluate."""
