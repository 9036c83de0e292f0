"""What the command lines share: argparse errors as one line, for the clients and the trainer.

Standard library only, so the TensorFlow-free clients can import it.
"""

import argparse
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
  """argparse whose errors are one line on stderr ("error: ..."), exit status 2."""

  def error(self, message: str) -> NoReturn:
    self.exit(2, f"error: {' '.join(message.split())}\n")
