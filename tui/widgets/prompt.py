"""The input: Enter sends, Shift+Enter or Ctrl+J adds a line, Up and Down on its first and last line
recall the conversation's earlier questions (Down past the newest gives back what was being typed).

Enter and the new line are priority bindings, which the app runs the moment it reads the key, while
the keys read before it may still wait in this widget's queue (typed or pasted in one burst, as a
terminal delivers `question<Enter>`): so both actions run from that queue, after those keys."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea


class PromptArea(TextArea):
    BINDINGS = [
        Binding("enter", "send", "Send", id="send", priority=True),
        Binding("shift+enter,ctrl+j", "newline", "New line", id="newline", show=False, priority=True),
    ]

    @dataclass
    class Send(Message):
        """The input's text, taken out of it; empty when Enter found nothing typed."""

        text: str

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.questions: list[str] = []  # the conversation's questions, oldest first, for Up and Down
        self._shown: int | None = None  # which of them the input shows, None for the user's own text
        self._draft = ""  # what the user was typing when Up first recalled a question

    def action_send(self) -> None:
        self.call_later(self._send)

    def _send(self) -> None:
        """Take the text out of the input at once (keys after Enter start the next question) and
        hand it to the app."""
        text = self.text.strip()
        if text:
            self.clear()
            if text not in self.questions[-1:]:
                self.questions.append(text)
        self._shown, self._draft = None, ""
        self.post_message(self.Send(text))

    def action_newline(self) -> None:
        self.call_later(self.insert, "\n")

    def set_questions(self, questions: list[str]) -> None:
        """The questions Up recalls: another conversation's."""
        self.questions = list(questions)
        self._shown, self._draft = None, ""

    def action_cursor_up(self, select: bool = False) -> None:
        if select or not self.navigator.is_first_wrapped_line(self.cursor_location) or not self._recall(-1):
            super().action_cursor_up(select)

    def action_cursor_down(self, select: bool = False) -> None:
        if select or not self.navigator.is_last_wrapped_line(self.cursor_location) or not self._recall(1):
            super().action_cursor_down(select)

    def _recall(self, step: int) -> bool:
        """Show the question `step` away from the one shown (-1 older, 1 newer), or past the newest
        the user's own text. False where there is none that way: the cursor moves instead."""
        shown = self._shown
        if shown is not None and self.text != self.questions[shown]:
            shown = None  # an edited question is the user's own text now
        if shown is None:
            if step > 0 or not self.questions:
                return False
            self._draft, shown = self.text, len(self.questions)
        shown += step
        if shown < 0:
            return False
        self._shown = shown if shown < len(self.questions) else None
        self.text = self.questions[shown] if self._shown is not None else self._draft
        self.move_cursor(self.document.end)
        return True
