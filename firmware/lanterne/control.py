# Lanterne command handling on the board: authenticate, refuse replays (counter persisted),
# execute once, ack every command (again on a QoS 1 redelivery). Nothing is executed before
# the frame is authenticated and its arguments checked, nor before its counter is on flash.
import json

from lanterne import commands as cmd
from lanterne.flashfile import write_atomic as _write_atomic

STATE_FILE = "cmdstate.json"


def _read_state(path):
    # (last counter, rotated key hex or "") from path, or from path.tmp when path is missing or
    # damaged (the tmp is whole when a cut came between removing path and renaming it, see
    # _write_atomic); (0, "") when neither holds a state.
    for name in (path, path + ".tmp"):
        try:
            with open(name) as f:
                st = json.loads(f.read())
            return int(st["counter"]), st.get("key") or ""
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    return 0, ""


class CommandHandler:
    """`handle(frame) -> (ack bytes or None, log line)`; `executor(opcode, args) -> (status, data)`."""

    def __init__(self, device, key_hex, executor, state_file=STATE_FILE):
        self.state_file = state_file
        self.executor = executor
        self.enabled = bool(key_hex)
        last, key = _read_state(state_file)
        key = key or key_hex  # a rotated key replaces the provisioned one
        self.verifier = cmd.Verifier(device, bytes.fromhex(key) if key else b"", last)
        self.executed = 0
        self.refused = 0
        self.rotated = key != key_hex
        self.unsaved = None  # errno of the last command whose counter could not be persisted, else None

    def _persist(self):
        _write_atomic(
            self.state_file,
            json.dumps({"counter": self.verifier.last_counter, "key": self.verifier.key.hex() if self.rotated else ""}),
        )

    def handle(self, frame):
        # A command whose counter cannot be persisted (the flash refuses writes) is not executed
        # and not answered: executed, a reboot would let the same frame run again. The counter,
        # the key and the last ack are put back, so the back office's retry of the same frame
        # runs it once the flash takes writes again.
        v = self.verifier
        before = (v.last_counter, v.last_digest, v.last_ack, v.key, self.rotated)
        try:
            ack, line = self._handle(frame)
        except OSError as e:
            v.last_counter, v.last_digest, v.last_ack, v.key, self.rotated = before
            self.unsaved = e.args[0] if e.args else -1
            return None, "command not run: counter not saved (errno %s)" % (self.unsaved,)
        self.unsaved = None
        return ack, line

    def _handle(self, frame):
        if not self.enabled:
            self.refused += 1
            return None, "command refused: no command key provisioned"
        v = self.verifier
        try:
            opcode, counter, args = v.check(frame)
        except cmd.CommandError as e:
            if e.reason == cmd.OK:
                return e.ack, "command redelivered: acked again, not executed"
            self.refused += 1
            if e.reason in (cmd.BAD_TAG, cmd.WRONG_DEVICE, cmd.MALFORMED, cmd.BAD_VERSION):
                # Unauthenticated: nack with the counter the frame claims (0 if unreadable);
                # the back office ignores acks that do not match a command it sent.
                counter = 0
                if len(frame) >= 9:
                    counter = (frame[5] << 24) | (frame[6] << 16) | (frame[7] << 8) | frame[8]
                op = frame[9] if len(frame) > 9 else 0
                return v.ack(counter & 0xFFFFFFFF, op, e.reason), "command refused: %s (%s)" % (cmd.REASONS[e.reason], e)
            counter = (frame[5] << 24) | (frame[6] << 16) | (frame[7] << 8) | frame[8]
            ack = v.ack(counter, frame[9], e.reason)
            if e.reason in (cmd.UNKNOWN_COMMAND, cmd.BAD_ARGUMENT, cmd.NOT_ALLOWED):
                # authenticated but refused: the counter is used up, so the same frame is a replay
                v.accept(frame, counter, ack)
                self._persist()
            return ack, "command %d refused: %s (%s)" % (counter, cmd.REASONS[e.reason], e)
        # Persist the counter before executing: a power cut during execution must not let
        # the same command run twice after the reboot.
        v.accept(frame, counter, None)
        if opcode == cmd.ROTATE_KEY:
            ack = v.ack(counter, opcode, cmd.OK)  # acked with the old key, then rotated
            v.rotate(args["nonce"])
            self.rotated = True
            v.last_ack = ack
            self._persist()
            self.executed += 1
            return ack, "command %d: key rotated" % counter
        self._persist()
        try:
            status, data = self.executor(opcode, args)
        except Exception as e:  # an actuator failure is reported, never crashes the board
            status, data = cmd.FAILED, b""
            self.refused += 1
            ack = v.ack(counter, opcode, status, data)
            v.last_ack = ack
            return ack, "command %d %s failed: %r" % (counter, cmd.NAMES.get(opcode), e)
        ack = v.ack(counter, opcode, status, data)
        v.last_ack = ack
        self.executed += 1
        return ack, "command %d %s: %s" % (counter, cmd.NAMES.get(opcode), cmd.REASONS.get(status))
