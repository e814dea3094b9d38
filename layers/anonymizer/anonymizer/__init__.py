"""Find faces and licence plates in images and make them unrecognisable.

The same package is the content of the Lambda layer, the CLI and what the tests import.
"""

__version__ = "0.1.0"
