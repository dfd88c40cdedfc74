"""A real terminal for tests: a tmux server of the test's own, driven with send-keys and
read with capture-pane. Every wait polls the screen with a deadline; no fixed sleeps."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
import uuid


class Terminal:
    def __init__(self, cwd: str, width: int = 120, height: int = 40):
        self.cwd = cwd
        self.tmux = shutil.which("tmux")
        assert self.tmux, "tmux is needed for terminal tests"
        self.socket = f"rbox-test-{uuid.uuid4().hex[:12]}"
        # A plain interactive bash, with a prompt the tests can wait for.
        self._tmux("new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height), "-c", cwd,
                   "env PS1='outer$ ' bash --norc --noprofile -i")
        try:
            self.wait_for(r"outer\$")
            self.line("echo outer-pid=$$")
            self.shell_pid = int(self.wait_for(r"^outer-pid=(\d+)$").group(1))
        except BaseException:
            self.close()   # a failed start must not leave a tmux server behind
            raise

    def _tmux(self, *args: str) -> str:
        r = subprocess.run([self.tmux, "-L", self.socket, *args], capture_output=True, text=True, timeout=30)
        return r.stdout

    def send(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def line(self, text: str) -> None:
        self._tmux("send-keys", "-t", "t", "-l", text)
        self.send("Enter")

    def wait_idle(self, timeout: float = 20.0) -> None:
        """Until the outer shell has no child left (rbox has exited). Keys typed while a
        pty relay is still running go into its pty and are gone when the inner program
        has ended (as with ssh or script(1)); the next line must wait for this."""
        from tests.integration.helpers import children, wait_until

        if not wait_until(lambda: not children(self.shell_pid), timeout=timeout):
            raise AssertionError(f"the outer shell still has {children(self.shell_pid)}; screen:\n{self.screen()}")

    def screen(self) -> str:
        return self._tmux("capture-pane", "-t", "t", "-p", "-S", "-200")

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first match of `pattern` (a regex, multiline) on the screen, waiting for it.
        capture-pane drops trailing blanks, so patterns must not end in one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.screen(), re.M)
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} did not appear; screen:\n{self.screen()}")

    def run_and_wait(self, command: str) -> str:
        """Type `command`, wait until it has finished; a token unique to this call."""
        token = uuid.uuid4().hex[:10]
        self.line(f"{command}; echo done-{token}")
        self.wait_for(rf"^done-{token}$")
        return token

    def stty(self) -> str:
        """The terminal settings (`stty -g`) as the shell at the prompt sees them."""
        self.run_and_wait("stty -g > .stty")
        with open(f"{self.cwd}/.stty") as f:
            return f.read()

    def resize(self, width: int, height: int) -> None:
        self._tmux("resize-window", "-t", "t", "-x", str(width), "-y", str(height))

    def close(self) -> None:
        socket_path = self._tmux("display-message", "-p", "#{socket_path}").strip()
        subprocess.run([self.tmux, "-L", self.socket, "kill-server"], capture_output=True, timeout=30)
        if socket_path:
            # kill-server leaves the socket file behind in /tmp/tmux-UID.
            with contextlib.suppress(OSError):
                os.unlink(socket_path)
