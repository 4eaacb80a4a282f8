"""Errors a user can act on: the CLI prints them as one line and exits non-zero."""

__all__ = ["SeqfitError", "BudgetError", "MemoryBudgetExceeded", "EXIT_ERROR", "EXIT_BUDGET", "EXIT_WATCHDOG"]

EXIT_ERROR = 2  # bad input, bad config, mismatched files
EXIT_BUDGET = 3  # no plan fits the memory budget
EXIT_WATCHDOG = 4  # training stopped because memory crossed the budget (checkpoint written)


class SeqfitError(Exception):
    """A problem with the user's input or configuration; the message is the whole story."""

    exit_code = EXIT_ERROR


class BudgetError(SeqfitError):
    """Nothing fits the memory budget."""

    exit_code = EXIT_BUDGET


class MemoryBudgetExceeded(SeqfitError):
    """The memory watchdog stopped training."""

    exit_code = EXIT_WATCHDOG
