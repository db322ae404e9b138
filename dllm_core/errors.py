"""Exceptions raised by dllm_core.  Every message says what was wrong and what would be accepted."""

from __future__ import annotations


class DllmError(Exception):
    """Base class of every error dllm_core raises on purpose."""


class UnknownComponentError(DllmError, KeyError):
    """A cache policy, scheduler, guide or model family name that no installed plugin registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class OptionError(DllmError, ValueError):
    """A component option that is unknown or out of range."""


class IncompatibleStrategyError(DllmError, ValueError):
    """Components that cannot run together; the message names each objecting component and its reason."""


class PluginLoadError(DllmError, ImportError):
    """A third-party plugin failed to import or to register; the message names the plugin."""


class PromptTooLongError(DllmError, ValueError):
    """Prompt plus generation length exceed what the model accepts."""


class ModelFilesError(DllmError, FileNotFoundError):
    """A model directory that lacks a file the loader needs (or has an unreadable one)."""
