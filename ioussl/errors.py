"""Error types. Only the CLI turns them into one line and an exit code; the core never exits."""


class IousslError(Exception):
    """Base class for every error a user can cause or fix."""


class ConfigError(IousslError):
    """A study file, cluster profile or run config is invalid."""


class DataError(IousslError):
    """Input data is missing, corrupt or inconsistent."""


class RegistryError(IousslError):
    """The registry cannot be opened, is locked, corrupt or from another schema version."""


class NotFound(RegistryError):
    """An unknown study or run."""


class IllegalTransition(RegistryError):
    """A status change the transition table does not allow."""


class SubmissionError(IousslError):
    """A job could not be submitted, queried or cancelled."""


class TrainingError(IousslError):
    """A training job cannot continue (non-finite loss, bad checkpoint, mismatched store)."""


class Interrupted(IousslError):
    """A user's Ctrl-C or SIGTERM stopped a command cleanly; the message says what stopped and how to resume.
    The CLI prints it as one ``interrupted: ...`` line and exits 130, as a shell does for SIGINT."""
